"""Reconstruction evaluation of a tokenizer: rFID (+ n), KID, PSNR, SSIM, LPIPS, codebook usage.

Inputs (:func:`resolve_data`): image folders (searched recursively), image files, globs, and
WebDataset tar shards (``.tar``, ``.tar.gz``, ``.tgz``; brace patterns such as
``data/val-{000000..000009}.tar``). Unreadable images and broken shard samples are skipped and
counted in :class:`BadSamples`; they never stop an evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vqtok._errors import reason
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
from vqtok.images import prepare_image
from vqtok.tars import expand_shards, is_remote, is_shard, read_samples

logger = logging.getLogger(__name__)

__all__ = [
    "BadSamples",
    "DataSource",
    "EvalResult",
    "Sample",
    "build_report",
    "evaluate_reconstruction",
    "resolve_data",
    "save_grid",
    "write_json",
]

FID_FULL_RANK_N = FIDInceptionV3.FEATURE_DIM  # below this n the covariances are singular


# ---------------------------------------------------------------------- results
@dataclass
class BadSamples:
    """Samples that could not be evaluated: how many, and the first few (key, reason)."""

    count: int = 0
    first: list[dict[str, str]] = field(default_factory=list)
    max_listed: int = 10

    def add(self, key: str, reason: str) -> None:
        self.count += 1
        if len(self.first) < self.max_listed:
            self.first.append({"key": key, "reason": reason})
            logger.warning("skipped %s: %s", key, reason)
        else:
            logger.debug("skipped %s: %s", key, reason)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": list(self.first)}


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
    # mean colour offset, reconstruction − original, per channel R/G/B in 1/255 units (on the uint8 images):
    color_offset: list[float] | None = None  # signed mean over all pixels of all images (a global cast)
    abs_color_offset: list[float] | None = None  # mean over images of |that image's offset| (per-image casts)
    lpips: float | None = None
    usage: CodebookUsage | None = None
    inception_weights: dict[str, str] | None = None
    fid_preprocess: str | None = None
    lpips_weights: dict[str, str] | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason
    bad_samples: BadSamples = field(default_factory=BadSamples)
    histogram: np.ndarray | None = field(default=None, repr=False)  # code counts (codebook_size,)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("histogram", None)
        if self.usage is not None:
            d["usage"] = self.usage.to_dict()
        d["bad_samples"] = self.bad_samples.to_dict()
        return d


# ---------------------------------------------------------------------- inputs
@dataclass
class Sample:
    """One input: an image file (``data`` is a Path) or an encoded shard member (bytes), or an error."""

    key: str
    data: Path | bytes | None
    error: str | None = None


@dataclass
class DataSource:
    """An ordered list of inputs: ("image", path) and ("shard", path) items, in the order given."""

    items: list[tuple[str, Path]]

    @property
    def shards(self) -> list[Path]:
        return [p for kind, p in self.items if kind == "shard"]

    def count_hint(self) -> int | None:
        """Number of samples when known without reading shards (None when there are shards)."""
        return None if self.shards else len(self.items)

    def samples(self) -> Iterator[Sample]:
        for kind, path in self.items:
            if kind == "image":
                yield Sample(key=str(path), data=path)
            else:
                yield from iter_shard_samples(path)


def resolve_data(specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> DataSource:
    """Folders (images searched recursively; a folder without images but with shards gives its shards),
    image files, tar shards, globs (``**`` allowed) and brace patterns -> an ordered :class:`DataSource`
    (:func:`vqtok.tars.expand_shards` with ``images=True``).

    Raises FileNotFoundError naming every spec that matches nothing.
    """
    spec_list = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    if not spec_list:
        raise ValueError("no input given (give folders, image files, globs or .tar shards)")
    found = expand_shards(spec_list, images=True)
    remote = [f for f in found if is_remote(f)]
    if remote:
        raise ValueError(f"evaluation reads local files; {remote[0]} is remote (copy the shards first)")
    return DataSource([("shard" if is_shard(f) else "image", Path(f)) for f in found])


def iter_shard_samples(path: Path) -> Iterator[Sample]:
    """Samples of one WebDataset tar (plain or compressed), in tar order, keyed ``<shard name>:<key>``.

    A sample without an image field, or the unreadable rest of a truncated/corrupt tar (key
    ``<shard name>:<rest of shard>``), gives a :class:`Sample` with ``error`` set; reading then
    goes on with the next shard (see :func:`vqtok.tars.read_samples`).
    """
    for s in read_samples(path):
        key = f"{path.name}:{s.key}"
        if s.error is not None:
            yield Sample(key, None, s.error)
        elif s.image is None:
            yield Sample(key, None, s.missing_image())
        else:
            yield Sample(key, s.image)


def _decoded(samples: Iterable[Sample], size: int | None, factor: int, bad: BadSamples) -> Iterator[tuple[str, np.ndarray]]:
    for s in samples:
        if s.error is not None:
            bad.add(s.key, s.error)
            continue
        try:
            assert s.data is not None
            yield s.key, prepare_image(s.data, size=size, factor=factor)  # (H, W, 3) uint8
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - any per-sample data problem is recorded, not fatal
            bad.add(s.key, reason(err, subject="image member"))


def _batches(arrays: Iterator[tuple[str, np.ndarray]], size: int, limit: int | None) -> Iterator[list[np.ndarray]]:
    """Consecutive images in batches of ``size`` (a batch is cut early where the image shape changes)."""
    batch: list[np.ndarray] = []
    for taken, (_key, arr) in enumerate(arrays, start=1):
        if batch and (len(batch) >= size or arr.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(arr)
        if limit is not None and taken >= limit:
            break
    if batch:
        yield batch


# ---------------------------------------------------------------------- grid
def save_grid(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    columns: int = 8,
    gap: int = 4,
    pair_gap: int = 12,
) -> Path:
    """PNG of originals above their reconstructions. Arrays are uint8 (H, W, 3).

    Up to ``columns`` images per row; each group of images takes a pair of rows, originals on
    top and reconstructions directly below (``gap`` pixels apart, and between columns), with
    ``pair_gap`` pixels between pairs. Cells are max(H) x max(W); smaller images sit top-left
    on white.
    """
    if not pairs:
        raise ValueError("no images for the grid")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    h = max(max(a.shape[0], b.shape[0]) for a, b in pairs)
    w = max(max(a.shape[1], b.shape[1]) for a, b in pairs)
    cols = min(columns, len(pairs))
    rows = -(-len(pairs) // cols)
    width = cols * w + (cols - 1) * gap
    height = rows * (2 * h + gap) + (rows - 1) * pair_gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i, (a, b) in enumerate(pairs):
        r, c = divmod(i, cols)
        top, left = r * (2 * h + gap + pair_gap), c * (w + gap)
        canvas[top : top + a.shape[0], left : left + a.shape[1]] = a
        canvas[top + h + gap : top + h + gap + b.shape[0], left : left + b.shape[1]] = b
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out)
    return out


# ---------------------------------------------------------------------- evaluation
def evaluate_reconstruction(
    tokenizer: Any,
    data: DataSource | Sequence[Path | str],
    *,
    size: int | None = 256,
    batch_size: int = 8,
    limit: int | None = None,
    inception: FIDInceptionV3 | None = None,
    lpips_model: LPIPS | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    quantize: bool = True,
    grid_path: str | os.PathLike[str] | None = None,
    grid_count: int = 8,
    grid_columns: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Encode+decode every image and score the reconstructions against the originals.

    ``data`` is a :class:`DataSource` (see :func:`resolve_data`) or a list of image paths.
    Originals are the images as the tokenizer sees them (shorter side resized to ``size``,
    center crop). With ``quantize`` (default) reconstructions are rounded to uint8 first, so
    the numbers equal those of tools run on the saved PNGs. FID statistics stream (float64
    running mean/covariance); Inception features are kept (float32) only for KID. Unreadable
    samples are skipped and listed in ``result.bad_samples``. ``limit`` counts good images.
    """
    from vqtok._progress import Progress

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    source = data if isinstance(data, DataSource) else DataSource([("image", Path(p)) for p in data])
    if not source.items:
        raise ValueError("no images to evaluate")
    total = source.count_hint()
    if limit is not None:
        total = limit if total is None else min(total, limit)

    bad = BadSamples()
    hist = np.zeros(tokenizer.codebook_size, dtype=np.int64)
    stats_real = RunningStats(FIDInceptionV3.FEATURE_DIM) if inception is not None else None
    stats_fake = RunningStats(FIDInceptionV3.FEATURE_DIM) if inception is not None else None
    feats_real: list[torch.Tensor] = []
    feats_fake: list[torch.Tensor] = []
    psnrs: list[torch.Tensor] = []
    ssims: list[torch.Tensor] = []
    offsets: list[torch.Tensor] = []
    lpipss: list[torch.Tensor] = []
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    n = 0
    bar = Progress("eval", total=total, unit="img", enabled=progress)
    arrays = _decoded(source.samples(), size, tokenizer.downsample_factor, bad)
    for chunk in _batches(arrays, batch_size, limit):
        original_u8 = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8
        ids = tokenizer.encode(original_u8, size=None)  # (B, h, w)
        hist += token_histogram(ids, tokenizer.codebook_size)
        recon = tokenizer.decode(ids, output="pt").float()  # (B, 3, H, W) in [0, 1]
        if quantize:
            recon = torch.round(recon * 255) / 255
        original = original_u8.float() / 255
        psnrs.append(psnr(original, recon))
        ssims.append(ssim(original, recon))
        offsets.append(((recon.double() - original.double()) * 255).mean(dim=(2, 3)))  # (B, 3)
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
        n += len(chunk)
        bar.update(len(chunk))
    bar.close()

    if n == 0:
        reasons = "; ".join(f"{b['key']}: {b['reason']}" for b in bad.first[:3])
        raise ValueError(f"no readable images among the inputs ({bad.count} bad samples: {reasons})")
    if bad.count:
        logger.warning("%d sample(s) could not be read and were skipped (listed in the report)", bad.count)
    result = EvalResult(n=n, image_size=size, bad_samples=bad, histogram=hist)
    result.psnr = float(torch.cat(psnrs).mean())
    result.ssim = float(torch.cat(ssims).mean())
    per_image = torch.cat(offsets)  # (n, 3); images of one size: the image mean is the pixel mean
    result.color_offset = [round(float(v), 4) for v in per_image.mean(0)]
    result.abs_color_offset = [round(float(v), 4) for v in per_image.abs().mean(0)]
    if lpipss:
        result.lpips = float(torch.cat(lpipss).mean())
    result.usage = usage_from_histogram(hist)
    if inception is not None and stats_real is not None and stats_fake is not None:
        result.fid_preprocess = inception.preprocess
        if n >= 2:
            if n <= FID_FULL_RANK_N:  # exact low-rank form, same value, no 2048x2048 eigh
                result.rfid = fid_from_features(torch.cat(feats_real), torch.cat(feats_fake))
            else:
                result.rfid = frechet_distance(stats_real.stats(), stats_fake.stats())
            kid: KIDResult = kernel_inception_distance(
                torch.cat(feats_real), torch.cat(feats_fake), subsets=kid_subsets, subset_size=kid_subset_size
            )
            result.kid_mean, result.kid_std, result.kid_subset_size = kid.mean, kid.std, kid.subset_size
        else:
            result.skipped["rfid"] = result.skipped["kid"] = "needs at least 2 images"
        if n < FID_FULL_RANK_N:
            logger.warning(
                "rFID over n=%d < 2048 images: the covariance is singular and rFID is biased upwards; compare only at equal n", n
            )
    if grid_path is not None and pairs:
        save_grid(pairs, grid_path, columns=grid_columns)
    return result


# ---------------------------------------------------------------------- report
def _finite(x: float | None) -> float | str | None:
    """JSON has no inf/nan: write them as strings."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


def build_report(
    result: EvalResult,
    *,
    model: str,
    tokenizer: Any = None,
    data: Sequence[str] = (),
    outputs: dict[str, str | None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of ``vqtok eval`` (schema in docs/metrics.md)."""
    from vqtok import __version__

    usage = result.usage
    report: dict[str, Any] = {"model": model}
    if tokenizer is not None:
        report["config_hash"] = tokenizer.config.hash()
        report["codebook_size"] = int(tokenizer.codebook_size)
        report["downsample_factor"] = int(tokenizer.downsample_factor)
    report.update(
        {
            "data": [str(d) for d in data],
            "image_count": result.n,
            "size": result.image_size,
            "rfid": _finite(result.rfid),
            "rfid_n": result.n if result.rfid is not None else None,
            "kid_mean": _finite(result.kid_mean),
            "kid_std": _finite(result.kid_std),
            "kid_subset_size": result.kid_subset_size,
            "psnr": _finite(result.psnr),
            "ssim": _finite(result.ssim),
            "color_offset_rgb": result.color_offset,
            "abs_color_offset_rgb": result.abs_color_offset,
            "lpips": _finite(result.lpips),
            "skipped": dict(result.skipped),
        }
    )
    if result.rfid is not None and result.n < FID_FULL_RANK_N:
        report["rfid_note"] = (
            f"n={result.n} < 2048: singular covariances, rFID biased upwards; comparable only with rFIDs at the same n "
            "on the same images, not with published 50k ImageNet-val numbers"
        )
    report["codebook_usage"] = (
        {
            "codebook_size": usage.codebook_size,
            "total_tokens": usage.total_tokens,
            "used_codes": usage.used_codes,
            "used_fraction": usage.used_fraction,
            "perplexity": usage.perplexity,
            "entropy_bits": usage.entropy_bits,
            "max_entropy_bits": math.log2(usage.codebook_size),
            "dead_count": len(usage.dead_codes),
            "top_k": usage.top_k,
            "top_k_share": usage.top_k_share,
            "top_codes": usage.top_codes,
        }
        if usage is not None
        else None
    )
    report["weights"] = {
        "inception": result.inception_weights,
        "fid_preprocess": result.fid_preprocess,
        "lpips": result.lpips_weights,
    }
    report["bad_samples"] = result.bad_samples.to_dict()
    report["outputs"] = dict(outputs or {})
    report["vqtok_version"] = __version__
    report.update(extra or {})
    return report


def write_json(
    result: EvalResult | dict[str, Any], path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
) -> Path:
    """Write a result (or a ready report dict) as indented JSON, creating parent folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = result if isinstance(result, dict) else result.to_dict()
    payload = {**(extra or {}), **body}
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out
