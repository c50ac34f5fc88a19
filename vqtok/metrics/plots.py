"""PNG plots drawn with PIL only (no matplotlib): the sorted code-frequency curve of a codebook."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vqtok.metrics.usage import usage_from_histogram

logger = logging.getLogger(__name__)

__all__ = ["save_usage_plot", "usage_plot"]

_BG = (255, 255, 255)
_AXIS = (40, 40, 40)
_GRID = (225, 225, 225)
_CURVE = (31, 100, 180)
_DEAD = (250, 225, 225)
_UNIFORM = (200, 120, 0)


def _nice_ticks(k: int, count: int = 5) -> list[int]:
    """Ranks 1..k: 1, a few round numbers in between, k."""
    if k <= count:
        return list(range(1, k + 1))
    raw = k / (count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = [1] + [int(t) for t in np.arange(step, k, step) if k - t > 0.3 * step] + [k]
    return sorted(set(ticks))


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def usage_plot(
    histogram: Sequence[int] | np.ndarray, *, width: int = 720, height: int = 420, title: str | None = None
) -> Image.Image:
    """RGB image of the code frequencies sorted in descending order (x: rank, y: frequency, log scale).

    Codes never used (frequency 0) cannot be drawn on a log axis: their ranks are shaded and
    labelled "dead". A dashed line marks the uniform frequency 1/K. Used %, perplexity, entropy
    and the dead count are written on the plot.
    """
    hist = np.asarray(histogram, dtype=np.int64).reshape(-1)
    if hist.size == 0:
        raise ValueError("empty histogram")
    if (hist < 0).any():
        raise ValueError("histogram has negative counts")
    total = int(hist.sum())
    if total == 0:
        raise ValueError("histogram has no tokens: nothing to plot")
    if width < 200 or height < 150:
        raise ValueError(f"plot size {width}x{height} is too small (min 200x150)")
    usage = usage_from_histogram(hist)
    k = hist.size
    freq = np.sort(hist)[::-1] / total
    used = int((freq > 0).sum())

    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    _, th = _text_size(draw, "0e-0", font)
    left, right, top, bottom = 64, 16, 2 * th + 20, 2 * th + 22
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area (y0 top)

    lo = math.floor(math.log10(float(freq[used - 1])))
    hi = math.ceil(math.log10(float(freq[0])))
    lo = min(lo, math.floor(math.log10(1.0 / k)))  # keep the uniform line visible
    if hi <= lo:
        hi = lo + 1

    def xpos(rank: float) -> float:
        return x0 if k == 1 else x0 + (rank - 1) / (k - 1) * (x1 - x0)

    def ypos(f: float) -> float:
        return y1 - (math.log10(f) - lo) / (hi - lo) * (y1 - y0)

    # dead-code region, grid, uniform line
    if used < k:
        draw.rectangle([xpos(used + 0.5 if k > 1 else 1), y0, x1, y1], fill=_DEAD)
        label = f"dead: {k - used}"
        lw, _ = _text_size(draw, label, font)
        # at the region's start, or right-aligned in the plot when the region is narrower than the label
        # (the top right: the sorted curve ends low there)
        draw.text((max(x0 + 4, min(xpos(used + 0.5) + 4, x1 - lw - 4)), y0 + 4), label, fill=(170, 40, 40), font=font)
    for e in range(lo, hi + 1):
        y = ypos(10.0**e)
        draw.line([(x0, y), (x1, y)], fill=_GRID)
        label = f"1e{e}" if e != 0 else "1"
        lw, _ = _text_size(draw, label, font)
        draw.line([(x0 - 4, y), (x0, y)], fill=_AXIS)
        draw.text((x0 - 6 - lw, y - th / 2 - 1), label, fill=_AXIS, font=font)
    yu = ypos(1.0 / k)
    for xs in range(int(x0), int(x1), 8):
        draw.line([(xs, yu), (min(xs + 4, x1), yu)], fill=_UNIFORM)
    ulabel = f"uniform 1/K = {1.0 / k:.1e}"
    uw, _ = _text_size(draw, ulabel, font)
    draw.text((x1 - uw - 4, yu - th - 5), ulabel, fill=_UNIFORM, font=font)

    # the curve: one point per rank (at most one per pixel column is visible anyway)
    ranks = np.arange(1, used + 1)
    step = max(1, used // (4 * (x1 - x0)))
    idx = np.unique(np.concatenate([ranks[::step], [used]])) - 1
    points = [(xpos(float(i + 1)), ypos(float(freq[i]))) for i in idx]
    if len(points) == 1:
        x, y = points[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_CURVE)
    else:
        draw.line(points, fill=_CURVE, width=2)

    # axes and x ticks
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=_AXIS)
    for t in _nice_ticks(k):
        x = xpos(t)
        draw.line([(x, y1), (x, y1 + 4)], fill=_AXIS)
        lw, _ = _text_size(draw, str(t), font)
        draw.text((min(max(x - lw / 2, 0), width - lw - 1), y1 + 6), str(t), fill=_AXIS, font=font)
    xlabel = "rank (codes sorted by frequency, most used first)"
    lw, _ = _text_size(draw, xlabel, font)
    draw.text(((x0 + x1 - lw) / 2, height - th - 6), xlabel, fill=_AXIS, font=font)
    draw.text((4, top - th - 6), "frequency (log scale)", fill=_AXIS, font=font)

    # title and numbers
    draw.text((4, 4), title or "codebook usage", fill=_AXIS, font=font)
    stats = (
        f"used {100 * usage.used_fraction:.1f}% ({usage.used_codes}/{k})   perplexity {usage.perplexity:.1f}   "
        f"entropy {usage.entropy_bits:.2f}/{math.log2(k):.2f} bits   dead {len(usage.dead_codes)}   tokens {total}"
    )
    sw, _ = _text_size(draw, stats, font)
    draw.text((max(4, width - right - sw), th + 10), stats, fill=(0, 0, 0), font=font)
    return img


def save_usage_plot(
    histogram: Sequence[int] | np.ndarray, path: str | os.PathLike[str], *, width: int = 720, height: int = 420,
    title: str | None = None,
) -> Path:
    """Draw :func:`usage_plot` and save it as PNG (parent folders are created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    usage_plot(histogram, width=width, height=height, title=title).save(out)
    logger.info("wrote usage plot %s", out)
    return out
