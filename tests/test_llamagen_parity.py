"""Parity with LlamaGen's own tokenizer code on the same random weights (optional).

LlamaGen is not on the package registry and its code is not copied here: this test runs only
when ``LLAMAGEN_PATH`` points at a checkout of FoundationVision/LlamaGen, and loads
``tokenizer/tokenizer_image/vq_model.py`` from it by path::

    LLAMAGEN_PATH=/path/to/LlamaGen python -m pytest -q tests/test_llamagen_parity.py

Compared: the ids of ``VQModel.encode`` (its ``min_encoding_indices``) against
``Tokenizer.encode``, and the images of ``VQModel.decode_code(ids)`` against
``Tokenizer.decode(ids)``, on real photos, for the VQ-16 and VQ-8 layouts at reduced width and
VQ-16 at full width; the weights go through a LlamaGen-shaped training checkpoint and
:func:`vqtok.convert.from_llamagen`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import real_photos
from vqtok.convert import from_llamagen
from vqtok.images import to_model_input, to_uint8_batch

LLAMAGEN_PATH = os.environ.get("LLAMAGEN_PATH")
pytestmark = pytest.mark.skipif(not LLAMAGEN_PATH, reason="set LLAMAGEN_PATH to a LlamaGen checkout to run")


def _llamagen_module():
    path = Path(LLAMAGEN_PATH or "") / "tokenizer" / "tokenizer_image" / "vq_model.py"
    if not path.is_file():
        pytest.fail(f"LLAMAGEN_PATH={LLAMAGEN_PATH} has no tokenizer/tokenizer_image/vq_model.py")
    name = "_llamagen_vq_model_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _reference(ch_mult, *, ch: int, z_channels: int, codebook_size: int, embed_dim: int, seed: int):
    """LlamaGen's VQModel (its classes; Encoder/Decoder rebuilt at width ``ch`` when ch != 128)."""
    L = _llamagen_module()
    torch.manual_seed(seed)
    args = L.ModelArgs(codebook_size=codebook_size, codebook_embed_dim=embed_dim, encoder_ch_mult=list(ch_mult),
                       decoder_ch_mult=list(ch_mult), z_channels=z_channels)
    ref = L.VQModel(args)
    if ch != 128:  # VQModel always builds ch=128; the classes themselves take ch
        ref.encoder = L.Encoder(ch=ch, ch_mult=ch_mult, z_channels=z_channels)
        ref.decoder = L.Decoder(ch=ch, ch_mult=ch_mult, z_channels=z_channels)
    with torch.no_grad():  # a trained-like codebook: spread out directions
        ref.quantize.embedding.weight.normal_()
    return ref.eval()


def _save(ref, path: Path, vq_model: str) -> Path:
    args = argparse.Namespace(vq_model=vq_model, codebook_size=ref.quantize.n_e, codebook_embed_dim=ref.quantize.e_dim,
                              codebook_l2_norm=True, commit_loss_beta=0.25, dropout_p=0.0, image_size=256, ema=True)
    torch.save({"model": ref.state_dict(), "ema": ref.state_dict(), "optimizer": {}, "discriminator": {},
                "optimizer_disc": {}, "steps": 1, "args": args}, path)
    return path


def _compare(ref, tok, *, n: int, size: int) -> dict[str, float]:
    images = real_photos(n)
    x = to_model_input(to_uint8_batch(images, size=size).pixels)
    b, f = x.shape[0], tok.downsample_factor
    with torch.no_grad():
        quant, _, (_, _, ref_ids) = ref.encode(x)
        ref_ids = ref_ids.view(b, size // f, size // f)
        ref_pixels = ref.decode_code(ref_ids.flatten(), shape=(b, ref.quantize.e_dim, size // f, size // f))
        ours_zq = tok.model.encode(x).z_q
    ids = tok.encode(images, size=size)
    assert torch.equal(ids, ref_ids), f"{int((ids != ref_ids).sum())} of {ids.numel()} tokens differ"
    ours = tok.decode(ids, output="pt")
    expected = ((ref_pixels + 1) / 2).clamp(0, 1)
    pixel_diff = float((ours - expected).abs().max())
    assert pixel_diff < 1e-4, pixel_diff
    # LlamaGen's encode returns z + (z_q - z) even in eval: z_q up to float rounding
    assert torch.allclose(ours_zq, quant, atol=1e-6)
    return {"pixel_max_abs": pixel_diff, "zq_max_abs": float((ours_zq - quant).abs().max())}


@pytest.mark.parametrize(
    "vq_model,ch_mult,z_channels",
    [("VQ-16", (1, 1, 2, 2, 4), 64), ("VQ-8", (1, 2, 2, 4), 64)],
)
def test_reduced_width_layouts(vq_model, ch_mult, z_channels, tmp_path):
    ref = _reference(ch_mult, ch=32, z_channels=z_channels, codebook_size=16384, embed_dim=8, seed=0)
    tok = from_llamagen(_save(ref, tmp_path / "vq.pt", vq_model))
    assert tok.config.l2_norm_codes and tok.config.ch_mult == tuple(ch_mult)
    print(vq_model, "width 32:", _compare(ref, tok, n=4, size=64))
    tok_ema = from_llamagen(tmp_path / "vq.pt", ema=True)
    assert torch.equal(tok_ema.encode(real_photos(2), size=64), tok.encode(real_photos(2), size=64))


def test_full_width_vq16(tmp_path):
    """LlamaGen's published VQ-16 architecture (ch 128, z 256, 16384 × 8 codes) at 256 px."""
    ref = _reference((1, 1, 2, 2, 4), ch=128, z_channels=256, codebook_size=16384, embed_dim=8, seed=1)
    tok = from_llamagen(_save(ref, tmp_path / "vq_ds16_c2i.pt", "VQ-16"))
    assert sum(p.numel() for p in tok.model.parameters()) == sum(
        v.numel() for k, v in ref.state_dict().items() if k != "quantize.codebook_used"
    )
    print("VQ-16 full width:", _compare(ref, tok, n=2, size=256))
