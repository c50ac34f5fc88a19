"""diffusers VQModel interop without diffusers installed: key mapping, configs, files, CLI, refusals.

Parity with the diffusers package itself is in tests/test_diffusers_parity.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import TINY, spread_codebook
from vqtok import Tokenizer, VQGANConfig
from vqtok.cli import main
from vqtok.convert import from_diffusers, to_diffusers
from vqtok.convert.diffusers import (
    DIFFUSERS_CONFIG_NAME,
    DIFFUSERS_WEIGHTS_NAME,
    diffusers_config_to_vqtok,
    diffusers_to_vqtok_keys,
    vqtok_config_to_diffusers,
    vqtok_to_diffusers_keys,
)

# ImageNet f16 taming layout at reduced width: 5 levels, attention at the lowest (16 of 256)
TAMING_F16 = VQGANConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=64,
                         embed_dim=64, n_embed=1024, resolution=256)


def _tok(cfg: VQGANConfig, seed: int = 0) -> Tokenizer:
    torch.manual_seed(seed)
    tok = Tokenizer.from_config(cfg)
    spread_codebook(tok.model, seed)
    return tok


def test_config_round_trip():
    for cfg in (TINY, TAMING_F16, VQGANConfig(ch=64, ch_mult=(1, 2, 4), attn_resolutions=(), n_embed=8192,
                                              embed_dim=3, z_channels=3, resolution=256)):
        d = vqtok_config_to_diffusers(cfg)
        assert d["block_out_channels"] == [cfg.ch * m for m in cfg.ch_mult]
        assert diffusers_config_to_vqtok(json.loads(json.dumps(d))) == cfg
    d = vqtok_config_to_diffusers(TAMING_F16)
    assert d["down_block_types"] == ["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"]
    assert d["up_block_types"] == ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 4  # run order
    assert (d["latent_channels"], d["vq_embed_dim"], d["num_vq_embeddings"], d["layers_per_block"]) == (64, 64, 1024, 2)


def test_key_mapping_round_trip():
    tok = _tok(TAMING_F16)
    ours = tok.model.state_dict()
    theirs = vqtok_to_diffusers_keys(ours, levels=5)
    assert len(theirs) == len(ours)
    # names diffusers' VQModel uses
    for key in ("encoder.down_blocks.4.attentions.1.to_out.0.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight",
                "decoder.up_blocks.0.attentions.2.group_norm.bias", "decoder.up_blocks.3.upsamplers.0.conv.bias",
                "decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "encoder.mid_block.resnets.1.conv2.weight",
                "decoder.mid_block.attentions.0.to_q.weight", "encoder.conv_norm_out.weight", "quantize.embedding.weight"):
        assert key in theirs, key
    assert theirs["encoder.mid_block.attentions.0.to_k.weight"].shape == (128, 128)  # Linear, not 1x1 conv
    assert torch.equal(theirs["decoder.up_blocks.0.resnets.1.conv1.weight"], ours["decoder.up.4.block.1.conv1.weight"])
    back = diffusers_to_vqtok_keys(theirs, levels=5)
    assert set(back) == set(ours) and all(torch.equal(back[k], ours[k]) for k in ours)


def test_export_then_import_is_exact(tmp_path):
    tok = _tok(TINY)
    out = to_diffusers(tok, tmp_path / "vq")
    with pytest.warns(DeprecationWarning, match="vqtok.convert.to_diffusers"):  # the 0.1 method, until 0.3
        assert tok.to_diffusers(tmp_path / "vq2") == tmp_path / "vq2"
    assert sorted(p.name for p in out.iterdir()) == [DIFFUSERS_CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME]
    config = json.loads((out / DIFFUSERS_CONFIG_NAME).read_text())
    assert config["_class_name"] == "VQModel" and config["sample_size"] == 64
    back = from_diffusers(out)
    assert back.config == tok.config
    sd = back.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in tok.model.state_dict().items())
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8).numpy()
    assert torch.equal(back.encode(images), tok.encode(images))


def test_pipeline_folder_and_legacy_attention_names(tmp_path):
    """A pipeline folder's vqvae/ is found; old files name attention query/key/value/proj_attn."""
    tok = _tok(TINY)
    to_diffusers(tok, tmp_path / "pipe" / "vqvae")
    weights = tmp_path / "pipe" / "vqvae" / DIFFUSERS_WEIGHTS_NAME
    state = load_file(str(weights))
    legacy = {}
    for k, v in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".attentions.0.{new}." in k or f".attentions.1.{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
        legacy[k] = v
    save_file(legacy, str(weights))
    back = from_diffusers(tmp_path / "pipe")
    assert all(torch.equal(back.model.state_dict()[k], v) for k, v in tok.model.state_dict().items())


@pytest.mark.parametrize(
    "change,message",
    [
        ({"norm_type": "spatial"}, "norm_type='spatial'"),
        ({"mid_block_add_attention": False}, "mid_block_add_attention=false"),
        ({"norm_num_groups": 12}, r"GroupNorm\(12\) needs channel counts divisible"),
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"block_out_channels": [32, 48, 64]}, "not multiples of the first"),
        ({"up_block_types": ["UpDecoderBlock2D"] * 3}, r"attention at encoder levels \[2\] but decoder levels \[\]"),
        ({"down_block_types": ["DownBlock2D"] * 3}, "down_block_types"),
        ({"_class_name": "AutoencoderKL"}, "'AutoencoderKL', not a 'VQModel'"),
    ],
)
def test_inexpressible_configs_are_refused(change, message):
    d = vqtok_config_to_diffusers(TINY) | change
    with pytest.raises(ValueError, match=message):
        diffusers_config_to_vqtok(d)


def test_export_refusals(tmp_path):
    with pytest.raises(ValueError, match="l2_norm_codes=True"):
        to_diffusers(_tok(VQGANConfig(ch=32, ch_mult=(1, 2), n_embed=16, embed_dim=8, z_channels=8, l2_norm_codes=True)),
                     tmp_path / "a")
    with pytest.raises(ValueError, match=r"ch_mult\[0\]=2"):
        to_diffusers(_tok(VQGANConfig(ch=32, ch_mult=(2, 2), n_embed=16, embed_dim=8, z_channels=8)), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        from_diffusers(tmp_path)
    to_diffusers(_tok(TINY), tmp_path / "vq")
    (tmp_path / "vq" / DIFFUSERS_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="has no diffusion_pytorch_model.safetensors"):
        from_diffusers(tmp_path / "vq")


def test_cli_export_and_convert(tmp_path, capsys):
    tok = _tok(TINY)
    tok.save_pretrained(tmp_path / "model")
    assert main(["export", "diffusers", str(tmp_path / "model"), "--out", str(tmp_path / "vq")]) == 0
    assert "diffusers VQModel" in capsys.readouterr().out
    assert main(["convert", "diffusers", str(tmp_path / "vq"), "--out", str(tmp_path / "back")]) == 0
    back = Tokenizer.from_pretrained(tmp_path / "back")
    assert back.config == tok.config
    cfg = json.loads((tmp_path / "vq" / DIFFUSERS_CONFIG_NAME).read_text()) | {"norm_type": "spatial"}
    (tmp_path / "vq" / DIFFUSERS_CONFIG_NAME).write_text(json.dumps(cfg))
    assert main(["convert", "diffusers", str(tmp_path / "vq"), "--out", str(tmp_path / "x")]) == 2
    assert "cannot be expressed" in capsys.readouterr().err


def test_export_is_readable_by_others_and_leaves_no_temporary_files(tmp_path):
    import stat

    out = to_diffusers(_tok(TINY), tmp_path / "vq")
    assert sorted(p.name for p in out.iterdir()) == sorted([DIFFUSERS_CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME])
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name  # safetensors alone creates 0600
