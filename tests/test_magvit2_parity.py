"""Parity with Open-MAGVIT2's own model code on the same random weights (optional).

Runs when ``open-magvit2==1.1`` is installed (``pip install --no-deps open-magvit2==1.1``; the
modules compared need only torch and einops): its ``improved_model.Encoder`` / ``Decoder`` and
``lookup_free_quantize.LFQ`` are the code of TencentARC's ``lfqgan.VQModel`` (which itself needs
Lightning, so it is assembled here from the same parts under the same attribute names, giving
the same ``state_dict`` keys).

The weights travel through a Lightning-shaped ``.ckpt`` (``{"state_dict": ...}`` with the
training loss' ``loss.*`` tensors and ``LitEma``'s ``model_ema.*`` copies) and
:func:`vqtok.convert.from_magvit2`. Compared on real photos: the ids of the reference LFQ against
``Tokenizer.encode``, and the reference decoder's images of those ids against ``Tokenizer.decode``.
The published full width (ch 128, 256 px) takes about a minute on one core::

    VQTOK_FULL_WIDTH=1 python -m pytest -q tests/test_magvit2_parity.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import real_photos
from vqtok.convert.magvit2 import from_magvit2
from vqtok.images import to_model_input, to_uint8_batch

pytest.importorskip("einops")
improved = pytest.importorskip("open_magvit2.taming.modules.diffusionmodules.improved_model")
lfq_ref = pytest.importorskip("open_magvit2.taming.modules.vqvae.lookup_free_quantize")


def _reference(*, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, bits: int, seed: int) -> nn.Module:
    """lfqgan.VQModel's encoder / decoder / quantize, with random weights (norm affines and biases too)."""
    dd = dict(ch=ch, out_ch=3, in_channels=3, num_res_blocks=num_res_blocks, z_channels=bits, ch_mult=ch_mult,
              resolution=256)
    torch.manual_seed(seed)
    ref = nn.Module()
    ref.encoder = improved.Encoder(**dd)
    ref.decoder = improved.Decoder(**dd)
    ref.quantize = lfq_ref.LFQ(dim=bits, codebook_size=2**bits)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 1:  # norm scales near 1, biases near 0: a trained-like spread
                base = 1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "norm_out.weight" in name else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return ref.eval()


def _lightning_ckpt(ref: nn.Module, path: Path, *, ema_noise: float) -> dict[str, torch.Tensor]:
    """Write ``{"state_dict": ...}`` as lfqgan.VQModel + LitEma would; returns the EMA weights (by model key)."""
    g = torch.Generator().manual_seed(7)
    state = dict(ref.state_dict())
    ema = {k: v + ema_noise * torch.randn(v.shape, generator=g) for k, v in state.items()}
    full = dict(state)
    full["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    full["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    full["model_ema.decay"] = torch.tensor(0.999)
    full["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int)
    for k, v in ema.items():
        full["model_ema." + k.replace(".", "")] = v
    torch.save({"state_dict": full, "epoch": 269, "global_step": 1, "hyper_parameters": {"n_embed": 2**18}}, path)
    return ema


def _compare(ref: nn.Module, tok, *, n: int, size: int) -> dict[str, float]:
    images = real_photos(n)
    x = to_model_input(to_uint8_batch(images, size=size).pixels)
    b, f, bits = x.shape[0], tok.downsample_factor, ref.quantize.codebook_dim
    h = w = size // f
    with torch.no_grad():
        quant, _, ref_ids = ref.quantize(ref.encoder(x))
        ref_ids = ref_ids.view(b, h, w)
        codes = ref.quantize.get_codebook_entry(ref_ids.view(b, h * w), (b, h, w, bits), None)
        ref_pixels = ref.decoder(codes)
    ids = tok.encode(images, size=size)
    assert ids.dtype == torch.long and int(ids.max()) < 2**bits
    assert torch.equal(ids, ref_ids), f"{int((ids != ref_ids).sum())} of {ids.numel()} tokens differ"
    assert ids.unique().numel() > ids.numel() // 4  # diverse ids: equality means something
    ours = tok.decode(ids, output="pt")
    expected = ((ref_pixels + 1) / 2).clamp(0, 1)
    pixel_diff = float((ours - expected).abs().max())
    assert pixel_diff < 1e-4, pixel_diff
    with torch.no_grad():  # the reference keeps x + (q − x) in eval: equal to the codes up to rounding
        ours_zq = tok.model.encode(x).z_q
    torch.testing.assert_close(ours_zq, quant, rtol=0, atol=1e-6)
    return {"pixel_max_abs": pixel_diff, "zq_max_abs": float((ours_zq - quant).abs().max()),
            "distinct_ids": int(ids.unique().numel()), "ids": ids.numel()}


@pytest.mark.parametrize("ch_mult,size", [((1, 2, 2), 64), ((1, 1, 2, 2, 4), 128)])
def test_reduced_width(ch_mult, size, tmp_path: Path) -> None:
    ref = _reference(ch=32, ch_mult=ch_mult, num_res_blocks=2, bits=18, seed=0)
    ckpt = tmp_path / "imagenet_256_L.ckpt"
    ema = _lightning_ckpt(ref, ckpt, ema_noise=0.01)
    raw = from_magvit2(ckpt, ema=False)
    assert raw.codebook_size == 2**18 and raw.config.ch_mult == ch_mult and raw.config.num_res_blocks == 2
    print(ch_mult, size, "raw weights:", _compare(ref, raw, n=4, size=size))
    # default: the EMA weights, as Open-MAGVIT2's ema_scope runs them
    tok = from_magvit2(ckpt)
    ref.load_state_dict(ema, strict=True)
    print(ch_mult, size, "EMA weights:", _compare(ref, tok, n=4, size=size))
    # and through a saved vqtok folder
    tok.save_pretrained(tmp_path / "folder")
    from vqtok import Tokenizer

    again = Tokenizer.from_pretrained(tmp_path / "folder")
    assert torch.equal(again.encode(real_photos(2), size=size), tok.encode(real_photos(2), size=size))


@pytest.mark.skipif(not os.environ.get("VQTOK_FULL_WIDTH"), reason="about a minute on one CPU core: set VQTOK_FULL_WIDTH=1")
def test_full_width_256(tmp_path: Path) -> None:
    """The published imagenet_256_L architecture: ch 128, ch_mult (1,1,2,2,4), 4 blocks, 18 bits, at 256 px."""
    ref = _reference(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4, bits=18, seed=1)
    ckpt = tmp_path / "imagenet_256_L.ckpt"
    _lightning_ckpt(ref, ckpt, ema_noise=0.0)
    tok = from_magvit2(ckpt, ema=False)
    assert sum(p.numel() for p in tok.model.parameters()) == sum(p.numel() for p in ref.parameters())
    assert tok.grid_shape(256) == (16, 16)
    print("full width 256:", _compare(ref, tok, n=2, size=256))
