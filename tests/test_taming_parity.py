"""Checkpoint compatibility: taming-transformers' own modules vs vqtok on the same weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import ShellPayload, real_photos
from tests.taming_reference import TamingVQModel, save_lightning_checkpoint
from vqtok import Tokenizer, VQGANConfig
from vqtok.convert import UnsafeCheckpointError, from_taming, infer_taming_config, taming_config_from_yaml
from vqtok.images import to_model_input, to_uint8_batch

pytest.importorskip("taming.modules.diffusionmodules.model", reason="needs taming-transformers (pip install --no-deps taming-transformers==0.0.1)")

# The published layouts, with fewer channels so CI stays fast (ch 128 -> 32; taming's
# own published f16 config at full width is covered by test_full_size_imagenet_f16).
LAYOUTS = {
    "imagenet-f16-16384": VQGANConfig(
        ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=64,
        embed_dim=64, n_embed=16384, resolution=256,
    ),
    "openimages-vq-f8-16384": VQGANConfig(
        ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(32,), z_channels=4,
        embed_dim=4, n_embed=16384, resolution=256,
    ),
}


def _reference(cfg: VQGANConfig, seed: int = 0) -> TamingVQModel:
    torch.manual_seed(seed)
    ref = TamingVQModel(cfg).eval()
    with torch.no_grad():  # a trained-like codebook: spread out, not taming's ±1/K init
        ref.quantize.embedding.weight.normal_(0, 1.0)
    return ref


def _compare(ref: TamingVQModel, tok: Tokenizer, size: int) -> None:
    images = real_photos(4)
    pixels = to_uint8_batch(images, size=size).pixels
    x = to_model_input(pixels)
    with torch.no_grad():
        quant, ref_ids = ref.encode(x)
        ref_pixels = ref.decode(quant)
    ids = tok.encode(images, size=size)
    assert torch.equal(ids, ref_ids), f"{(ids != ref_ids).sum()} of {ids.numel()} tokens differ"
    ours = tok.decode(ids, output="pt")
    expected = ((ref_pixels + 1) / 2).clamp(0, 1)
    assert torch.allclose(ours, expected, atol=1e-4), float((ours - expected).abs().max())


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_lightning_checkpoint_converts_with_same_tokens_and_pixels(name, tmp_path):
    cfg = LAYOUTS[name]
    ref = _reference(cfg)
    ckpt = save_lightning_checkpoint(ref, tmp_path / "last.ckpt")
    tok = from_taming(ckpt)  # architecture inferred from the weights
    assert tok.config.ch_mult == cfg.ch_mult and tok.codebook_size == 16384
    assert tok.config.attn_resolutions == cfg.attn_resolutions
    _compare(ref, tok, size=64)


def test_full_size_imagenet_f16(tmp_path):
    """taming's published ImageNet f16-1024 architecture at full width, 256x256 photos."""
    cfg = VQGANConfig()  # defaults are vqgan_imagenet_f16_1024
    ref = _reference(cfg, seed=1)
    tok = from_taming(save_lightning_checkpoint(ref, tmp_path / "last.ckpt", with_loss=False))
    images = real_photos(2)
    x = to_model_input(to_uint8_batch(images, size=256).pixels)
    with torch.no_grad():
        quant, ref_ids = ref.encode(x)
    assert torch.equal(tok.encode(images, size=256), ref_ids)


YAML = """
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 4
    n_embed: 16384
    ddconfig:
      double_z: false
      z_channels: 4
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2, 2, 4]
      num_res_blocks: 2
      attn_resolutions: [32]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {disc_conditional: false, disc_in_channels: 3, disc_start: 0}
"""


def test_yaml_config_is_read_and_cross_checked(tmp_path):
    cfg = LAYOUTS["openimages-vq-f8-16384"]
    ref = _reference(cfg)
    ckpt = save_lightning_checkpoint(ref, tmp_path / "last.ckpt")
    (tmp_path / "model.yaml").write_text(YAML)
    assert taming_config_from_yaml(tmp_path / "model.yaml") == cfg
    assert from_taming(ckpt, config=tmp_path / "model.yaml").config == cfg
    (tmp_path / "wrong.yaml").write_text(YAML.replace("n_embed: 16384", "n_embed: 1024"))
    with pytest.raises(ValueError, match="n_embed: config 1024 vs weights 16384"):
        from_taming(ckpt, config=tmp_path / "wrong.yaml")


def test_inferred_config_matches_state_dict_layout():
    cfg = LAYOUTS["imagenet-f16-16384"]
    ref = _reference(cfg)
    assert infer_taming_config(ref.state_dict()) == cfg


def test_cli_convert_then_encode(tmp_path):
    cfg = LAYOUTS["openimages-vq-f8-16384"]
    ref = _reference(cfg)
    ckpt = save_lightning_checkpoint(ref, tmp_path / "last.ckpt")
    run = subprocess.run(
        [sys.executable, "-m", "vqtok", "convert", "taming", str(ckpt), "--out", str(tmp_path / "model")],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "pytorch_lightning" not in sys.modules
    tok = Tokenizer.from_pretrained(tmp_path / "model")
    _compare(ref, tok, size=64)


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": ShellPayload("echo pwned > /tmp/vqtok-pwned")}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        from_taming(path)
    run = subprocess.run(
        [sys.executable, "-m", "vqtok", "convert", "taming", str(path), "--out", str(tmp_path / "m")],
        capture_output=True, text=True,
    )
    assert run.returncode != 0
    assert "refusing" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "m").exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        from_taming(bad)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="not a taming VQModel checkpoint"):
        from_taming(other)
