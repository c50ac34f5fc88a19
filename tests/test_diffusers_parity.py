"""Parity with the diffusers package: same ids and decoded pixels through both libraries, both ways.

Runs when diffusers is importable (``pip install diffusers``; it does not depend on torch).
In diffusers, ids are ``vq.quantize(vq.encode(x).latents)[2][2]`` and ids are decoded with
``vq.decode(vq.quantize.get_codebook_entry(ids, (B, h, w, D)), force_not_quantize=True)``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import real_photos
from vqtok import Tokenizer, VQGANConfig
from vqtok.convert import from_diffusers, to_diffusers
from vqtok.images import to_model_input, to_uint8_batch

diffusers = pytest.importorskip("diffusers", reason="needs diffusers (pip install diffusers)")
VQModel = diffusers.VQModel

SMALL = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(32,), z_channels=8, embed_dim=4,
                    n_embed=256, resolution=64)
# taming's ImageNet f16 layout (ch_mult 1,1,2,2,4, attention at 16 of 256) at width 32
TAMING_F16 = VQGANConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=64,
                         embed_dim=64, n_embed=1024, resolution=256)
# latent diffusion's VQ-f4 as published in diffusers pipelines (no level attention, 3-channel latents)
LDM_F4 = dict(block_out_channels=[32, 64, 128], down_block_types=["DownEncoderBlock2D"] * 3,
              up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, latent_channels=3, num_vq_embeddings=512,
              sample_size=64)


def _spread(codebook: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        codebook.copy_(torch.randn(codebook.shape, generator=g) * 0.5)


def _diffusers_ids_and_pixels(vq, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        latents = vq.encode(x).latents  # (B, D, h, w) before quantization
        b, d, h, w = latents.shape
        ids = vq.quantize(latents)[2][2].view(b, h, w)
        z_q = vq.quantize.get_codebook_entry(ids.flatten(), (b, h, w, d))
        pixels = vq.decode(z_q, force_not_quantize=True).sample
    return ids, pixels


def _compare(vq, tok: Tokenizer, *, n: int = 3) -> float:
    size = 64 if tok.downsample_factor >= 16 else 32  # 4x4 / 16x16 / 8x8 tokens per image
    images = real_photos(n)
    x = to_model_input(to_uint8_batch(images, size=size).pixels)
    ref_ids, ref_pixels = _diffusers_ids_and_pixels(vq.eval(), x)
    ids = tok.encode(images, size=size)
    assert torch.equal(ids, ref_ids), f"{int((ids != ref_ids).sum())} of {ids.numel()} ids differ"
    ours = tok.decode(ids, output="pt")
    diff = float((ours - ((ref_pixels + 1) / 2).clamp(0, 1)).abs().max())
    assert diff < 1e-4, diff
    return diff


@pytest.mark.parametrize(
    "cfg", [SMALL, TAMING_F16, dataclasses.replace(SMALL, norm_groups=8)], ids=["small", "taming-f16", "groups-8"]
)
def test_export_loads_in_diffusers_with_same_ids_and_pixels(cfg, tmp_path):
    torch.manual_seed(0)
    tok = Tokenizer.from_config(cfg)
    _spread(tok.model.quantize.embedding.weight, 0)
    to_diffusers(tok, tmp_path / "vq")
    vq, info = VQModel.from_pretrained(tmp_path / "vq", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert list(vq.config.block_out_channels) == [cfg.ch * m for m in cfg.ch_mult]
    print(f"vqtok -> diffusers {cfg.ch_mult}: pixel max abs diff {_compare(vq, tok):.2e}")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
             up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], layers_per_block=1, latent_channels=8,
             vq_embed_dim=4, num_vq_embeddings=256, sample_size=64),
        dict(block_out_channels=[32, 32, 64, 64, 128], down_block_types=["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"],
             up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=64,
             num_vq_embeddings=1024, sample_size=256),
        LDM_F4,
        dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2, norm_num_groups=8,
             up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=8, vq_embed_dim=4,
             num_vq_embeddings=256, sample_size=64),
    ],
    ids=["small", "taming-f16", "ldm-f4", "groups-8"],
)
def test_diffusers_model_converts_with_same_ids_and_pixels(kwargs, tmp_path):
    torch.manual_seed(1)
    vq = VQModel(**kwargs)
    _spread(vq.quantize.embedding.weight, 1)
    vq.save_pretrained(tmp_path / "vq", safe_serialization=True)
    tok = from_diffusers(tmp_path / "vq")
    assert tok.config.ch_mult == tuple(c // kwargs["block_out_channels"][0] for c in kwargs["block_out_channels"])
    assert tok.config.norm_groups == kwargs.get("norm_num_groups", 32)
    print(f"diffusers -> vqtok {kwargs['block_out_channels']}: pixel max abs diff {_compare(vq, tok):.2e}")
