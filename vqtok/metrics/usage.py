"""Codebook usage statistics of a token stream or of pretokenization histograms."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CodebookUsage", "LayoutUsage", "codebook_usage", "merge_histograms", "read_histograms", "read_layout_usage", "token_histogram",
]


@dataclass(frozen=True)
class CodebookUsage:
    """How a token corpus uses a codebook of ``codebook_size`` entries."""

    codebook_size: int
    total_tokens: int
    used_codes: int
    used_fraction: float  # used_codes / codebook_size
    perplexity: float  # exp(entropy in nats) = 2 ** entropy_bits; codebook_size when uniform
    entropy_bits: float  # Shannon entropy of the code distribution, base 2
    dead_codes: list[int] = field(repr=False)  # ids never used, ascending
    top_k: int = 10
    top_k_share: float = 0.0  # fraction of all tokens taken by the top_k most frequent codes
    top_codes: list[int] = field(default_factory=list)  # the top_k most frequent ids, most frequent first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"tokens {self.total_tokens}  codebook {self.codebook_size}  used {self.used_codes} "
            f"({100 * self.used_fraction:.2f}%)  perplexity {self.perplexity:.2f}  entropy {self.entropy_bits:.4f} bits  "
            f"dead {len(self.dead_codes)}  top-{self.top_k} share {100 * self.top_k_share:.2f}%"
        )


def token_histogram(ids: torch.Tensor | np.ndarray | Iterable[Any], codebook_size: int) -> np.ndarray:
    """Count each id in ``ids`` (any shape, or an iterable of such chunks) -> int64 (codebook_size,)."""
    if codebook_size <= 0:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    hist = np.zeros(codebook_size, dtype=np.int64)
    chunks: Iterable[Any] = [ids] if isinstance(ids, (torch.Tensor, np.ndarray)) else ids
    for chunk in chunks:
        arr = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        if arr.size == 0:
            continue
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        flat = arr.reshape(-1).astype(np.int64)
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= codebook_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the codebook [0, {codebook_size})")
        hist += np.bincount(flat, minlength=codebook_size)
    return hist


def merge_histograms(histograms: Iterable[Sequence[int] | np.ndarray], codebook_size: int | None = None) -> np.ndarray:
    """Sum per-shard histograms (all the same length) -> int64 (codebook_size,)."""
    total: np.ndarray | None = None
    for h in histograms:
        arr = np.asarray(h, dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError(f"a histogram must be 1-d, got shape {arr.shape}")
        if (arr < 0).any():
            raise ValueError("a histogram has negative counts")
        if total is None:
            total = arr.copy()
        elif arr.shape != total.shape:
            raise ValueError(f"histograms of different lengths: {arr.shape[0]} vs {total.shape[0]}")
        else:
            total += arr
    if total is None:
        raise ValueError("no histograms to merge")
    if codebook_size is not None and total.shape[0] != codebook_size:
        raise ValueError(f"histogram length {total.shape[0]} != codebook_size {codebook_size}")
    return total


def read_histograms(directory: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Merge the ``"histogram"`` of every ``*.json`` in ``directory`` (pretokenization side files).

    Returns ``(histogram (codebook_size,), number of files merged)``. JSON files without a
    ``"histogram"`` key are skipped; a disagreeing ``"codebook_size"`` is an error.
    """
    hists: list[np.ndarray] = []
    for path, data in _stats_files(directory):
        hist = np.asarray(data["histogram"], dtype=np.int64)
        declared = data.get("codebook_size")
        if declared is not None and int(declared) != hist.shape[0]:
            raise ValueError(f"{path}: codebook_size {declared} but histogram has {hist.shape[0]} entries")
        if hists and hist.shape[0] != hists[0].shape[0]:
            raise ValueError(f"{path}: histogram of {hist.shape[0]} codes, other shards have {hists[0].shape[0]}")
        hists.append(hist)
    logger.info("merged histograms of %d shards from %s", len(hists), directory)
    return merge_histograms(hists), len(hists)


def codebook_usage(
    ids_or_histogram: torch.Tensor | np.ndarray | Sequence[int] | Iterable[Any],
    codebook_size: int,
    *,
    is_histogram: bool | None = None,
    top_k: int = 10,
) -> CodebookUsage:
    """Usage statistics of a codebook.

    ``ids_or_histogram`` is either token ids (a tensor/array of any shape, or an iterable of
    such chunks, e.g. a stream of batches) or a histogram of counts of length
    ``codebook_size``. A 1-d input of length ``codebook_size`` is ambiguous; pass
    ``is_histogram`` explicitly then (it defaults to *ids* for tensors and arrays of
    integer ids, and to *histogram* for a plain list/tuple of that length).
    """
    if is_histogram is None:
        is_histogram = isinstance(ids_or_histogram, (list, tuple)) and len(ids_or_histogram) == codebook_size and all(
            not isinstance(v, (list, tuple, np.ndarray, torch.Tensor)) for v in ids_or_histogram
        )
    if is_histogram:
        src = ids_or_histogram
        hist = merge_histograms([src.detach().cpu() if isinstance(src, torch.Tensor) else src], codebook_size)
    else:
        hist = token_histogram(ids_or_histogram, codebook_size)
    return usage_from_histogram(hist, top_k=top_k)


def usage_from_histogram(hist: np.ndarray, *, top_k: int = 10) -> CodebookUsage:
    """Statistics of an int histogram (codebook_size,)."""
    size = int(hist.shape[0])
    total = int(hist.sum())
    if total == 0:
        raise ValueError("no tokens: the histogram is all zeros")
    used = int((hist > 0).sum())
    p = hist[hist > 0].astype(np.float64) / total
    entropy_nats = float(-(p * np.log(p)).sum())
    k = max(1, min(int(top_k), size))
    order = np.argsort(-hist, kind="stable")[:k]  # ties broken by the lower id
    return CodebookUsage(
        codebook_size=size, total_tokens=total, used_codes=used, used_fraction=used / size,
        perplexity=math.exp(entropy_nats), entropy_bits=entropy_nats / math.log(2.0),
        dead_codes=np.flatnonzero(hist == 0).tolist(), top_k=k, top_k_share=float(hist[order].sum()) / total,
        top_codes=order.tolist(),
    )


@dataclass(frozen=True)
class LayoutUsage:
    """Usage of a token corpus by its layout: overall, per sub-codebook and per scale where it has them.

    ``rows``: one :class:`CodebookUsage` per sub-codebook (dense codebooks), or per bit (bitwise ids:
    a 2-code "codebook" each, so ``perplexity`` 2 means a balanced bit). ``scales``: for multi-scale
    layouts, the usage at each scale (sub-codebooks merged).
    """

    layout: dict[str, Any] | None  # TokenLayout.to_dict(); None for shards written before layouts
    overall: CodebookUsage  # every row merged (dense layouts: all sub-codebooks share the code axis)
    rows: list[CodebookUsage]
    scales: list[CodebookUsage]
    shards: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.shards, "layout": self.layout, **self.overall.to_dict(),
            **({"per_row": [r.to_dict() for r in self.rows]} if len(self.rows) > 1 else {}),
            **({"per_scale": [r.to_dict() for r in self.scales]} if self.scales else {}),
        }


def _read_json_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return data if isinstance(data, dict) else None


def _stats_files(directory: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """(path, content) of each ``*.json`` in ``directory`` that has a ``"histogram"`` (pretokenize's side files), by name."""
    folder = Path(directory)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder of token shards")
    found = [(p, d) for p in sorted(folder.glob("*.json")) if (d := _read_json_dict(p)) is not None and "histogram" in d]
    if not found:
        raise FileNotFoundError(f"no *.json with a 'histogram' key in {folder} (pretokenize writes them beside each shard)")
    return found


def _int_array(value: Any, path: Path, key: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{path}: {key!r} is not an array of integers") from None
    if arr.ndim not in (1, 2, 3) or (arr < 0).any():
        raise ValueError(f"{path}: {key!r} must hold non-negative counts, got shape {arr.shape}")
    return arr


def read_layout_usage(directory: str | os.PathLike[str], *, top_k: int = 10) -> LayoutUsage:
    """Usage of the token shards in ``directory`` from their stats .json files, by the recorded layout.

    Shards written before layouts (a flat ``"histogram"``) read as one grid codebook. Shards that
    disagree on the layout or the histogram shape are a ValueError.
    """
    total: np.ndarray | None = None
    scales: np.ndarray | None = None
    files = _stats_files(directory)
    layout: dict[str, Any] | None = files[0][1].get("layout")
    for path, data in files:
        hist = _int_array(data["histogram"], path, "histogram")
        hist = hist[None] if hist.ndim == 1 else hist  # (rows, codes)
        if data.get("layout") != layout:
            raise ValueError(f"{path}: token layout {data.get('layout')} differs from the other shards' {layout}")
        if total is not None and hist.shape != total.shape:
            raise ValueError(f"{path}: histogram of shape {hist.shape}, other shards have {total.shape}")
        total = hist if total is None else total + hist
        if "scale_histograms" in data:
            sh = _int_array(data["scale_histograms"], path, "scale_histograms")
            sh = sh[:, None] if sh.ndim == 2 else sh  # (scales, rows, codes)
            if scales is not None and sh.shape != scales.shape:
                raise ValueError(f"{path}: scale histograms of shape {sh.shape}, other shards have {scales.shape}")
            scales = sh if scales is None else scales + sh
    assert total is not None
    rows = [usage_from_histogram(r, top_k=top_k) for r in total]
    per_scale = [usage_from_histogram(s.sum(axis=0), top_k=top_k) for s in scales] if scales is not None else []
    return LayoutUsage(layout=layout, overall=usage_from_histogram(total.sum(axis=0), top_k=top_k), rows=rows,
                       scales=per_scale, shards=len(files))
