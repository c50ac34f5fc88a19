"""LlamaGen VQ tokenizers: key mapping, checkpoint reading, `ema` selection and errors.

The fake checkpoints are built from a listing of LlamaGen's own parameter names and shapes
(``llamagen_layout`` below, written from its ``Encoder``/``Decoder``/``VectorQuantizer``
structure), filled with random numbers and saved as its training script saves them:
``{"model", "optimizer", "discriminator", "optimizer_disc", "steps", "args": argparse.Namespace}``.
Parity against LlamaGen's own model code is in tests/test_llamagen_parity.py (needs a checkout).
"""

from __future__ import annotations

import argparse

import pytest
import torch

from tests.conftest import ShellPayload, real_photos
from vqtok import Tokenizer, VQGANConfig
from vqtok.cli import main
from vqtok.convert import UnsafeCheckpointError, from_llamagen
from vqtok.convert.llamagen import (
    infer_llamagen_config,
    llamagen_state_dict,
    llamagen_to_vqtok_keys,
    vqtok_to_llamagen_keys,
)


def _resnet(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    d = {
        f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
        f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
        f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
        f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,),
    }
    if cin != cout:
        d |= {f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)}
    return d


def _attn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    d = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        d |= {f"{prefix}.{name}.weight": (c, c, 1, 1), f"{prefix}.{name}.bias": (c,)}
    return d


def llamagen_layout(
    *, ch: int = 32, ch_mult=(1, 1, 2, 2, 4), dec_ch_mult=None, z: int = 64, embed_dim: int = 8, n_embed: int = 1024,
    num_res_blocks: int = 2, show_usage: bool = True,
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of LlamaGen's VQModel state dict (encoder/decoder ``conv_blocks``, ``mid.{0,1,2}``)."""
    dec_ch_mult = dec_ch_mult or ch_mult
    n = len(ch_mult)
    d: dict[str, tuple[int, ...]] = {"encoder.conv_in.weight": (ch, 3, 3, 3), "encoder.conv_in.bias": (ch,)}
    block_in = ch
    for i, m in enumerate(ch_mult):
        block_in, out = ch * ((1,) + tuple(ch_mult))[i], ch * m
        for j in range(num_res_blocks):
            d |= _resnet(f"encoder.conv_blocks.{i}.res.{j}", block_in, out)
            block_in = out
            if i == n - 1:
                d |= _attn(f"encoder.conv_blocks.{i}.attn.{j}", out)
        if i != n - 1:
            d |= {f"encoder.conv_blocks.{i}.downsample.conv.weight": (out, out, 3, 3), f"encoder.conv_blocks.{i}.downsample.conv.bias": (out,)}
    d |= _resnet("encoder.mid.0", block_in, block_in) | _attn("encoder.mid.1", block_in) | _resnet("encoder.mid.2", block_in, block_in)
    d |= {"encoder.norm_out.weight": (block_in,), "encoder.norm_out.bias": (block_in,)}
    d |= {"encoder.conv_out.weight": (z, block_in, 3, 3), "encoder.conv_out.bias": (z,)}
    n = len(dec_ch_mult)
    block_in = ch * dec_ch_mult[-1]
    d |= {"decoder.conv_in.weight": (block_in, z, 3, 3), "decoder.conv_in.bias": (block_in,)}
    d |= _resnet("decoder.mid.0", block_in, block_in) | _attn("decoder.mid.1", block_in) | _resnet("decoder.mid.2", block_in, block_in)
    for k, i in enumerate(reversed(range(n))):  # run order: lowest resolution first
        out = ch * dec_ch_mult[i]
        for j in range(num_res_blocks + 1):
            d |= _resnet(f"decoder.conv_blocks.{k}.res.{j}", block_in, out)
            block_in = out
            if i == n - 1:
                d |= _attn(f"decoder.conv_blocks.{k}.attn.{j}", out)
        if i != 0:
            d |= {f"decoder.conv_blocks.{k}.upsample.conv.weight": (out, out, 3, 3), f"decoder.conv_blocks.{k}.upsample.conv.bias": (out,)}
    d |= {"decoder.norm_out.weight": (block_in,), "decoder.norm_out.bias": (block_in,)}
    d |= {"decoder.conv_out.weight": (3, block_in, 3, 3), "decoder.conv_out.bias": (3,)}
    d |= {"quantize.embedding.weight": (n_embed, embed_dim)}
    if show_usage:
        d |= {"quantize.codebook_used": (65536,)}
    d |= {"quant_conv.weight": (embed_dim, z, 1, 1), "quant_conv.bias": (embed_dim,)}
    d |= {"post_quant_conv.weight": (z, embed_dim, 1, 1), "post_quant_conv.bias": (z,)}
    return d


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in layout.items():
        if k == "quantize.codebook_used":
            state[k] = torch.zeros(shape)
        elif k.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_out.weight")):
            state[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
            state[k] = torch.randn(shape, generator=g) / fan_in**0.5
    return state


def save_llamagen_checkpoint(path, model_state, *, ema_state=None, args=None) -> str:
    """A file shaped like LlamaGen's vq_train.py checkpoints (argparse.Namespace args, optimizer states)."""
    args = args or argparse.Namespace(
        vq_model="VQ-16", codebook_size=1024, codebook_embed_dim=8, codebook_l2_norm=True, commit_loss_beta=0.25,
        entropy_loss_ratio=0.0, dropout_p=0.0, image_size=256, ema=ema_state is not None, data_path="/data/imagenet/train",
    )
    ckpt = {
        "model": model_state,
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "discriminator": {"main.0.weight": torch.randn(64, 3, 4, 4)},
        "optimizer_disc": {"state": {}, "param_groups": []},
        "steps": 250000,
        "args": args,
    }
    if ema_state is not None:
        ckpt["ema"] = ema_state
    torch.save(ckpt, path)
    return str(path)


@pytest.fixture
def llamagen_ckpt(tmp_path):
    state = random_state(llamagen_layout())
    return save_llamagen_checkpoint(tmp_path / "vq_ds16_c2i.pt", state), state


def test_checkpoint_converts_and_encodes(llamagen_ckpt):
    path, state = llamagen_ckpt
    tok = from_llamagen(path)
    cfg = tok.config
    assert cfg.ch == 32 and cfg.ch_mult == (1, 1, 2, 2, 4) and cfg.num_res_blocks == 2
    assert cfg.attn_resolutions == (16,) and cfg.resolution == 256  # lowest-resolution level only
    assert (cfg.z_channels, cfg.embed_dim, cfg.n_embed) == (64, 8, 1024)
    assert cfg.l2_norm_codes and not cfg.legacy_loss
    # every LlamaGen tensor went to the right place, and back
    back = vqtok_to_llamagen_keys(tok.model.state_dict())
    expected = {k: v for k, v in state.items() if k != "quantize.codebook_used"}
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    ids = tok.encode(real_photos(2), size=32)
    assert ids.shape == (2, 2, 2) and ids.dtype == torch.long
    # the cosine lookup: the ids are the argmax of cos(ẑ, e_k)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = tok.model.quant_conv(tok.model.encoder(x))[0].flatten(1).t()  # (h*w, D)
        codebook = state["quantize.embedding.weight"]
        cos = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(codebook, dim=1).t()
        assert torch.equal(tok.model.encode(x).ids.flatten(), cos.argmax(dim=1))
    assert tok.decode(ids[0], output="pt").shape == (3, 32, 32)


def test_vq8_layout_and_saved_args(tmp_path):
    layout = llamagen_layout(ch_mult=(1, 2, 2, 4), z=32, embed_dim=4, n_embed=512, show_usage=False)
    args = argparse.Namespace(vq_model="VQ-8", codebook_l2_norm=False, image_size=512, commit_loss_beta=0.3, dropout_p=0.1)
    path = save_llamagen_checkpoint(tmp_path / "vq_ds8.pt", random_state(layout), args=args)
    cfg = from_llamagen(path).config
    assert cfg.downsample_factor == 8 and cfg.ch_mult == (1, 2, 2, 4)
    assert cfg.resolution == 512 and cfg.attn_resolutions == (64,)
    assert not cfg.l2_norm_codes and cfg.beta == 0.3 and cfg.dropout == 0.1
    assert from_llamagen(path, l2_norm=True).config.l2_norm_codes  # explicit override wins


def test_key_mapping_round_trip_and_names():
    tok = Tokenizer.from_config(VQGANConfig(ch=32, ch_mult=(1, 2, 2), z_channels=16, embed_dim=8, n_embed=64,
                                            attn_resolutions=(64,), l2_norm_codes=True))
    ours = tok.model.state_dict()
    theirs = vqtok_to_llamagen_keys(ours)
    layout = llamagen_layout(ch=32, ch_mult=(1, 2, 2), z=16, embed_dim=8, n_embed=64, show_usage=False)
    assert {k: tuple(v.shape) for k, v in theirs.items()} == layout
    # decoder: taming's up[2] (lowest resolution, with attention) is LlamaGen's conv_blocks[0]
    assert torch.equal(theirs["decoder.conv_blocks.0.attn.2.q.weight"], ours["decoder.up.2.attn.2.q.weight"])
    assert torch.equal(theirs["encoder.mid.1.proj_out.bias"], ours["encoder.mid.attn_1.proj_out.bias"])
    back = llamagen_to_vqtok_keys(theirs)
    assert set(back) == set(ours) and all(back[k] is ours[k] for k in ours)
    assert infer_llamagen_config(theirs) == VQGANConfig(
        ch=32, ch_mult=(1, 2, 2), z_channels=16, embed_dim=8, n_embed=64, attn_resolutions=(64,),
        l2_norm_codes=True, legacy_loss=False,
    )


def test_ema_selection(tmp_path):
    layout = llamagen_layout(ch_mult=(1, 2), z=32, n_embed=64)
    model, ema = random_state(layout, seed=1), random_state(layout, seed=2)
    path = save_llamagen_checkpoint(tmp_path / "with_ema.pt", model, ema_state=ema)
    w = "quantize.embedding.weight"
    assert torch.equal(from_llamagen(path).model.state_dict()[w], model[w])
    assert torch.equal(from_llamagen(path, ema=True).model.state_dict()[w], ema[w])
    no_ema = save_llamagen_checkpoint(tmp_path / "no_ema.pt", model)
    with pytest.raises(ValueError, match="no 'ema' entry.*not trained with --ema"):
        from_llamagen(no_ema, ema=True)
    # a bare state dict (e.g. re-saved model weights) loads too, with and without wrappers' prefixes
    torch.save({f"module.{k}": v for k, v in model.items()}, tmp_path / "bare.pt")
    assert torch.equal(from_llamagen(tmp_path / "bare.pt").model.state_dict()[w], model[w])


def test_cli_convert_llamagen(llamagen_ckpt, tmp_path, capsys):
    path, state = llamagen_ckpt
    assert main(["convert", "llamagen", path, "--out", str(tmp_path / "model")]) == 0
    assert "(llamagen -> vqgan: grid HxW/f, 1024 codes, f" in capsys.readouterr().out
    tok = Tokenizer.from_pretrained(tmp_path / "model")
    assert tok.config.l2_norm_codes and tok.codebook_size == 1024
    assert torch.equal(tok.model.quantize.embedding.weight, state["quantize.embedding.weight"])
    assert main(["convert", "llamagen", path, "--ema", "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert "no 'ema' entry" in err and "Traceback" not in err
    assert not (tmp_path / "m2").exists()


def test_clear_errors(tmp_path):
    # a taming checkpoint
    state = Tokenizer.from_config(VQGANConfig(ch=32, ch_mult=(1, 2), n_embed=8)).model.state_dict()
    torch.save({"state_dict": state}, tmp_path / "taming.ckpt")
    with pytest.raises(ValueError, match="Lightning checkpoint.*vqtok convert taming"):
        from_llamagen(tmp_path / "taming.ckpt")
    torch.save(state, tmp_path / "taming_bare.pt")
    with pytest.raises(ValueError, match="taming-transformers checkpoint.*vqtok convert taming"):
        from_llamagen(tmp_path / "taming_bare.pt")
    # something else entirely
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a LlamaGen VQ checkpoint"):
        from_llamagen(tmp_path / "other.pt")
    # encoder and decoder of different widths
    state = random_state(llamagen_layout(ch_mult=(1, 2), dec_ch_mult=(1, 4), z=32, n_embed=8))
    with pytest.raises(ValueError, match="encoder .* and decoder .* differ"):
        from_llamagen(save_llamagen_checkpoint(tmp_path / "asym.pt", state))
    # BatchNorm variant
    state = random_state(llamagen_layout(ch_mult=(1, 2), z=32, n_embed=8))
    state["encoder.norm_out.running_mean"] = torch.zeros(64)
    with pytest.raises(ValueError, match="norm_type='batch'"):
        from_llamagen(save_llamagen_checkpoint(tmp_path / "bn.pt", state))
    # a missing tensor is named
    state = random_state(llamagen_layout(ch_mult=(1, 2), z=32, n_embed=8))
    del state["decoder.conv_blocks.1.res.2.conv2.bias"]
    with pytest.raises(ValueError, match=r"missing: decoder\.up\.0\.block\.2\.conv2\.bias"):
        from_llamagen(save_llamagen_checkpoint(tmp_path / "cut.pt", state))


def test_malicious_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "args": ShellPayload("echo pwned > /tmp/vqtok-pwned-llamagen")}, path)
    with pytest.raises(UnsafeCheckpointError):
        from_llamagen(path)


def test_llamagen_state_dict_rejects_pickled_module():
    from vqtok.convert.safe_pickle import Placeholder

    with pytest.raises(ValueError, match="pickled model object"):
        llamagen_state_dict({"model": Placeholder()})
