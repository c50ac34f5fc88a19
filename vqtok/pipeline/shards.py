"""Tokenize WebDataset tar shards into token shards (the unit of work of ``vqtok pretokenize``).

:func:`tokenize_shard` is pure with respect to its inputs: it reads ``src``, writes ``dst`` (a tar
of ``<key>.ids.npy`` + passed-through fields, :mod:`vqtok.tokens`) and ``dst`` with ``.json`` (the
shard's stats), and returns those stats. Both files are written under temporary names and renamed
when complete; the ``.json`` is renamed last and is the completion marker. A complete output made
with the same model is not redone, so the function can be called again after a crash (or by a
retried Ray task) and gives byte-identical files. Options: :class:`TokenizeOptions`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vqtok._errors import is_int
from vqtok._memory import check_image_size
from vqtok._runtime import die_with_parent
from vqtok.images import DECODE_MODES
from vqtok.pipeline._naming import completed_output, model_fingerprint
from vqtok.pipeline._reading import Block, BlockStream, Prepared
from vqtok.tars import IMAGE_FIELDS, TRUNCATED_KEY
from vqtok.tokens import DEFAULT_KEEP, ShardStats, TokenShardWriter

if TYPE_CHECKING:
    from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["TokenizeOptions", "tokenize_shard", "tokenize_shards"]


OUTPUT_FIELDS: tuple[str, ...] = ("ids.npy",)  # the fields a token shard's samples get from pretokenize


@dataclass(frozen=True)
class TokenizeOptions:
    """How :func:`tokenize_shard`, :func:`tokenize_shards` and :func:`~vqtok.pipeline.pretokenize` tokenize.

    Every function also takes these fields as keyword arguments (they override ``options``).
    """

    size: int | None = 256  # shorter side resized to size, center-cropped; None keeps sizes (multiples of f)
    batch_size: int = 32  # images per forward pass (and per DataLoader block)
    workers: int | None = None  # DataLoader decoding processes; None: 0 for tokenize_shard(s), min(4, CPUs-1) for pretokenize
    keep: tuple[str, ...] = DEFAULT_KEEP  # input fields copied byte for byte into the token shard
    image_exts: tuple[str, ...] = IMAGE_FIELDS  # fields tried, in order, as the sample's image
    decode: str = "exact"  # "exact" or "fast" (JPEG draft decoding to >= 2x size first; vqtok.images.DECODE_MODES)
    exif_transpose: bool = False  # turn images upright by their EXIF orientation first (default: ignored, as PIL does)
    fingerprint: str | None = None  # the model's fingerprint (computed when None)
    overwrite: bool = False  # redo shards whose complete output exists
    on_samples: Callable[[int], None] | None = None  # called with the number of samples just done (progress)
    on_index: Callable[[int], None] | None = None  # called with a shard's sample count once it is known

    @classmethod
    def make(cls, options: TokenizeOptions | None = None, **changes: Any) -> TokenizeOptions:
        """``options`` (default: all defaults) with ``changes`` applied; keep/image_exts become tuples."""
        opts = dataclasses.replace(options or cls(), **changes)
        keep = tuple(k.strip().lstrip(".") for k in opts.keep if k.strip())
        return dataclasses.replace(opts, keep=keep, image_exts=tuple(opts.image_exts))

    def check(self, tokenizer: Tokenizer) -> None:
        """ValueError naming the first option that is out of range for this tokenizer."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        taken = [k for k in self.keep if k.lower() in OUTPUT_FIELDS]
        if taken:
            raise ValueError(f"keep field {taken[0]!r} has the name of a field pretokenize writes ({', '.join(OUTPUT_FIELDS)}); "
                             "a copy would hide the token ids: leave it out of keep")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        size = self.size
        if size is not None and not is_int(size, 1):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        if size is not None and size % tokenizer.downsample_factor:
            raise ValueError(f"size {size} is not a multiple of the model's downsample factor {tokenizer.downsample_factor}")
        check_image_size(tokenizer, size, option="size")  # the activations of one image must fit in memory


def tokenize_shards(
    jobs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    tokenizer: Tokenizer,
    options: TokenizeOptions | None = None,
    **changes: Any,
) -> Iterator[ShardStats]:
    """:func:`tokenize_shard` for each ``(src, dst)`` in order, yielding each shard's stats when it is complete.

    One DataLoader (and one set of worker processes) serves all the shards, so image decoding
    runs ahead across shard boundaries. Complete outputs are yielded with ``skipped=True``.
    """
    opts = TokenizeOptions.make(options, **changes)
    opts.check(tokenizer)
    workers = opts.workers or 0
    fingerprint = opts.fingerprint or model_fingerprint(tokenizer)
    pairs = [(Path(a), Path(b)) for a, b in jobs]
    ready: dict[int, ShardStats] = {}  # position in pairs -> stats of a complete output of this model and size
    for i, (src, dst) in enumerate(pairs):
        if not src.is_file():
            raise FileNotFoundError(f"input shard {src} does not exist")
        if dst.exists() and src.resolve() == dst.resolve():
            raise ValueError(f"output {dst} is the input shard itself; choose another output folder")
        if (done := completed_output(dst, fingerprint, opts.size, overwrite=opts.overwrite)) is not None:
            ready[i] = done
    todo = [i for i in range(len(pairs)) if i not in ready]  # positions in pairs of the shards to tokenize

    def flush(upto: int) -> Iterator[ShardStats]:
        for i in sorted(k for k in ready if k < upto):
            yield ready.pop(i)

    if not todo:
        yield from flush(len(pairs))
        return
    stream = BlockStream(
        [pairs[i][0] for i in todo], block=opts.batch_size, size=opts.size, factor=tokenizer.downsample_factor,
        keep=opts.keep, image_exts=opts.image_exts, decode=opts.decode, exif_transpose=opts.exif_transpose,
    )
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, collate_fn=_identity, prefetch_factor=2 if workers else None,
        worker_init_fn=die_with_parent if workers else None,  # no orphaned worker after a kill -9 of this process
    )
    threads = torch.get_num_threads()
    if workers and tokenizer.device.type == "cpu":
        # Leave the decoding workers their cores: oversubscribed intra-op threads are much slower.
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    writer: TokenShardWriter | None = None
    blocks = iter(loader)
    finished = False
    try:
        expect = (0, 0)  # (shard number, block number) the next block must have
        for block in blocks:
            if (block.shard, block.number) != expect:  # pragma: no cover - would mean the DataLoader reordered blocks
                raise RuntimeError(f"internal error: got block {(block.shard, block.number)}, expected {expect}")
            if block.number == 0:
                yield from flush(todo[block.shard])
                src, dst = pairs[todo[block.shard]]
                writer = TokenShardWriter(
                    dst, source=src.name,
                    # a folder begun by vqtok 0.1 (its fingerprint has no "2:") keeps 0.1's stats format
                    layout=tokenizer.layout(opts.size) if fingerprint.startswith("2:") else tokenizer.codebook_size,
                    size=opts.size, keep=opts.keep, fingerprint=fingerprint, config_hash=tokenizer.config.hash(),
                )
                if opts.on_index is not None:
                    opts.on_index(block.samples)
            assert writer is not None
            _write_block(writer, tokenizer, block, opts.batch_size)
            if opts.on_samples is not None and block.items:
                opts.on_samples(len(block.items))
            if block.number == block.blocks - 1:
                stats = writer.finish()
                writer = None
                expect = (block.shard + 1, 0)
                yield stats
            else:
                expect = (block.shard, block.number + 1)
        if expect != (len(todo), 0):  # pragma: no cover
            raise RuntimeError(f"internal error: the sample stream ended early at {expect}")
        finished = True
        yield from flush(len(pairs))
    finally:
        if not finished:
            _kill_workers(blocks)
        if writer is not None:
            writer.abort()
        torch.set_num_threads(threads)


def _kill_workers(blocks: Any) -> None:
    """Stop the worker processes of a DataLoader iterator left early (an error, Ctrl-C, SIGTERM) at once.

    Its own shutdown waits for workers that may be blocked writing to a full pipe, or busy in a sample,
    and its terminate() is SIGTERM, which the workers ignore (:func:`~vqtok._runtime.die_with_parent`):
    the exit-time join of multiprocessing would then wait forever. SIGKILL needs no cooperation.
    """
    workers = getattr(blocks, "_workers", None)
    if not workers:
        return
    if getattr(blocks, "_worker_pids_set", False):  # no "worker killed by signal" error from torch's SIGCHLD handler
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(blocks))
        blocks._worker_pids_set = False
    for w in workers:
        if w.is_alive():
            w.kill()
    for w in workers:
        w.join(timeout=10)
    blocks._shutdown_workers()


def tokenize_shard(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    tokenizer: Tokenizer,
    options: TokenizeOptions | None = None,
    **changes: Any,
) -> ShardStats:
    """Tokenize the WebDataset tar ``src`` into the token shard ``dst`` (+ its ``.json`` stats).

    Each readable sample becomes ``<key>.ids.npy`` (uint16 for codebooks ≤ 65536 codes, else
    int32; shape (h, w); the same ids as ``tokenizer.encode(image, size=size)``) plus the fields
    named in ``keep`` that it has, byte for byte, in input order. Bad samples (undecodable or empty
    image, no image field, unconvertible mode, a duplicate key, a truncated tar) are listed in the
    stats with key and reason and skipped (the verdicts of :mod:`vqtok.tars`). ``size=None`` keeps
    each image's own size (sides must then be multiples of the downsample factor).

    ``workers`` DataLoader processes decode and resize images while the model runs on batches
    of ``batch_size`` in this process. If ``dst``'s .json already records a complete shard made
    by the same model (``fingerprint``, computed when not given) and ``size``, its stats are
    returned (``skipped=True``) unless ``overwrite``; one made by another model is an error.
    Options: :class:`TokenizeOptions`, as an object or as keyword arguments.
    """
    (stats,) = tokenize_shards([(src, dst)], tokenizer, options, **changes)
    return stats


def _identity(block: Block) -> Block:
    return block


def _write_block(writer: TokenShardWriter, tokenizer: Tokenizer, block: Block, batch_size: int) -> None:
    """Record the block's failures, encode and add its good samples, and the shard's tail error on its last block."""
    for item in block.items:
        if item.error is not None:
            writer.fail(item.key, item.error)
    good = [item for item in block.items if item.error is None]
    for item, ids in zip(good, _encode(tokenizer, good, batch_size)):
        writer.add(item.key, ids, item.kept)
    if block.tail_error is not None:
        writer.fail(TRUNCATED_KEY, block.tail_error)


def _encode(tokenizer: Tokenizer, good: list[Prepared], batch_size: int) -> Iterable[torch.Tensor]:
    """Encode prepared uint8 images (same path as Tokenizer.encode), giving ids (h, w) in input order."""
    results: dict[int, torch.Tensor] = {}
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j, item in enumerate(good):
        assert item.pixels is not None
        by_shape.setdefault(item.pixels.shape, []).append(j)
    for members in by_shape.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            ids = tokenizer.encode(np.stack([good[j].pixels for j in chunk]))  # (b, h, w)
            for j, row in zip(chunk, ids):
                results[j] = row
    return [results[j] for j in range(len(good))]
