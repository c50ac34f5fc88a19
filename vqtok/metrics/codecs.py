"""Classical codecs at a byte budget, scored like tokenizers (``vqtok eval --codec jpeg``).

Each image is encoded at the highest quality whose whole file fits the budget (binary search over
the quality), then decoded back; an image whose lowest quality does not fit is encoded at the
lowest quality and counted in ``over_budget``. The budget of ``vqtok eval`` is the first
tokenizer's ids: log2(codebook size) bits per token, so JPEG and WebP get the same bytes per image.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["CODECS", "CodecReconstructor", "best_under_budget", "ids_bytes"]

Saver = Callable[[Image.Image, int], bytes]


def _saver(fmt: str, **options: object) -> Saver:
    def save(img: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=quality, **options)
        return buf.getvalue()

    return save


# name -> (label, saver, lowest quality, highest quality)
CODECS: dict[str, tuple[str, Saver, int, int]] = {
    "jpeg": ("JPEG (optimized, 4:2:0)", _saver("JPEG", optimize=True, subsampling="4:2:0"), 1, 95),
    "webp": ("WebP (method 6)", _saver("WEBP", method=6), 0, 100),
    "avif": ("AVIF (speed 0)", _saver("AVIF", speed=0), 0, 100),
}


def best_under_budget(img: Image.Image, budget: int, save: Saver, lo: int, hi: int) -> tuple[np.ndarray, int, bool]:
    """(decoded uint8 (H, W, 3), bytes used, fits) at the highest quality in [lo, hi] whose file fits ``budget`` bytes."""
    best: bytes | None = None
    lowest = lo
    while lo <= hi:
        mid = (lo + hi) // 2
        data = save(img, mid)
        if len(data) <= budget:
            best, lo = data, mid + 1
        else:
            hi = mid - 1
    fits = best is not None
    if best is None:
        best = save(img, lowest)
    return np.asarray(Image.open(io.BytesIO(best)).convert("RGB"), dtype=np.uint8), len(best), fits


def ids_bytes(codebook_size: int, tokens: int) -> int:
    """Bytes of ``tokens`` ids at log2(codebook_size) bits each (rounded down)."""
    return int(np.log2(codebook_size) * tokens // 8)


class CodecReconstructor:
    """A codec at a byte budget with the interface :func:`vqtok.metrics.evaluate.evaluate_reconstruction` scores."""

    codebook_size = None
    downsample_factor = 1

    def __init__(self, codec: str, budget: int) -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
        if budget < 1:
            raise ValueError(f"byte budget must be >= 1, got {budget}")
        self.codec, self.budget = codec, budget
        label, self._save, self._lo, self._hi = CODECS[codec]
        self.name = f"{label}, {budget} B"
        self.over_budget = 0
        self.bytes_total = 0

    def reconstruct_batch(self, images: torch.Tensor) -> tuple[None, torch.Tensor]:
        """uint8 (B, 3, H, W) -> (None, reconstructions float (B, 3, H, W) in [0, 1])."""
        out = []
        for a in images.permute(0, 2, 3, 1).numpy():
            rec, used, fits = best_under_budget(Image.fromarray(a), self.budget, self._save, self._lo, self._hi)
            self.over_budget += not fits
            self.bytes_total += used
            out.append(torch.from_numpy(rec.copy()).permute(2, 0, 1))
        return None, torch.stack(out).float() / 255
