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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vqtok.layout import DENSE_HISTOGRAM_MAX
from vqtok._errors import reason
from vqtok._io import atomic_write, sha256_file
from vqtok._runtime import actor_pool, ray_actors
from vqtok.metrics.fid import (
    FIDStats,
    RunningStats,
    fid_from_features,
    fid_to_stats,
    frechet_distance,
    kernel_inception_distance,
)
from vqtok.metrics.image import psnr, ssim
from vqtok.metrics.inception import FIDInceptionV3
from vqtok.metrics.lpips import LPIPS
from vqtok.metrics.protocols import PROTOCOLS, Protocol, get_protocol, image_list_sha256
from vqtok.metrics.usage import CodebookUsage, usage_from_histogram
from vqtok.tars import expand_shards, is_remote, is_shard, read_samples

logger = logging.getLogger(__name__)

__all__ = [
    "BadSamples",
    "ChunkResult",
    "DataSource",
    "EvalResult",
    "RayEvalOptions",
    "Sample",
    "ScoreOptions",
    "build_report",
    "evaluate_reconstruction",
    "image_set_stats",
    "load_reference_stats",
    "merge_chunks",
    "plan_chunks",
    "resolve_data",
    "save_grid",
    "save_side_by_side",
    "save_stats",
    "score_chunk",
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
    keys: list[str] = field(default_factory=list, repr=False)  # the images scored, in input order
    grid_pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)  # first (original, reconstruction)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("histogram", "keys", "grid_pairs"):
            d.pop(name, None)
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

    def samples(self) -> Iterator[Sample]:
        """Image files as they are; the samples of a WebDataset tar (plain or compressed) in tar order,
        keyed ``<shard name>:<key>``.

        A sample without an image field, or the unreadable rest of a truncated/corrupt tar (key
        ``<shard name>:<rest of shard>``), gives a :class:`Sample` with ``error`` set; reading then
        goes on with the next shard (see :func:`vqtok.tars.read_samples`).
        """
        for kind, path in self.items:
            if kind == "image":
                yield Sample(key=str(path), data=path)
                continue
            for s in read_samples(path):
                key = f"{path.name}:{s.key}"
                if s.error is not None:
                    yield Sample(key, None, s.error)
                elif s.image is None:
                    yield Sample(key, None, s.missing_image())
                else:
                    yield Sample(key, s.image)


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


def _decoded(
    samples: Iterable[Sample], options: Any, factor: int, skip: Callable[[str, str], Any]
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, uint8 (H, W, 3)) of each readable sample as ``options.protocol`` prepares it; ``skip(key, reason)`` of each bad one."""
    for s in samples:
        if s.error is not None:
            skip(s.key, s.error)
            continue
        try:
            assert s.data is not None
            arr = options.protocol.prepare(s.data, size=options.size)
            if options.size is None and (arr.shape[0] % factor or arr.shape[1] % factor):
                raise ValueError(
                    f"image size {arr.shape[1]}x{arr.shape[0]} is not a multiple of the downsample factor {factor} "
                    "(give a size to resize and center-crop)"
                )
            yield s.key, arr
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - any per-sample data problem is recorded, not fatal
            skip(s.key, reason(err, subject="image member"))


def _batches(
    arrays: Iterator[tuple[str, np.ndarray]], size: int, limit: int | None
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Consecutive images (with their keys) in batches of ``size`` (a batch is cut early where the image shape changes)."""
    keys: list[str] = []
    batch: list[np.ndarray] = []
    for taken, (key, arr) in enumerate(arrays, start=1):
        if batch and (len(batch) >= size or arr.shape != batch[0].shape):
            yield keys, batch
            keys, batch = [], []
        keys.append(key)
        batch.append(arr)
        if limit is not None and taken >= limit:
            break
    if batch:
        yield keys, batch


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
    h, w = (max(x.shape[axis] for pair in pairs for x in pair) for axis in (0, 1))
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


def save_side_by_side(
    originals: Sequence[np.ndarray],
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    path: str | os.PathLike[str],
    *,
    gap: int = 4,
    label_width: int = 180,
) -> Path:
    """PNG of the originals in the top row and each model's reconstructions in one row below, columns aligned.

    ``rows``: (label, reconstructions in the order of ``originals``); arrays are uint8 (H, W, 3). Each row
    starts with its label (``"original"`` for the top one) in a white column ``label_width`` pixels wide.
    """
    from PIL import ImageDraw, ImageFont

    if not originals:
        raise ValueError("no images for the picture")
    for label, recons in rows:
        if len(recons) != len(originals):
            raise ValueError(f"row {label!r} has {len(recons)} images for {len(originals)} originals")
    h, w = (max(a.shape[axis] for a in originals) for axis in (0, 1))
    cols, nrows = len(originals), 1 + len(rows)
    canvas = Image.new("RGB", (label_width + cols * (w + gap), nrows * h + (nrows - 1) * gap), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    for r, (label, images) in enumerate([("original", list(originals)), *rows]):
        top = r * (h + gap)
        words, lines, line = label.split(), [], ""
        for word in words:  # wrap the label to the column
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > label_width - 10:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
        draw.multiline_text((5, top + 5), "\n".join(lines), fill="black", font=font, spacing=3)
        for c, a in enumerate(images):
            canvas.paste(Image.fromarray(np.ascontiguousarray(a)), (label_width + c * (w + gap), top))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


# ---------------------------------------------------------------------- work units
# the per-image arrays of a ChunkResult; those after "offset" are None in a run without LPIPS / Inception / ids
_ARRAYS = ("psnr", "ssim", "offset", "lpips", "feats_real", "feats_fake", "ids", "ids_len")


@dataclass
class ChunkResult:
    """Per-image results of one work unit (a run of image files, or one shard), in input order.

    Everything the report needs is kept per image, so any split of the inputs into chunks, on any
    number of workers, merges (:func:`merge_chunks`) into the numbers of one process.
    """

    keys: list[str]
    psnr: np.ndarray  # (n,) float64
    ssim: np.ndarray  # (n,) float64
    offset: np.ndarray  # (n, 3) float64, reconstruction - original, 1/255
    lpips: np.ndarray | None = None  # (n,) float64
    feats_real: np.ndarray | None = None  # (n, 2048) float32
    feats_fake: np.ndarray | None = None
    ids: np.ndarray | None = None  # (sum of token counts,) int64, image after image
    ids_len: np.ndarray | None = None  # (n,) int64 tokens per image
    bad: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of every skipped sample
    grid: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # first (original, reconstruction) pairs

    @property
    def n(self) -> int:
        return len(self.keys)

    def take(self, m: int) -> ChunkResult:
        """The first ``m`` images (and the bad samples; those met after them are dropped too only when m < n)."""
        if m >= self.n:
            return self
        ends = {"ids": int(self.ids_len[:m].sum()) if self.ids_len is not None else 0, "bad": None}
        return replace(self, **{f.name: v[: ends.get(f.name, m)] for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def save(self, path: Path) -> None:
        """Write atomically (a killed run never leaves a half-written chunk)."""
        grid = {f"grid_{side}{i}": a for i, pair in enumerate(self.grid) for side, a in zip("or", pair)}
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(self.keys, dtype=str), **{k: v for k in _ARRAYS if (v := getattr(self, k)) is not None},
                     bad_keys=np.array([k for k, _ in self.bad], dtype=str), bad_reasons=np.array([r for _, r in self.bad], dtype=str),
                     grid_count=np.array(len(self.grid)), **grid)

    @classmethod
    def load(cls, path: Path) -> ChunkResult:
        with np.load(path, allow_pickle=False) as d:
            return cls(
                keys=[str(k) for k in d["keys"]], **{k: d[k] for k in _ARRAYS if k in d},
                bad=[(str(k), str(r)) for k, r in zip(d["bad_keys"], d["bad_reasons"])],
                grid=[(d[f"grid_o{i}"], d[f"grid_r{i}"]) for i in range(int(d["grid_count"]))],
            )


def plan_chunks(source: DataSource, chunk_size: int) -> list[list[tuple[str, Path]]]:
    """Work units in input order: runs of up to ``chunk_size`` image files, and each shard on its own."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks: list[list[tuple[str, Path]]] = []
    for item in source.items:
        if item[0] == "image" and chunks and chunks[-1][0][0] == "image" and len(chunks[-1]) < chunk_size:
            chunks[-1].append(item)
        else:
            chunks.append([item])
    return chunks


@dataclass(frozen=True)
class ScoreOptions:
    """How each chunk is scored (the same on every worker)."""

    protocol: Protocol
    size: int | None
    batch_size: int = 8
    quantize: bool = True
    grid_count: int = 8


def score_chunk(
    model: Any,
    items: Sequence[tuple[str, Path]],
    options: ScoreOptions,
    *,
    inception: FIDInceptionV3 | None = None,
    lpips_model: LPIPS | None = None,
    limit: int | None = None,
    on_images: Any = None,
    real_features: dict[str, np.ndarray] | None = None,
) -> ChunkResult:
    """Reconstruct and score the images of one work unit; ``limit`` stops after that many good images.

    ``real_features``: Inception features of originals by key, used when present and filled otherwise
    (several models scored on the same images compute the originals' features once).
    """
    bad_all: list[tuple[str, str]] = []  # merge_chunks logs them
    keys: list[str] = []
    grid: list[tuple[np.ndarray, np.ndarray]] = []
    f64 = torch.float64
    # a zero-row tensor of every per-image column this run records (a chunk without good images gives these)
    empty = {"psnr": torch.zeros(0, dtype=f64), "ssim": torch.zeros(0, dtype=f64), "offset": torch.zeros(0, 3, dtype=f64)}
    if lpips_model is not None:
        empty["lpips"] = torch.zeros(0, dtype=f64)
    if inception is not None:
        empty["feats_real"] = empty["feats_fake"] = torch.zeros(0, FID_FULL_RANK_N)
    codec = hasattr(model, "reconstruct_batch")  # else a tokenizer: its ids too
    if not codec:
        empty["ids"] = empty["ids_len"] = torch.zeros(0, dtype=torch.int64)
    columns: list[dict[str, torch.Tensor]] = []  # per batch
    factor = int(getattr(model, "downsample_factor", 1))
    arrays = _decoded(DataSource(list(items)).samples(), options, factor, lambda key, why: bad_all.append((key, why)))
    for batch_keys, chunk in _batches(arrays, options.batch_size, limit):
        original_u8 = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8
        if codec:  # (None, reconstructions float (B, 3, H, W) in [0, 1])
            ids, recon = model.reconstruct_batch(original_u8)
        else:
            ids = model.encode(original_u8, size=None)  # (B, h, w)
            recon = model.decode(ids, output="pt").float()  # (B, 3, H, W) in [0, 1]
        if options.quantize:
            recon = torch.round(recon * 255) / 255
        original = original_u8.float() / 255
        col = {"psnr": psnr(original, recon), "ssim": ssim(original, recon),
               "offset": ((recon.double() - original.double()) * 255).mean(dim=(2, 3))}  # (B,), (B,), (B, 3)
        if lpips_model is not None:
            col["lpips"] = lpips_model(original, recon).cpu().double()
        if inception is not None:
            device = next(inception.parameters()).device
            if real_features is not None and all(k in real_features for k in batch_keys):
                col["feats_real"] = torch.from_numpy(np.stack([real_features[k] for k in batch_keys]))
            else:
                col["feats_real"] = inception(original.to(device)).cpu()  # (B, 2048)
                if real_features is not None:
                    real_features.update(zip(batch_keys, col["feats_real"].numpy()))
            col["feats_fake"] = inception(recon.to(device)).cpu()
        if ids is not None:
            col["ids"] = ids.reshape(-1).cpu().long()  # image after image
            col["ids_len"] = torch.full((len(chunk),), ids[0].numel())
        columns.append(col)
        for o, r in zip(original_u8, recon):
            if len(grid) >= options.grid_count:
                break
            grid.append((o.permute(1, 2, 0).numpy(), (r * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()))
        keys += batch_keys
        if on_images is not None:
            on_images(len(chunk))
    return ChunkResult(keys=keys, bad=bad_all, grid=grid,
                       **{k: torch.cat([e, *(c[k] for c in columns)]).numpy() for k, e in empty.items()})


# ---------------------------------------------------------------------- reference statistics
def stats_of_features(features: np.ndarray | torch.Tensor, step: int = 1000) -> FIDStats:
    """FID statistics of (N, D) features, accumulated in fixed slices (the same numbers however they were computed)."""
    f = torch.as_tensor(features)
    rs = RunningStats(f.shape[1])
    for i in range(0, f.shape[0], step):
        rs.update(f[i : i + step])
    return rs.stats()


def _features(inception: FIDInceptionV3, images: np.ndarray) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> their Inception pool features (B, 2048) on the CPU."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return inception(x.to(next(inception.parameters()).device)).cpu()


def load_reference_stats(
    path: str | os.PathLike[str], *, inception: FIDInceptionV3 | None = None, batch_size: int = 50
) -> tuple[FIDStats, dict[str, Any]]:
    """Reference statistics from an ``.npz``: vqtok's (``--save-stats``), pytorch-fid's (``mu``, ``sigma``) or
    an ADM reference batch (``mu``, ``sigma``; a batch of only ``arr_0`` images has its statistics computed with
    ``inception``). Returns the statistics and what the card records about them."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"reference statistics {file} do not exist")
    info: dict[str, Any] = {"path": str(file), "sha256": sha256_file(file)}
    try:
        with np.load(file, allow_pickle=False) as d:
            names = set(d.files)
            meta = json.loads(str(d["vqtok_meta"])) if "vqtok_meta" in names else {}
            arr = d["arr_0"] if "arr_0" in names and "mu" not in names else None
    except (ValueError, OSError) as err:
        raise ValueError(f"{file} is not an .npz of FID statistics: {err}") from err
    if "mu" in names and "sigma" in names:
        stats = FIDStats.load(str(file))
        info["format"] = "vqtok" if meta else ("adm" if "arr_0" in names or "mu_s" in names else "pytorch-fid")
        info.update({k: meta[k] for k in ("protocol", "size", "fid_preprocess", "inception_sha256", "image_list_sha256") if k in meta})
    elif arr is not None:
        if inception is None:
            raise ValueError(f"{file} holds images (arr_0) but no mu/sigma; their statistics need the FID Inception")
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{file}: arr_0 must be uint8 (N, H, W, 3) images, got {arr.dtype} {arr.shape}")
        stats = stats_of_features(torch.cat([_features(inception, arr[i : i + batch_size]) for i in range(0, len(arr), batch_size)]))
        info.update({"format": "adm-images", "fid_preprocess": inception.preprocess})
    else:
        raise ValueError(f"{file} has neither mu/sigma nor arr_0 (keys: {', '.join(sorted(names))})")
    if stats.mean.shape != (FIDInceptionV3.FEATURE_DIM,) or stats.cov.shape != (FIDInceptionV3.FEATURE_DIM,) * 2:
        raise ValueError(f"{file}: mu/sigma of shape {tuple(stats.mean.shape)}/{tuple(stats.cov.shape)}, expected 2048-d pool features")
    info["n"] = stats.n if stats.n > 0 else None
    return stats, info


def image_set_stats(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    inception: FIDInceptionV3,
    *,
    protocol: Protocol | None = None,
    size: int | None = None,
    batch_size: int = 50,
    limit: int | None = None,
) -> tuple[FIDStats, dict[str, Any]]:
    """FID statistics of an image set (folder, files, globs, shards; :func:`resolve_data`) prepared by ``protocol``
    (default ``vqtok``; ``size`` None keeps the images' sizes) and what the card records (n, image-list sha256)."""
    options = ScoreOptions(protocol=protocol or PROTOCOLS["vqtok"], size=size)
    bad = BadSamples()
    keys: list[str] = []
    feats: list[torch.Tensor] = []
    for batch_keys, batch in _batches(_decoded(resolve_data(spec).samples(), options, 1, bad.add), batch_size, limit):
        feats.append(_features(inception, np.stack(batch)))
        keys += batch_keys
    if len(keys) < 2:
        raise ValueError(f"{spec}: FID statistics need at least 2 readable images, got {len(keys)}")
    stats = stats_of_features(torch.cat(feats))
    return stats, {"n": stats.n, "image_list_sha256": image_list_sha256(keys), "bad_samples": bad.count}


def save_stats(stats: FIDStats, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write ``mu``, ``sigma`` (pytorch-fid's keys, readable by pytorch-fid and ADM's evaluator), ``n`` and
    ``vqtok_meta`` (JSON: protocol, size, FID preprocessing, Inception sha256, image-list sha256)."""
    out = Path(path).expanduser()
    with atomic_write(out) as tmp, open(tmp, "wb") as fh:
        stats.save(fh, vqtok_meta=np.array(json.dumps(meta, sort_keys=True)))
    return out


# ---------------------------------------------------------------------- merge
def merge_chunks(
    chunks: Sequence[ChunkResult],
    *,
    size: int | None,
    codebook_size: int | None,
    limit: int | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    reference: FIDStats | None = None,
) -> tuple[EvalResult, ChunkResult]:
    """One :class:`EvalResult` from chunk results in input order (the first ``limit`` images), and the merged per-image data."""
    kept: list[ChunkResult] = []
    n = 0
    for c in chunks:
        if limit is not None:
            if n >= limit:
                break
            c = c.take(limit - n)
        kept.append(c)
        n += c.n
    bad = BadSamples()
    for c in kept:
        for key, why in c.bad:
            bad.add(key, why)
    if n == 0:
        reasons = "; ".join(f"{b['key']}: {b['reason']}" for b in bad.first[:3])
        raise ValueError(f"no readable images among the inputs ({bad.count} bad samples: {reasons})")

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(c, name) for c in kept]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    merged = ChunkResult(
        keys=[k for c in kept for k in c.keys], **{name: cat(name) for name in _ARRAYS},  # type: ignore[arg-type]
        bad=[b for c in kept for b in c.bad], grid=[g for c in kept for g in c.grid],
    )
    hist = None
    # a dense count per code; bitwise / huge codebooks (over 2**20 codes) are counted per bit by `vqtok usage`
    if codebook_size is not None and codebook_size <= DENSE_HISTOGRAM_MAX and merged.ids is not None:
        hist = np.bincount(merged.ids, minlength=codebook_size).astype(np.int64)
    mean = {k: float(torch.from_numpy(v).mean()) for k in ("psnr", "ssim", "lpips") if (v := getattr(merged, k)) is not None}
    per_image = torch.from_numpy(merged.offset)  # (n, 3); images of one size: the image mean is the pixel mean
    color_offset, abs_color_offset = ([round(float(v), 4) for v in t.mean(0)] for t in (per_image, per_image.abs()))
    result = EvalResult(n=n, image_size=size, bad_samples=bad, histogram=hist, **mean, color_offset=color_offset,
                        abs_color_offset=abs_color_offset, usage=usage_from_histogram(hist) if hist is not None else None)
    if merged.feats_real is not None and merged.feats_fake is not None:
        fr, ff = torch.from_numpy(merged.feats_real), torch.from_numpy(merged.feats_fake)
        if n >= 2:
            if reference is not None:
                result.rfid = fid_to_stats(reference, ff)
            elif n <= FID_FULL_RANK_N:  # exact low-rank form, same value, no 2048x2048 eigh
                result.rfid = fid_from_features(fr, ff)
            else:
                result.rfid = frechet_distance(stats_of_features(fr), stats_of_features(ff))
            kid = kernel_inception_distance(fr, ff, subsets=kid_subsets, subset_size=kid_subset_size)
            result.kid_mean, result.kid_std, result.kid_subset_size = kid.mean, kid.std, kid.subset_size
        else:
            result.skipped["rfid"] = result.skipped["kid"] = "needs at least 2 images"
        if n < FID_FULL_RANK_N and reference is None:
            logger.warning(
                "rFID over n=%d < 2048 images: the covariance is singular and rFID is biased upwards; compare only at equal n", n
            )
    if bad.count:
        logger.warning("%d sample(s) could not be read and were skipped (listed in the report)", bad.count)
    return result, merged


# ---------------------------------------------------------------------- runs: resumable, on ranks or on Ray
STATE_NAME = "eval-state.json"


def _chunk_path(state_dir: Path, i: int) -> Path:
    return state_dir / f"chunk-{i:06d}.npz"


def _open_state(state_dir: Path, identity: dict[str, Any]) -> None:
    """Create ``state_dir`` for this run, or check that it holds the same run (else ValueError)."""
    path = state_dir / STATE_NAME
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff:
            raise ValueError(f"{state_dir} holds another evaluation (it differs in {', '.join(diff)}); "
                             "give another state folder or delete it")
        return
    try:
        with atomic_write(path, owner="state") as tmp:
            tmp.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
    except FileExistsError:  # another rank wrote it first
        pass


@dataclass(frozen=True)
class RayEvalOptions:
    """Where :func:`evaluate_reconstruction` runs with ``engine="ray"``."""

    address: str | None = None  # a running cluster ("auto"); None: $RAY_ADDRESS or a local Ray
    num_actors: int | None = None  # scorers (default: GPUs / num_gpus, else CPUs / num_cpus)
    num_gpus: float = 0.0  # GPUs per actor
    num_cpus: float = 1.0  # CPUs per actor
    threads: int = 0  # torch threads per actor (0: torch's default)
    max_retries: int = 2


class ChunkScorer:
    """A Ray actor: the model and the metric networks, loaded once, scoring whole chunks on request."""

    def __init__(self, model: Any, options: ScoreOptions, inception: Any, lpips_model: Any, device: str, threads: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model, self.options = model, options
        if hasattr(model, "to") and not hasattr(model, "reconstruct_batch"):
            model.to(device)
        self.inception, self.lpips = (m.to(device) if m is not None else None for m in (inception, lpips_model))

    def score(self, items: list[tuple[str, Path]]) -> ChunkResult:
        return score_chunk(self.model, items, self.options, inception=self.inception, lpips_model=self.lpips)


def evaluate_reconstruction(
    tokenizer: Any,
    data: DataSource | Sequence[Path | str],
    *,
    size: int | None = 256,
    protocol: Protocol | str | None = None,
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
    reference_stats: FIDStats | None = None,
    save_stats_path: str | os.PathLike[str] | None = None,
    stats_meta: dict[str, Any] | None = None,
    chunk_size: int = 256,
    state_dir: str | os.PathLike[str] | None = None,
    state_identity: dict[str, Any] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    engine: str = "local",
    ray_options: RayEvalOptions | None = None,
    poll_seconds: float = 2.0,
    real_features: dict[str, np.ndarray] | None = None,
) -> EvalResult | None:
    """Encode+decode every image and score the reconstructions against the originals.

    ``data`` is a :class:`DataSource` (see :func:`resolve_data`) or a list of image paths.
    Originals are the images as ``protocol`` prepares them (default ``"vqtok"``: shorter side resized
    to ``size``, center crop). With ``quantize`` (default) reconstructions are rounded to uint8 first,
    so the numbers equal those of tools run on the saved PNGs. Unreadable samples are skipped and
    listed in ``result.bad_samples``. ``limit`` counts good images. ``reference_stats``: compute rFID
    against these statistics instead of the originals'; ``save_stats_path``: write the originals'
    statistics there (:func:`save_stats`, with ``stats_meta``).

    The inputs are cut into work units (runs of ``chunk_size`` image files, or one shard each) whose
    per-image results merge exactly (:func:`merge_chunks`), so the report does not depend on how the
    units are spread. ``state_dir`` keeps each finished unit (``chunk-NNNNNN.npz``): a killed run
    started again with the same arguments skips them and gives the same report. ``rank`` /
    ``world_size`` (default $RANK / $WORLD_SIZE, as under torchrun) share the units among processes
    (unit i on rank i % world_size, all writing into the same ``state_dir``); rank 0 waits for the
    others, merges and returns the result, the other ranks return None. ``engine="ray"`` scores the
    units on Ray actors (:class:`RayEvalOptions`) and merges on this process. ``real_features``: a dict
    shared by the runs of several models on the same images (see :func:`score_chunk`).
    """
    from vqtok._progress import Progress
    from vqtok.pipeline.driver import resolve_rank

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    proto = get_protocol(protocol) if isinstance(protocol, str) else (protocol or PROTOCOLS["vqtok"])
    source = data if isinstance(data, DataSource) else DataSource([("image", Path(p)) for p in data])
    if not source.items:
        raise ValueError("no images to evaluate")
    rank, world_size = resolve_rank(rank, world_size) if engine == "local" else (0, 1)
    folder = Path(state_dir).expanduser() if state_dir is not None else None
    if world_size > 1 and folder is None:
        raise ValueError(f"{world_size} ranks need a state folder that all of them share (state_dir / --state-dir)")
    options = ScoreOptions(protocol=proto, size=size, batch_size=batch_size, quantize=quantize, grid_count=grid_count)
    chunks = plan_chunks(source, chunk_size)
    if folder is not None:
        _open_state(folder, {**(state_identity or {}), "protocol": proto.name, "size": size, "batch_size": batch_size,
                             "quantize": quantize, "chunk_size": chunk_size, "limit": limit, "inputs": [f"{k}:{p}" for k, p in source.items],
                             "inception": inception is not None, "lpips": lpips_model is not None,
                             "fid_preprocess": inception.preprocess if inception is not None else None})

    # the units to score up front: with a limit over image files, those that can hold the first `limit` images
    first = list(range(len(chunks)))
    if limit is not None:
        covered, first = 0, []
        for i, c in enumerate(chunks):
            first.append(i)
            covered += len(c) if c[0][0] == "image" else limit
            if covered >= limit:
                break
    results: dict[int, ChunkResult] = {}
    done = {i for i in first if folder is not None and _chunk_path(folder, i).is_file()}
    if done and rank == 0:
        logger.info("resuming: %d of %d unit(s) already scored in %s", len(done), len(first), folder)
    mine = [i for i in first if i % world_size == rank and i not in done]
    total = min(sum(len(chunks[i]) for i in mine), limit or math.inf) if all(chunks[i][0][0] == "image" for i in mine) else None
    on_ray = engine == "ray" and bool(mine)
    bar = (Progress("eval (ray)", total=len(mine), unit="unit", enabled=progress) if on_ray
           else Progress("eval", total=total, unit="img", enabled=progress and rank == 0))

    def keep(i: int, chunk: ChunkResult) -> None:
        if folder is not None:
            chunk.save(_chunk_path(folder, i))
        results[i] = chunk

    def score(i: int, room: int | None) -> None:
        keep(i, score_chunk(tokenizer, chunks[i], options, inception=inception, lpips_model=lpips_model,
                            limit=room, on_images=bar.update, real_features=real_features))

    def scored() -> int:
        return sum(c.n for c in results.values())

    if on_ray:
        try:
            import ray
        except ImportError as err:  # pragma: no cover - exercised only without the extra
            raise ImportError('engine="ray" needs Ray: pip install "vqtok[ray]"') from err
        ropts = ray_options or RayEvalOptions()
        refs = [ray.put(x) for x in (tokenizer, inception, lpips_model)]
        args = (refs[0], options, refs[1], refs[2], "cuda" if ropts.num_gpus > 0 else "cpu", ropts.threads)
        with ray_actors(ray, ChunkScorer, args, ropts, work=len(mine), num_cpus=ropts.num_cpus) as actors:
            for i, ref in actor_pool(ray, actors, mine, lambda actor, i: actor.score.remote(chunks[i])):
                keep(i, ray.get(ref))  # a chunk that failed every retry raises here
                bar.update(1)
    else:
        for i in mine:  # in order: `results` holds the units before i
            room = None if limit is None or world_size > 1 else limit - scored()
            if room is not None and room <= 0:
                break
            score(i, room)
    bar.close()
    if rank != 0:
        logger.info("rank %d of %d: %d unit(s) scored into %s; rank 0 writes the report", rank, world_size, len(mine), folder)
        return None
    if folder is not None:
        # block until every unit exists (other ranks write them), logging what is missing every 60 s
        last = time.monotonic()
        while missing := [p for i in first if not (p := _chunk_path(folder, i)).is_file()]:
            if time.monotonic() - last > 60:
                logger.info("waiting for %d chunk(s) of %s from the other ranks (e.g. %s)", len(missing), folder, missing[0].name)
                last = time.monotonic()
            time.sleep(poll_seconds)
        for i in first:
            if i not in results:
                results[i] = ChunkResult.load(_chunk_path(folder, i))
    # bad samples among the first units: score further units here until the limit is reached
    nxt = len(first)
    while limit is not None and scored() < limit and nxt < len(chunks):
        if folder is not None and _chunk_path(folder, nxt).is_file():
            results[nxt] = ChunkResult.load(_chunk_path(folder, nxt))
        else:
            score(nxt, limit - scored())
        nxt += 1
    result, merged = merge_chunks(
        [results[i] for i in sorted(results)], size=size, codebook_size=getattr(tokenizer, "codebook_size", None), limit=limit,
        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, reference=reference_stats,
    )
    result.keys = merged.keys
    result.grid_pairs = merged.grid[:grid_count]
    if inception is not None:
        result.fid_preprocess = inception.preprocess
    if save_stats_path is not None:
        if merged.feats_real is None or result.n < 2:
            raise ValueError("saving statistics needs the FID Inception and at least 2 images")
        meta = {**(stats_meta or {}), "n": result.n, "image_list_sha256": image_list_sha256(result.keys)}
        save_stats(stats_of_features(merged.feats_real), save_stats_path, meta)
    if grid_path is not None and result.grid_pairs:
        save_grid(result.grid_pairs, grid_path, columns=grid_columns)
    return result


# ---------------------------------------------------------------------- report
def _finite(x: float | None) -> float | str | None:
    """JSON has no inf/nan: write them as strings."""
    return x if x is None or math.isfinite(x) else str(x)


def build_report(
    result: EvalResult,
    *,
    model: str,
    tokenizer: Any = None,
    data: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of ``vqtok eval`` (schema in docs/metrics.md)."""
    from vqtok import __version__

    usage = result.usage
    report: dict[str, Any] = {"model": model}
    if tokenizer is not None:
        report.update(config_hash=tokenizer.config.hash(), codebook_size=int(tokenizer.codebook_size),
                      downsample_factor=int(tokenizer.downsample_factor))
    report.update({
        "data": [str(d) for d in data], "image_count": result.n, "size": result.image_size,
        "rfid": _finite(result.rfid), "rfid_n": result.n if result.rfid is not None else None,
        "kid_mean": _finite(result.kid_mean), "kid_std": _finite(result.kid_std), "kid_subset_size": result.kid_subset_size,
        "psnr": _finite(result.psnr), "ssim": _finite(result.ssim),
        "color_offset_rgb": result.color_offset, "abs_color_offset_rgb": result.abs_color_offset,
        "lpips": _finite(result.lpips), "skipped": dict(result.skipped),
    })
    if result.rfid is not None and result.n < FID_FULL_RANK_N:
        report["rfid_note"] = (
            f"n={result.n} < 2048: singular covariances, rFID biased upwards; comparable only with rFIDs at the same n "
            "on the same images, not with published 50k ImageNet-val numbers"
        )
    report["codebook_usage"] = None if usage is None else {
        "codebook_size": usage.codebook_size, "total_tokens": usage.total_tokens, "used_codes": usage.used_codes,
        "used_fraction": usage.used_fraction, "perplexity": usage.perplexity, "entropy_bits": usage.entropy_bits,
        "max_entropy_bits": math.log2(usage.codebook_size), "dead_count": len(usage.dead_codes), "top_k": usage.top_k,
        "top_k_share": usage.top_k_share, "top_codes": usage.top_codes,
    }
    report["weights"] = {"inception": result.inception_weights, "fid_preprocess": result.fid_preprocess,
                         "lpips": result.lpips_weights}
    report.update(bad_samples=result.bad_samples.to_dict(), outputs={}, vqtok_version=__version__)
    report.update(extra or {})
    return report


def write_json(result: EvalResult | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a result (or a ready report dict) as indented JSON, creating parent folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = result if isinstance(result, dict) else result.to_dict()
    out.write_text(json.dumps(body, indent=2, default=str) + "\n")
    return out
