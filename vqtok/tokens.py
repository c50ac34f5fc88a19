"""The token-shard format: what ``vqtok pretokenize`` writes and the prior reads (writer, stats, reader).

Shard format: tar files, one sample per image, in input order, members

* ``<key>.ids.npy`` – ``np.save`` of the (h, w) codebook ids (:func:`ids_dtype_for`: uint16 when the
  codebook has ≤ 65536 entries, else int32);
* ``<key>.cls`` – optional ASCII integer class label;
* ``<key>.txt`` / ``<key>.json`` – optional caption / metadata, byte for byte from the input.

Members have fixed metadata (mtime 0, mode 0444, uid/gid 0), so the same input and model give
byte-identical shards. Beside each shard ``<name>.tar`` a ``<name>.json`` (:func:`stats_path_for`)
holds its :class:`ShardStats` (``format`` :data:`FORMAT`, samples written and failed, code
histogram, ...); it is written last and marks the shard complete. :class:`TokenShardWriter`
writes both under temporary names (:func:`vqtok._io.atomic_write`).

**Labels**: an ``int``; ``-1`` (:data:`NO_LABEL`) when the sample has no ``.cls`` member (the prior
treats -1 as "no class", i.e. the null class token).

Two ways to read:

* :func:`token_dataset` – a streaming ``webdataset`` pipeline (an ``IterableDataset``)
  yielding ``(ids, label)`` with ``ids`` a (h, w) int64 tensor and ``label`` an int, or dicts
  with ``as_dict=True``. Shards are split across nodes (``RANK``/``WORLD_SIZE`` or the
  initialised process group, via ``wds.split_by_node``) and across ``DataLoader`` workers
  (``wds.split_by_worker``); with ``resampled=True`` every node/worker instead draws
  shards with replacement from its own seeded stream (infinite; cut it into epochs with
  ``epoch_length``), which is what DDP training wants (equal-length streams, no hangs).
  Without resampling, give at least ``world_size × num_workers`` shards.
* :func:`load_token_corpus` – all samples in memory (ids of a 16×16 grid take 512 bytes as
  uint16, so ImageNet fits in ~650 MB); what ``vqtok train-prior`` uses, because batches
  drawn by index from a seeded generator make resuming exact.

Both read tars with :func:`vqtok.tars.read_samples`; a damaged token shard is an error (it is our
own output: re-run ``pretokenize`` to redo it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqtok._errors import is_int
from vqtok._io import atomic_write
from vqtok.layout import TokenLayout
from vqtok.tars import expand_shards, is_remote, read_samples

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KEEP",
    "FORMAT",
    "NO_LABEL",
    "ShardStats",
    "TokenCorpus",
    "TokenShardWriter",
    "decode_token_sample",
    "ids_dtype_for",
    "load_token_corpus",
    "read_shard_stats",
    "stats_path_for",
    "token_dataset",
]

FORMAT = "vqtok-token-shard/1"
DEFAULT_KEEP: tuple[str, ...] = ("cls", "txt", "json")  # input fields copied into token shards
NO_LABEL = -1  # label of samples without a .cls member


# ---------------------------------------------------------------------- names and stats
def ids_dtype_for(codebook_size: int) -> np.dtype:
    """uint16 when every id fits (codebook ≤ 65536), int32 up to 2**31, else int64 (:attr:`TokenLayout.storage_dtype`)."""
    return TokenLayout.grid(int(codebook_size)).storage_dtype


def histogram_json(hist: np.ndarray) -> list[Any]:
    """Usage counts as JSON: a flat list for one dense codebook (the 0.1 format), else one list per row."""
    rows = np.asarray(hist, dtype=np.int64)
    if rows.ndim == 2 and rows.shape[0] == 1:
        rows = rows[0]
    return rows.tolist()  # type: ignore[no-any-return]


def stats_path_for(dst: str | os.PathLike[str]) -> Path:
    """The stats file beside a token shard: ``tokens/train-000123.tar`` -> ``tokens/train-000123.json``."""
    dst = Path(dst)
    return dst.with_name(dst.name.removesuffix(".tar") + ".json")


def read_shard_stats(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed stats .json, or None when it is missing or not a complete vqtok shard record."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "histogram" not in data:
        return None
    return data


@dataclass
class ShardStats:
    """What :func:`tokenize_shard` did for one shard (the content of its .json, plus bookkeeping)."""

    shard: str
    source: str
    samples_written: int
    samples_failed: list[dict[str, str]]
    histogram: np.ndarray  # (codebook_size,), or layout.histogram_shape() for sub-codebooks / bitwise ids
    codebook_size: int
    ids_dtype: str
    size: int | None
    model_fingerprint: str
    config_hash: str
    tokens: int = 0
    layout: TokenLayout | None = None  # None: a shard written before layouts (one grid, one codebook)
    scale_histograms: np.ndarray | None = None  # (scales, *histogram shape) for multi-scale layouts
    skipped: bool = False  # an existing complete output was reused
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_failed(self) -> int:
        return len(self.samples_failed)

    @property
    def num_samples(self) -> int:
        return self.samples_written + self.num_failed

    def to_json(self) -> dict[str, Any]:
        """The stats file content (deterministic: no timings, no host names)."""
        return {
            "format": FORMAT,
            "shard": self.shard,
            "source": self.source,
            "samples_written": self.samples_written,
            "num_failed": self.num_failed,
            "samples_failed": list(self.samples_failed),
            "tokens": self.tokens,
            "codebook_size": self.codebook_size,
            "ids_dtype": self.ids_dtype,
            "size": self.size,
            "model_fingerprint": self.model_fingerprint,
            "config_hash": self.config_hash,
            "histogram": histogram_json(self.histogram),
            **({"layout": self.layout.to_dict()} if self.layout is not None else {}),
            **({"scale_histograms": [histogram_json(h) for h in self.scale_histograms]} if self.scale_histograms is not None else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], *, skipped: bool = False) -> ShardStats:
        return cls(
            shard=d["shard"],
            source=d.get("source", ""),
            samples_written=int(d["samples_written"]),
            samples_failed=list(d["samples_failed"]),
            histogram=np.asarray(d["histogram"], dtype=np.int64),
            codebook_size=int(d["codebook_size"]),
            ids_dtype=d["ids_dtype"],
            size=d.get("size"),
            model_fingerprint=d["model_fingerprint"],
            config_hash=d.get("config_hash", ""),
            tokens=int(d.get("tokens", 0)),
            skipped=skipped,
            layout=TokenLayout.from_dict(d["layout"]) if "layout" in d else None,
            scale_histograms=np.asarray(d["scale_histograms"], dtype=np.int64) if "scale_histograms" in d else None,
        )


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # its defaults are fixed: mtime 0, uid/gid 0, no user or group name
    info.size = len(data)
    info.mode = 0o444
    tf.addfile(info, io.BytesIO(data))


class TokenShardWriter:
    """Writes one token shard and its stats .json under temporary names; :meth:`finish` renames
    them (the .json last), :meth:`abort` removes them."""

    def __init__(
        self,
        dst: str | os.PathLike[str],
        *,
        source: str,
        layout: TokenLayout | int,
        size: int | None,
        keep: Sequence[str],
        fingerprint: str,
        config_hash: str,
    ) -> None:
        self.dst = Path(dst)
        self.keep = tuple(keep)
        # an int is the codebook size of a grid (the 0.1 signature): its stats stay byte-identical (no layout recorded)
        self.counting = layout if isinstance(layout, TokenLayout) else TokenLayout.grid(int(layout))
        self.dtype = self.counting.storage_dtype
        shape, n_scales = self.counting.histogram_shape(), len(self.counting.scale_shapes)
        self.stats = ShardStats(  # counts, failures and histograms filled in by add and fail
            shard=self.dst.name, source=source, samples_written=0, samples_failed=[],
            histogram=np.zeros(shape, dtype=np.int64), codebook_size=self.counting.codebook_size, ids_dtype=self.dtype.name,
            size=size, model_fingerprint=fingerprint, config_hash=config_hash,
            layout=layout if isinstance(layout, TokenLayout) else None,
            scale_histograms=np.zeros((n_scales, *shape), dtype=np.int64) if n_scales else None,
        )
        self.t0 = time.perf_counter()
        self._files = contextlib.ExitStack()  # exits innermost first: the tar is renamed before the .json
        self.tmp_stats = self._files.enter_context(atomic_write(stats_path_for(self.dst)))
        self.tmp_tar = self._files.enter_context(atomic_write(self.dst))
        self.tar = tarfile.open(self.tmp_tar, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed in finish/abort

    def fail(self, key: str, reason: str) -> None:
        self.stats.samples_failed.append({"key": key, "reason": reason})

    def add(self, key: str, ids: torch.Tensor, kept: dict[str, bytes]) -> None:
        """One sample: ids in the layout's shape (an (h, w) grid, (n,), (L,) ...), plus the ``keep`` fields it has."""
        stats = self.stats
        ids_np = ids.numpy().astype(self.dtype, copy=False)
        stats.histogram += self.counting.count(ids_np)
        if stats.scale_histograms is not None:  # (scales, *histogram shape) += one count per scale
            stats.scale_histograms += [self.counting.count(part) for part in self.counting.split(torch.from_numpy(ids_np.astype(np.int64))[None])]
        stats.tokens += ids_np.size
        npy = io.BytesIO()
        np.save(npy, ids_np, allow_pickle=False)
        _add_member(self.tar, f"{key}.ids.npy", npy.getvalue())
        for ext in self.keep:
            if ext in kept:
                _add_member(self.tar, f"{key}.{ext}", kept[ext])
        stats.samples_written += 1

    def finish(self) -> ShardStats:
        self.tar.close()
        stats = self.stats
        self.tmp_stats.write_text(json.dumps(stats.to_json(), sort_keys=True) + "\n")
        self._files.close()  # renames: the tar, then the .json that marks the shard complete
        stats.seconds = time.perf_counter() - self.t0
        if stats.samples_failed:
            first = stats.samples_failed[0]
            logger.info("%s: %d written, %d failed (first: %s: %s)", self.dst.name, stats.samples_written, stats.num_failed, first["key"], first["reason"])
        return stats

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # best effort while unwinding
            self.tar.close()
        self._files.pop_all()  # nothing is renamed
        for p in (self.tmp_tar, self.tmp_stats):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------- reading
def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def decode_token_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw webdataset sample (bytes per extension) -> ``{"__key__", "ids", "label", "txt"?, "json"?}``.

    ``ids`` is a numpy array in the stored dtype and the layout's shape ((h, w) for a grid, (n,) for a
    sequence, (Σ hᵢwᵢ,) for multi-scale ids, a trailing k for sub-codebooks); ``label`` an int (-1 when absent).
    """
    key = sample.get("__key__", "?")
    if "ids.npy" not in sample:
        raise ValueError(f"token sample {key!r} has no .ids.npy member (members: {sorted(sample)})")
    ids = np.load(io.BytesIO(sample["ids.npy"]), allow_pickle=False)
    if ids.ndim not in (1, 2, 3) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token sample {key!r}: ids must be an integer array of 1 to 3 axes, got {ids.dtype} {ids.shape}")
    out: dict[str, Any] = {"__key__": key, "ids": ids, "label": NO_LABEL}
    if "cls" in sample:
        text = _as_bytes(sample["cls"]).decode().strip()
        try:
            out["label"] = int(text)
        except ValueError as err:
            raise ValueError(f"token sample {key!r}: .cls is not an integer: {text!r}") from err
    if "txt" in sample:
        out["txt"] = _as_bytes(sample["txt"]).decode()
    if "json" in sample:
        out["json"] = json.loads(_as_bytes(sample["json"]))
    return out


def _read_token_shards(source: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset stage: shard URLs ``{"url": ...}`` -> raw samples, read by :func:`vqtok.tars.read_samples`."""
    for item in source:
        url = item["url"]
        for s in read_samples(url):
            if s.error is not None:
                raise ValueError(f"token shard {url}: {s.key}: {s.error} (re-run pretokenize to redo it)")
            yield {"__key__": s.key, "__url__": url, **s.fields}


def _to_pair(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    return torch.from_numpy(sample["ids"].astype(np.int64)), int(sample["label"])


def _to_torch_dict(sample: dict[str, Any]) -> dict[str, Any]:
    return {**sample, "ids": torch.from_numpy(sample["ids"].astype(np.int64))}


def _stream_seed(*parts: object) -> int:
    """A 64-bit seed from any tuple of numbers/strings (sha256, same on every platform and process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


@dataclass(eq=False)
class _TokenShards(torch.utils.data.IterableDataset):
    """The first stage of :func:`token_dataset`: ``{"url": ...}`` of the shards this rank/worker reads
    in this epoch, plus the seed of the stream (``(seed, epoch, rank, worker)``) for the later stages.

    Not resampled: one permutation of the shard list per ``(seed, epoch)``, the same on every rank and
    worker, is dealt out: rank r of R takes every R-th shard, its worker w of W every W-th of those;
    the streams are disjoint and together read every shard once per epoch. Resampled: each
    ``(seed, epoch, rank, worker)`` draws shards with replacement from its own generator, forever.
    """

    urls: list[str]
    _: KW_ONLY
    seed: int
    resampled: bool
    shuffle_shards: bool
    epoch: int | None = None  # set_epoch's value; None: count this copy's iterations
    _iterations: int = 0
    current: tuple[int, int, int] = (0, 0, 0)  # (epoch, rank, worker) of the stream being read

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def stream_seed(self, stage: str) -> int:
        return _stream_seed(self.seed, *self.current, stage)

    def __iter__(self) -> Iterator[dict[str, str]]:
        epoch = self.epoch if self.epoch is not None else self._iterations
        self._iterations += 1
        from webdataset.utils import pytorch_worker_info

        # webdataset's rules: RANK / WORLD_SIZE or the initialised process group; the DataLoader worker info
        rank, world, worker, workers = map(int, pytorch_worker_info())
        self.current = (epoch, rank, worker)  # read by the later stages, created after this call
        if self.resampled:
            return self._resampled()
        order = list(self.urls)
        if self.shuffle_shards:
            random.Random(_stream_seed(self.seed, epoch, "shards")).shuffle(order)
        mine = order[rank::world][worker::workers]
        if not mine:
            logger.warning(
                "token_dataset: rank %d worker %d of %d x %d streams has no shard of %d; give at least as many shards "
                "as ranks x workers (or resampled=True)", rank, worker, world, workers, len(self.urls),
            )
        return iter([{"url": u} for u in mine])

    def _resampled(self) -> Iterator[dict[str, str]]:
        rng = random.Random(self.stream_seed("resample"))
        while True:
            yield {"url": rng.choice(self.urls)}


@dataclass
class _ShuffleSamples:
    """The sample-shuffle stage of :func:`token_dataset`, seeded per stream by its :class:`_TokenShards`
    (a class, not a closure: the pipeline stays picklable for spawned DataLoader workers)."""

    source: _TokenShards
    bufsize: int

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from webdataset.filters import _shuffle

        # called once per iteration, after source.__iter__ has set this stream's (epoch, rank, worker)
        rng = random.Random(self.source.stream_seed("samples"))
        return _shuffle(src, self.bufsize, min(self.bufsize, 100), rng)


def token_dataset(
    shards: str | Sequence[str],
    *,
    shuffle: int = 1000,
    resampled: bool = False,
    seed: int = 0,
    epoch_length: int | None = None,
    as_dict: bool = False,
) -> Any:
    """A ``webdataset.DataPipeline`` over token shards yielding ``(ids, label)`` (or dicts).

    Every stream (rank x DataLoader worker) is seeded from ``(seed, epoch, rank, worker)``: streams are
    independent, and not resampled they are disjoint and cover the corpus once per epoch.

    shuffle: sample shuffle buffer size (0 = keep shard order; the shard list is permuted per
        ``(seed, epoch)`` too when > 0 and not resampled).
    resampled: draw shards with replacement forever (a seeded generator per rank/worker).
    seed: seeds shard and sample shuffling (same seed, epoch, rank and worker → same order).
    epoch_length: samples per epoch per worker (``with_epoch``); useful with ``resampled``.
    as_dict: yield ``{"__key__", "ids" (h, w) int64 tensor, "label", "txt"?, "json"?}``
        instead of ``(ids, label)``.

    The pipeline has ``set_epoch(epoch)`` (like ``DistributedSampler.set_epoch``): call it before each
    epoch when DataLoader workers are not persistent (each epoch's workers start from a fresh copy);
    without calls to it, each iteration of a copy counts as its next epoch.
    """
    import webdataset as wds

    urls = expand_shards(shards)
    source = _TokenShards(urls, seed=seed, resampled=resampled, shuffle_shards=shuffle > 0 and not resampled)
    ds = wds.DataPipeline(source, _read_token_shards)
    ds.set_epoch = source.set_epoch  # like DistributedSampler.set_epoch
    if shuffle > 0:
        ds.append(_ShuffleSamples(source, shuffle))
    ds.append(wds.filters.map(decode_token_sample))
    ds.append(wds.filters.map(_to_torch_dict if as_dict else _to_pair))
    if epoch_length is not None:
        ds = ds.with_epoch(epoch_length)
    return ds


@dataclass
class TokenCorpus:
    """A whole token corpus in memory."""

    ids: np.ndarray  # (N, *layout shape): (N, h, w) grids, (N, n) sequences, (N, L) multi-scale; as stored
    labels: np.ndarray  # (N,) int64; -1 = no label
    keys: list[str] = field(default_factory=list)  # __key__ of each sample
    codebook_size: int | None = None  # from the shards' stats json, if recorded
    layout: TokenLayout | None = None  # from the shards' stats json (None: written before layouts, a grid)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of a grid corpus; ValueError for other layouts."""
        if self.ids.ndim != 3 or (self.layout is not None and self.layout.kind != "grid"):
            what = self.layout.describe() if self.layout is not None else f"ids of shape {self.ids.shape[1:]}"
            raise ValueError(f"this token corpus is not one grid per image ({what})")
        return int(self.ids.shape[1]), int(self.ids.shape[2])

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """index: (B,) long -> ids (B, h, w) int64, labels (B,) int64 (CPU tensors)."""
        idx = index.cpu().numpy()
        return torch.from_numpy(self.ids[idx].astype(np.int64)), torch.from_numpy(self.labels[idx])

    def subset(self, index: np.ndarray) -> TokenCorpus:
        """The samples at ``index`` (1-D integer array), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return replace(self, ids=self.ids[index], labels=self.labels[index], keys=[self.keys[i] for i in index])

    def split(self, n_val: int) -> tuple[TokenCorpus, TokenCorpus]:
        """(train, val) with the last ``n_val`` samples as validation."""
        train, val = (replace(self, ids=self.ids[s], labels=self.labels[s], keys=self.keys[s])
                      for s in (slice(None, len(self) - n_val), slice(len(self) - n_val, None)))
        return train, val


def _stats_of(url: str) -> tuple[int | None, TokenLayout | None]:
    """(codebook size, layout) recorded in a local shard's stats json (None where not recorded)."""
    stats = stats_path_for(url)
    if is_remote(url) or not stats.is_file():
        return None, None
    try:
        data = json.loads(stats.read_text())
    except (OSError, ValueError, RecursionError):
        logger.warning("could not read shard stats %s", stats)
        return None, None
    if not isinstance(data, dict):
        return None, None
    layout = None
    if "layout" in data:
        try:
            layout = TokenLayout.from_dict(data["layout"])
        except ValueError as err:
            raise ValueError(f"{stats}: {err}") from None
    for key in ("codebook_size", "n_embed", "vocab_size"):
        if is_int(data.get(key)):
            return data[key], layout
    return None, layout


def load_token_corpus(shards: str | Sequence[str], *, progress: bool = False) -> TokenCorpus:
    """Read every sample of the shards (in shard order) into memory.

    All samples must share one ids shape (ValueError otherwise): (N, h, w) grids, (N, n) sequences,
    (N, L) multi-scale ids. Every process reads the whole corpus (no node splitting): the trainer draws
    per-rank batches from it.
    """
    urls = expand_shards(shards)
    ids: list[np.ndarray] = []
    labels: list[int] = []
    keys: list[str] = []
    sizes: set[int] = set()
    layouts: set[TokenLayout] = set()
    from vqtok._progress import Progress

    bar = Progress("reading token shards", total=len(urls), unit="shard", enabled=progress)
    for url in urls:
        bar.update(1)
        size, layout = _stats_of(url)
        if size is not None:
            sizes.add(size)
        if layout is not None:
            layouts.add(layout)
        for s in map(decode_token_sample, _read_token_shards([{"url": url}])):
            if ids and s["ids"].shape != ids[0].shape:
                raise ValueError(
                    f"token grids differ in shape: {s['__key__']!r} in {url} is {s['ids'].shape}, "
                    f"earlier samples are {ids[0].shape}; a corpus for the prior needs one grid shape "
                    f"(tokenize the images at one size, not at their own sizes)"
                )
            ids.append(s["ids"])
            labels.append(int(s["label"]))
            keys.append(s["__key__"])
    bar.close()
    if not ids:
        raise ValueError(f"no samples in {len(urls)} token shard(s) ({urls[0]} ...)")
    if len(sizes) > 1:
        raise ValueError(f"shards disagree on the codebook size: {sorted(sizes)}")
    if len(layouts) > 1:
        raise ValueError(f"shards disagree on the token layout: {'; '.join(sorted(x.describe() for x in layouts))}")
    stacked = np.stack(ids)
    if stacked.dtype not in (np.uint8, np.uint16, np.int32, np.int64):
        raise ValueError(f"token ids must be uint16/int32/int64, got {stacked.dtype}")
    logger.info("read %d token grids of shape %s from %d shards", len(ids), stacked.shape[1:], len(urls))
    return TokenCorpus(ids=stacked, labels=np.asarray(labels, dtype=np.int64), keys=keys,
                       codebook_size=sizes.pop() if sizes else None, layout=layouts.pop() if layouts else None)
