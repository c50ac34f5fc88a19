"""Tokenize one WebDataset tar shard into one token shard (the unit of work of ``vqtok pretokenize``).

:func:`tokenize_shard` is pure with respect to its inputs: it reads ``src``, writes ``dst`` (a tar
of ``<key>.ids.npy`` + passed-through fields) and ``dst`` with ``.json`` (the shard's stats), and
returns those stats. Both files are written under temporary names and renamed when complete; the
``.json`` is renamed last and is the completion marker. A complete output made with the same
model is not redone, so the function can be called again after a crash (or by a retried Ray task)
and gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import socket
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqtok.images import load_image, pil_to_rgb, resize_center_crop
from vqtok.pipeline.remote import is_remote, shard_name
from vqtok.tars import IMAGE_FIELDS, TAR_ERRORS, TRUNCATED_KEY, check_complete, group_members, image_field

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KEEP",
    "FORMAT",
    "ShardStats",
    "ids_dtype_for",
    "model_fingerprint",
    "output_name_for",
    "read_shard_stats",
    "stats_path_for",
    "tokenize_shard",
    "tokenize_shards",
]

FORMAT = "vqtok-token-shard/1"
DEFAULT_KEEP: tuple[str, ...] = ("cls", "txt", "json")
_MEMBER_MTIME = 0  # fixed so that outputs are byte-identical across runs


# ---------------------------------------------------------------------- small helpers
def ids_dtype_for(codebook_size: int) -> np.dtype:
    """uint16 when every id fits (codebook ≤ 65536), else int32."""
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int32)


def output_name_for(src: str | os.PathLike[str]) -> str:
    """``train-000123.tar`` (also ``.tar.gz``/``.tgz``, and remote shards by their file name) -> ``train-000123.tar``."""
    name = shard_name(src) if is_remote(src) else Path(src).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + ".tar"
    return name + ".tar"


def stats_path_for(dst: str | os.PathLike[str]) -> Path:
    """The stats file beside a token shard: ``tokens/train-000123.tar`` -> ``tokens/train-000123.json``."""
    dst = Path(dst)
    stem = dst.name.removesuffix(".tar")
    return dst.with_name(stem + ".json")


def model_fingerprint(tokenizer: Any) -> str:
    """sha256 (16 hex) of the config, the weights and the precision: what decides the ids."""
    h = hashlib.sha256()
    h.update(json.dumps(tokenizer.config.to_dict(), sort_keys=True).encode())
    h.update(str(getattr(tokenizer, "precision", "fp32")).encode())
    for name, tensor in sorted(tokenizer.model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def read_shard_stats(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed stats .json, or None when it is missing or not a complete vqtok shard record."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "histogram" not in data:
        return None
    return data


def _remove_stale_tmp(path: Path) -> None:
    for stale in path.parent.glob(glob.escape(path.name) + ".tmp-*"):
        try:
            stale.unlink()
            logger.info("removed stale temporary file %s", stale)
        except FileNotFoundError:
            pass


def _tmp_suffix() -> str:
    return f".tmp-{socket.gethostname()}-{os.getpid()}"


# ---------------------------------------------------------------------- reading a tar shard
@dataclass
class _Sample:
    index: int
    key: str
    fields: dict[str, Any]  # ext -> (offset, size) into the tar file, or bytes (compressed tars)
    error: str | None = None


@dataclass
class _ShardIndex:
    samples: list[_Sample]
    tail_error: str | None  # the tar is truncated/corrupt after the listed samples
    seekable: bool


def _index_tar(src: Path) -> _ShardIndex:
    """List the samples of a tar without reading image data (uncompressed tars are read by offset)."""
    members: list[tuple[str, Any]] = []
    tail_error: str | None = None
    seekable = True
    try:
        with open(src, "rb") as fh:
            magic = fh.read(3)
        if magic[:2] == b"\x1f\x8b" or magic == b"BZh" or magic[:3] == b"\xfd7z":
            seekable = False
            with tarfile.open(src, "r:*") as tf:
                for m in tf:
                    if m.isfile():
                        f = tf.extractfile(m)
                        data = f.read() if f is not None else b""
                        if len(data) != m.size:
                            raise tarfile.ReadError(f"member {m.name} is cut off")
                        members.append((m.name, data))
                check_complete(tf)
        else:
            filesize = src.stat().st_size
            with tarfile.open(src, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    if m.offset_data + m.size > filesize:
                        raise tarfile.ReadError(f"member {m.name} is cut off")
                    members.append((m.name, (m.offset_data, m.size)))
                check_complete(tf)
    except TAR_ERRORS as err:
        tail_error = f"truncated or corrupt tar after {len(members)} members: {type(err).__name__}: {err}"
    samples: list[_Sample] = []
    seen: set[str] = set()
    grouped = list(group_members(members))
    for i, (key, fields) in enumerate(grouped):
        s = _Sample(index=i, key=key, fields=fields)
        if key in seen:
            s.error = "duplicate key (its members are not consecutive in the tar)"
        seen.add(key)
        samples.append(s)
    if tail_error is not None and samples:
        # The sample being read when the tar broke may be missing fields: count it as failed too
        # (the unreadable rest of the shard is recorded separately, under the key "<rest of shard>").
        samples[-1].error = tail_error
    return _ShardIndex(samples=samples, tail_error=tail_error, seekable=seekable)


class _BlockStream(torch.utils.data.IterableDataset):
    """Samples of several shards, prepared (read, decoded, converted, resized) in blocks of ``block`` samples.

    Blocks are numbered across shards; DataLoader worker ``w`` of ``n`` prepares the blocks with
    number % n == w. The DataLoader asks its workers round-robin and returns their outputs in
    order, so the main process receives the blocks in input order. Every shard yields at least one
    block (possibly empty) and its last block carries the tar's tail error, if any.

    Item: (shard number, block number in shard, blocks in shard, samples in shard, tail error
    or None, [(key, uint8 (H, W, 3) or None, error or None, kept fields)]).
    """

    def __init__(
        self,
        sources: Sequence[Path],
        *,
        block: int,
        size: int | None,
        factor: int,
        keep: Sequence[str],
        image_exts: Sequence[str],
    ) -> None:
        self.sources = list(sources)
        self.block = block
        self.size = size
        self.factor = factor
        self.keep = tuple(keep)
        self.image_exts = tuple(image_exts)

    def __iter__(self) -> Iterator[tuple[int, int, int, int, str | None, list[Any]]]:
        info = torch.utils.data.get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        number = 0
        for k, src in enumerate(self.sources):
            index = _index_tar(src)
            samples = index.samples
            nblocks = max(1, -(-len(samples) // self.block))
            with contextlib.ExitStack() as stack:
                fh = stack.enter_context(open(src, "rb")) if index.seekable and samples else None
                for b in range(nblocks):
                    if number % nworkers == wid:
                        part = samples[b * self.block : (b + 1) * self.block]
                        tail = index.tail_error if b == nblocks - 1 else None
                        yield k, b, nblocks, len(samples), tail, [self._prepare(fh, s) for s in part]
                    number += 1

    def _prepare(self, fh: Any, s: _Sample) -> tuple[str, np.ndarray | None, str | None, dict[str, bytes]]:
        if s.error is not None:
            return s.key, None, s.error, {}
        ext = image_field(s.fields, self.image_exts)
        if ext is None:
            have = ", ".join(sorted(s.fields)) or "nothing"
            return s.key, None, f"no image field (looked for {'/'.join(self.image_exts[:5])}...; have {have})", {}
        try:
            data = _read(fh, s.fields[ext])
            if not data:
                raise ValueError("zero-size image field (0 bytes)")
            img = load_image(data)
            rgb = pil_to_rgb(img)
            if self.size is not None:
                rgb = resize_center_crop(rgb, self.size)
            elif rgb.width % self.factor or rgb.height % self.factor:
                raise ValueError(
                    f"image size {rgb.width}x{rgb.height} is not a multiple of the downsample factor {self.factor} "
                    "(give a size to resize and center-crop)"
                )
            arr = np.asarray(rgb, dtype=np.uint8)
            kept = {k: _read(fh, s.fields[k]) for k in self.keep if k in s.fields}
        except Exception as err:  # noqa: BLE001 - any per-sample data problem is recorded, not fatal
            msg = str(err).replace("<bytes>", f"{ext} field")
            return s.key, None, f"{type(err).__name__}: {msg}", {}
        return s.key, arr, None, kept


def _read(fh: Any, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    offset, size = value
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise EOFError(f"read {len(data)} of {size} bytes at {offset}")
    return data


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


# ---------------------------------------------------------------------- the per-shard function
@dataclass
class ShardStats:
    """What :func:`tokenize_shard` did for one shard (the content of its .json, plus bookkeeping)."""

    shard: str
    source: str
    samples_written: int
    samples_failed: list[dict[str, str]]
    histogram: np.ndarray
    codebook_size: int
    ids_dtype: str
    size: int | None
    model_fingerprint: str
    config_hash: str
    tokens: int = 0
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
            "histogram": [int(x) for x in self.histogram],
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
        )


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MEMBER_MTIME
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _check_args(tokenizer: Any, batch_size: int, size: int | None, workers: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    if size is not None and size % tokenizer.downsample_factor:
        raise ValueError(f"size {size} is not a multiple of the downsample factor {tokenizer.downsample_factor}")


def _completed(src: Path, dst: Path, fingerprint: str, size: int | None, overwrite: bool) -> ShardStats | None:
    """The stats of a complete output of this model and size, None when the shard must be (re)done."""
    if not src.is_file():
        raise FileNotFoundError(f"input shard {src} does not exist")
    if dst.exists() and src.resolve() == dst.resolve():
        raise ValueError(f"output {dst} is the input shard itself; choose another output folder")
    return completed_output(dst, fingerprint, size, overwrite=overwrite)


def completed_output(
    dst: str | os.PathLike[str], fingerprint: str, size: int | None, *, overwrite: bool = False
) -> ShardStats | None:
    """The stats of ``dst`` when it is a complete output of this model and size, else None
    (always None with ``overwrite``).

    Removes temporary files left by a crash; raises ValueError when ``dst`` was made by another model.
    """
    dst = Path(dst)
    stats_path = stats_path_for(dst)
    _remove_stale_tmp(dst)
    _remove_stale_tmp(stats_path)
    done = read_shard_stats(stats_path)
    if done is None or overwrite:
        return None
    if done.get("model_fingerprint") != fingerprint:
        raise ValueError(
            f"{stats_path} was made by another model (fingerprint {done.get('model_fingerprint')}, "
            f"this one is {fingerprint}); use another output folder or delete it"
        )
    if done.get("size") != size or not dst.is_file():
        return None
    logger.info("%s is complete, skipping", dst)
    return ShardStats.from_json(done, skipped=True)


class _ShardWriter:
    """Writes one token shard and its stats under temporary names; ``finish`` renames (.json last)."""

    def __init__(self, src: Path, dst: Path, tokenizer: Any, size: int | None, keep: Sequence[str], fingerprint: str) -> None:
        self.src, self.dst = src, dst
        self.stats_path = stats_path_for(dst)
        self.keep = tuple(keep)
        self.codebook_size = int(tokenizer.codebook_size)
        self.dtype = ids_dtype_for(self.codebook_size)
        self.hist = np.zeros(self.codebook_size, dtype=np.int64)
        self.failed: list[dict[str, str]] = []
        self.written = self.tokens = 0
        self.size, self.fingerprint, self.config_hash = size, fingerprint, tokenizer.config.hash()
        self.t0 = time.perf_counter()
        suffix = _tmp_suffix()
        self.tmp_tar = dst.with_name(dst.name + suffix)
        self.tmp_stats = self.stats_path.with_name(self.stats_path.name + suffix)
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.tar = tarfile.open(self.tmp_tar, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed in finish/abort

    def fail(self, key: str, reason: str) -> None:
        self.failed.append({"key": key, "reason": reason})

    def add(self, key: str, ids: torch.Tensor, kept: dict[str, bytes]) -> None:
        ids_np = ids.numpy().astype(self.dtype, copy=False)
        self.hist += np.bincount(ids_np.reshape(-1).astype(np.int64), minlength=self.codebook_size)
        self.tokens += ids_np.size
        _add_member(self.tar, f"{key}.ids.npy", _npy_bytes(ids_np))
        for ext in self.keep:
            if ext in kept:
                _add_member(self.tar, f"{key}.{ext}", kept[ext])
        self.written += 1

    def finish(self) -> ShardStats:
        self.tar.close()
        stats = ShardStats(
            shard=self.dst.name,
            source=self.src.name,
            samples_written=self.written,
            samples_failed=self.failed,
            histogram=self.hist,
            codebook_size=self.codebook_size,
            ids_dtype=self.dtype.name,
            size=self.size,
            model_fingerprint=self.fingerprint,
            config_hash=self.config_hash,
            tokens=self.tokens,
        )
        self.tmp_stats.write_text(json.dumps(stats.to_json(), sort_keys=True) + "\n")
        os.replace(self.tmp_tar, self.dst)
        os.replace(self.tmp_stats, self.stats_path)  # last: the .json marks the shard complete
        stats.seconds = time.perf_counter() - self.t0
        if self.failed:
            first = self.failed[0]
            logger.info("%s: %d written, %d failed (first: %s: %s)", self.dst.name, self.written, len(self.failed), first["key"], first["reason"])
        return stats

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # best effort while unwinding
            self.tar.close()
        for p in (self.tmp_tar, self.tmp_stats):
            p.unlink(missing_ok=True)


def tokenize_shards(
    jobs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    tokenizer: Any,
    *,
    size: int | None = 256,
    batch_size: int = 32,
    workers: int = 0,
    keep: Sequence[str] = DEFAULT_KEEP,
    image_exts: Sequence[str] = IMAGE_FIELDS,
    fingerprint: str | None = None,
    overwrite: bool = False,
    on_samples: Callable[[int], None] | None = None,
    on_index: Callable[[int], None] | None = None,
) -> Iterator[ShardStats]:
    """:func:`tokenize_shard` for each ``(src, dst)`` in order, yielding each shard's stats when it is complete.

    One DataLoader (and one set of worker processes) serves all the shards, so image decoding
    runs ahead across shard boundaries. Complete outputs are yielded with ``skipped=True``.
    """
    _check_args(tokenizer, batch_size, size, workers)
    fingerprint = fingerprint or model_fingerprint(tokenizer)
    pairs = [(Path(a), Path(b)) for a, b in jobs]
    todo: list[tuple[Path, Path]] = []
    ready: dict[int, ShardStats] = {}
    for i, (src, dst) in enumerate(pairs):
        done = _completed(src, dst, fingerprint, size, overwrite)
        if done is not None:
            ready[i] = done
        else:
            todo.append((src, dst))
    todo_pos = [i for i in range(len(pairs)) if i not in ready]

    def flush(upto: int) -> Iterator[ShardStats]:
        for i in sorted(k for k in ready if k < upto):
            yield ready.pop(i)

    if not todo:
        yield from flush(len(pairs))
        return
    stream = _BlockStream(
        [src for src, _ in todo], block=batch_size, size=size, factor=tokenizer.downsample_factor, keep=keep, image_exts=image_exts
    )
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, collate_fn=_as_list, prefetch_factor=2 if workers else None
    )
    threads = torch.get_num_threads()
    if workers and tokenizer.device.type == "cpu":
        # Leave the decoding workers their cores: oversubscribed intra-op threads are much slower.
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    writer: _ShardWriter | None = None
    try:
        expect = (0, 0)  # (shard number, block number) the next item must have
        for k, b, nblocks, nsamples, tail, results in loader:
            if (k, b) != expect:  # pragma: no cover - would mean the DataLoader reordered blocks
                raise RuntimeError(f"internal error: got block {(k, b)}, expected {expect}")
            if b == 0:
                yield from flush(todo_pos[k])
                src, dst = todo[k]
                writer = _ShardWriter(src, dst, tokenizer, size, keep, fingerprint)
                if on_index is not None:
                    on_index(nsamples)
            assert writer is not None
            for key, _, err, _ in results:
                if err is not None:
                    writer.fail(key, err)
            good = [(key, arr, kept) for key, arr, err, kept in results if err is None]
            for key, ids, kept in _encode_batch(tokenizer, good, batch_size):
                writer.add(key, ids, kept)
            if on_samples is not None and results:
                on_samples(len(results))
            if b == nblocks - 1:
                if tail is not None:
                    writer.fail(TRUNCATED_KEY, tail)
                stats = writer.finish()
                writer = None
                expect = (k + 1, 0)
                yield stats
            else:
                expect = (k, b + 1)
        if expect != (len(todo), 0):  # pragma: no cover
            raise RuntimeError(f"internal error: the sample stream ended early at {expect}")
        yield from flush(len(pairs))
    finally:
        if writer is not None:
            writer.abort()
        torch.set_num_threads(threads)


def tokenize_shard(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    tokenizer: Any,
    *,
    size: int | None = 256,
    batch_size: int = 32,
    workers: int = 0,
    keep: Sequence[str] = DEFAULT_KEEP,
    image_exts: Sequence[str] = IMAGE_FIELDS,
    fingerprint: str | None = None,
    overwrite: bool = False,
    on_samples: Callable[[int], None] | None = None,
    on_index: Callable[[int], None] | None = None,
) -> ShardStats:
    """Tokenize the WebDataset tar ``src`` into the token shard ``dst`` (+ its ``.json`` stats).

    Each readable sample becomes ``<key>.ids.npy`` (uint16 for codebooks ≤ 65536 codes, else
    int32; shape (h, w); the same ids as ``tokenizer.encode(image, size=size)``) plus the fields
    named in ``keep`` that it has, byte for byte, in input order. Bad samples (undecodable or empty
    image, no image field, unconvertible mode, a truncated tar) are listed in the stats with key
    and reason and skipped. ``size=None`` keeps each image's own size (sides must then be
    multiples of the downsample factor).

    ``workers`` DataLoader processes decode and resize images while the model runs on batches
    of ``batch_size`` in this process. If ``dst``'s .json already records a complete shard made
    by the same model (``fingerprint``, computed when not given) and ``size``, its stats are
    returned (``skipped=True``) unless ``overwrite``; one made by another model is an error.
    Outputs are written under temporary names and renamed when complete, the .json last.
    ``on_samples(n)`` is called as samples are done (progress); ``on_index(n)`` with the
    shard's sample count once it is known.
    """
    (stats,) = tokenize_shards(
        [(src, dst)],
        tokenizer,
        size=size,
        batch_size=batch_size,
        workers=workers,
        keep=keep,
        image_exts=image_exts,
        fingerprint=fingerprint,
        overwrite=overwrite,
        on_samples=on_samples,
        on_index=on_index,
    )
    return stats


def _encode_batch(
    tokenizer: Any, good: list[tuple[str, np.ndarray, dict[str, bytes]]], batch_size: int
) -> Iterable[tuple[str, torch.Tensor, dict[str, bytes]]]:
    """Encode prepared uint8 images (same path as Tokenizer.encode), yielding in input order."""
    if not good:
        return
    results: dict[int, torch.Tensor] = {}
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j, r in enumerate(good):
        by_shape.setdefault(r[1].shape, []).append(j)
    for members in by_shape.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            ids = tokenizer.encode(np.stack([good[j][1] for j in chunk]))  # (b, h, w)
            for j, row in zip(chunk, ids):
                results[j] = row
    for j, (key, _, kept) in enumerate(good):
        yield key, results[j], kept
