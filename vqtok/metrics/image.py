"""Pixel metrics: PSNR and SSIM on images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "psnr", "ssim"]


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) or (C, H, W) images, got shape {tuple(x.shape)}")
    return x.to(torch.float64), y.to(torch.float64)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: (B, C, H, W) x2 in [0, data_range] -> (B,) float64.

    Identical images give ``inf``.
    """
    x, y = _check_pair(x, y)
    mse = (x - y).pow(2).flatten(1).mean(1)  # (B,)
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-d Gaussian (size,)."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image: (B, C, H, W) x2 -> (B,) float64.

    Gaussian window ``win_size`` x ``win_size`` with std ``sigma``; weighted local moments
    without the N/(N-1) sample correction (as Wang et al.'s reference code), averaged over
    the valid region (no padding) and over channels. This equals scikit-image's
    ``structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=0)`` (skimage filters with
    reflection and then crops ``(win_size-1)//2`` pixels per side: the same valid region).
    """
    x, y = _check_pair(x, y)
    _, c, h, w = x.shape
    if h < win_size or w < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size}, got {h}x{w}")
    g = gaussian_window(win_size, sigma)
    kernel_h = g.view(1, 1, win_size, 1).expand(c, 1, win_size, 1)
    kernel_w = g.view(1, 1, 1, win_size).expand(c, 1, 1, win_size)

    def blur(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H-win+1, W-win+1), separable
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)
