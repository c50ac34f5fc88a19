"""PSNR and SSIM against scikit-image on real photos and synthetic pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtok.metrics import psnr, ssim

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval-photos"


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    files = sorted(PHOTOS.glob("*"))[:2] if PHOTOS.is_dir() else []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB").resize((48, 40)), dtype=np.float64) / 255  # (H, W, 3)
        out.append(a)
    while len(out) < 2:
        out.append(rng.random((40, 48, 3)))
    pairs = []
    for a in out:
        b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
        pairs.append((a, b))
    return pairs


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)


def test_psnr_ssim_match_skimage() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    for a, b in _pairs():
        ref_p = metrics.peak_signal_noise_ratio(a, b, data_range=1.0)
        ref_s = metrics.structural_similarity(
            a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert float(psnr(_t(a), _t(b))) == pytest.approx(ref_p, rel=1e-9)
        assert float(ssim(_t(a), _t(b))) == pytest.approx(ref_s, rel=1e-6)


def test_batch_and_float32_inputs() -> None:
    pairs = _pairs()
    x = torch.cat([_t(a) for a, _ in pairs]).float()
    y = torch.cat([_t(b) for _, b in pairs]).float()
    s, p = ssim(x, y), psnr(x, y)
    assert s.shape == (2,) and p.shape == (2,)
    assert torch.allclose(s[1], ssim(x[1:], y[1:])[0])
    assert float(ssim(x, x).min()) == pytest.approx(1.0)
    assert torch.isinf(psnr(x, x)).all()
    assert (s < 1).all() and (p > 15).all() and (p < 40).all()


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
