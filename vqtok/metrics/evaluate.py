"""Reconstruction evaluation of a tokenizer: rFID (+ n), KID, PSNR, SSIM, LPIPS, codebook usage."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vqtok.metrics.fid import (
    KIDResult,
    RunningStats,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
)
from vqtok.metrics.image import psnr, ssim
from vqtok.metrics.inception import FIDInceptionV3
from vqtok.metrics.lpips import LPIPS
from vqtok.metrics.usage import CodebookUsage, token_histogram, usage_from_histogram

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "EvalResult", "evaluate_reconstruction", "find_images", "save_grid"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class EvalResult:
    """Numbers of one evaluation; ``None`` marks a metric that was skipped (see ``skipped``)."""

    n: int  # images evaluated (rFID is biased and its covariance singular when n < 2048)
    image_size: int | None
    rfid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    kid_subset_size: int | None = None
    psnr: float = math.nan  # mean over images, dB (inf if some reconstruction is exact)
    ssim: float = math.nan
    lpips: float | None = None
    usage: CodebookUsage | None = None
    inception_weights: dict[str, str] | None = None
    fid_preprocess: str | None = None
    lpips_weights: dict[str, str] | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.usage is not None:
            d["usage"] = self.usage.to_dict()
        return d


def find_images(specs: Sequence[str], *, limit: int | None = None) -> list[Path]:
    """Expand folders (recursively), globs (``**`` allowed) and files into a sorted, de-duplicated image list."""
    found: list[Path] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True))
            matches = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise FileNotFoundError(f"{spec}: no such folder or file, and no image matches it as a glob")
            found += matches
    seen: set[Path] = set()
    unique = [f for f in found if not (f in seen or seen.add(f))]  # type: ignore[func-returns-value]
    if not unique:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(specs)}")
    return unique[:limit] if limit else unique


def save_grid(pairs: Sequence[tuple[np.ndarray, np.ndarray]], path: str | os.PathLike[str], *, gap: int = 4) -> Path:
    """PNG with one row per image: original | reconstruction. Arrays are uint8 (H, W, 3)."""
    if not pairs:
        raise ValueError("no images for the grid")
    h = max(max(a.shape[0], b.shape[0]) for a, b in pairs)
    w = max(a.shape[1] + b.shape[1] for a, b in pairs) + gap
    canvas = np.full((len(pairs) * (h + gap) - gap, w, 3), 255, dtype=np.uint8)
    for i, (a, b) in enumerate(pairs):
        top = i * (h + gap)
        canvas[top : top + a.shape[0], : a.shape[1]] = a
        canvas[top : top + b.shape[0], a.shape[1] + gap : a.shape[1] + gap + b.shape[1]] = b
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out)
    return out


def _batches(paths: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(paths), size):
        yield list(paths[i : i + size])


def evaluate_reconstruction(
    tokenizer: Any,
    paths: Sequence[Path],
    *,
    size: int | None = 256,
    batch_size: int = 8,
    inception: FIDInceptionV3 | None = None,
    lpips_model: LPIPS | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    quantize: bool = True,
    grid_path: str | os.PathLike[str] | None = None,
    grid_count: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Encode+decode every image and score the reconstructions against the originals.

    Originals are the images as the tokenizer sees them (shorter side resized to ``size``,
    center crop). With ``quantize`` (default) reconstructions are rounded to uint8 first, so
    the numbers equal those of tools run on the saved PNGs. FID statistics stream (float64
    running mean/covariance); Inception features are kept (float32) only for KID.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (extra "metrics"): no progress bar without it
        progress = False

        def tqdm(*_a: Any, **_k: Any) -> Any:  # type: ignore[no-redef]
            class _Null:
                def update(self, _n: int) -> None: ...
                def close(self) -> None: ...

            return _Null()

    from vqtok.images import load_image, pil_to_rgb, to_uint8_batch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    hist = np.zeros(tokenizer.codebook_size, dtype=np.int64)
    stats_real = RunningStats(FIDInceptionV3.FEATURE_DIM) if inception is not None else None
    stats_fake = RunningStats(FIDInceptionV3.FEATURE_DIM) if inception is not None else None
    feats_real: list[torch.Tensor] = []
    feats_fake: list[torch.Tensor] = []
    psnrs: list[torch.Tensor] = []
    ssims: list[torch.Tensor] = []
    lpipss: list[torch.Tensor] = []
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="eval", leave=False)
    for chunk in _batches(paths, batch_size):
        images = [pil_to_rgb(load_image(p)) for p in chunk]
        try:
            original_u8 = to_uint8_batch(images, size=size).pixels  # (B, 3, H, W) uint8
        except ValueError as err:
            raise ValueError(f"{err} (images {chunk[0]}...)") from err
        ids = tokenizer.encode(original_u8, size=None)  # (B, h, w)
        hist += token_histogram(ids, tokenizer.codebook_size)
        recon = tokenizer.decode(ids, output="pt").float()  # (B, 3, H, W) in [0, 1]
        if quantize:
            recon = torch.round(recon * 255) / 255
        original = original_u8.float() / 255
        psnrs.append(psnr(original, recon))
        ssims.append(ssim(original, recon))
        if lpips_model is not None:
            lpipss.append(lpips_model(original, recon).cpu())
        if inception is not None and stats_real is not None and stats_fake is not None:
            device = next(inception.parameters()).device
            fr = inception(original.to(device)).cpu()  # (B, 2048)
            ff = inception(recon.to(device)).cpu()
            stats_real.update(fr)
            stats_fake.update(ff)
            feats_real.append(fr)
            feats_fake.append(ff)
        for o, r in zip(original_u8, recon):
            if len(pairs) >= grid_count:
                break
            pairs.append((o.permute(1, 2, 0).numpy(), (r * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()))
        bar.update(len(chunk))
    bar.close()

    n = len(paths)
    result = EvalResult(n=n, image_size=size)
    all_psnr = torch.cat(psnrs)
    result.psnr = float(all_psnr.mean())
    result.ssim = float(torch.cat(ssims).mean())
    if lpipss:
        result.lpips = float(torch.cat(lpipss).mean())
    result.usage = usage_from_histogram(hist)
    if inception is not None and stats_real is not None and stats_fake is not None:
        result.fid_preprocess = inception.preprocess
        if n >= 2:
            if n <= FIDInceptionV3.FEATURE_DIM:  # exact low-rank form, same value, no 2048x2048 eigh
                result.rfid = fid_from_features(torch.cat(feats_real), torch.cat(feats_fake))
            else:
                result.rfid = frechet_distance(stats_real.stats(), stats_fake.stats())
            kid: KIDResult = kernel_inception_distance(
                torch.cat(feats_real), torch.cat(feats_fake), subsets=kid_subsets, subset_size=kid_subset_size
            )
            result.kid_mean, result.kid_std, result.kid_subset_size = kid.mean, kid.std, kid.subset_size
        else:
            result.skipped["rfid"] = result.skipped["kid"] = "needs at least 2 images"
        if n < FIDInceptionV3.FEATURE_DIM:
            logger.warning("rFID over n=%d < 2048 images: the covariance is singular and rFID is biased upwards; compare only at equal n", n)
    if grid_path is not None and pairs:
        save_grid(pairs, grid_path)
    return result


def write_json(result: EvalResult, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**(extra or {}), **result.to_dict()}
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out
