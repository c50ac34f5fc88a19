"""The sample stream of ``pretokenize``: shards indexed, images read and prepared in DataLoader workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from vqtok._errors import reason
from vqtok.images import prepare_image
from vqtok.tars import TRUNCATED_KEY, ShardIndex, Span, TarSample, image_field, index_shard

__all__ = ["Block", "BlockStream", "Prepared"]


@dataclass
class Prepared:
    """One input sample, ready for the model or failed."""

    key: str
    pixels: np.ndarray | None  # uint8 (H, W, 3); None when the sample failed
    error: str | None = None
    kept: dict[str, bytes] = field(default_factory=dict)  # the ``keep`` fields it has, as bytes


@dataclass
class Block:
    """Up to ``block`` consecutive samples of one shard (the DataLoader's unit of work)."""

    shard: int  # number of the shard in the stream
    number: int  # number of the block within its shard
    blocks: int  # blocks in the shard (the last one carries the tail error)
    samples: int  # samples in the shard (for progress), the tail error sample excluded
    tail_error: str | None  # the shard is truncated/corrupt after these samples (last block only)
    items: list[Prepared]


@dataclass(eq=False)
class BlockStream(torch.utils.data.IterableDataset):
    """Samples of several shards, prepared (read, decoded, converted, resized) in blocks of ``block`` samples.

    Blocks are numbered across shards; DataLoader worker ``w`` of ``n`` prepares the blocks with
    number % n == w. The DataLoader asks its workers round-robin and returns their outputs in
    order, so the main process receives the blocks in input order. Every shard yields at least one
    block (possibly empty).
    """

    sources: Sequence[Path]
    _: KW_ONLY
    block: int
    size: int | None
    factor: int
    keep: Sequence[str]
    image_exts: Sequence[str]
    decode: str = "exact"
    exif_transpose: bool = False

    def __iter__(self) -> Iterator[Block]:
        info = torch.utils.data.get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        number = 0
        for k, src in enumerate(self.sources):
            try:
                index = index_shard(src)
            except Exception as err:  # noqa: BLE001 - whatever a shard holds, it is recorded, not fatal
                index = ShardIndex(Path(src), [TarSample(TRUNCATED_KEY, error=f"unreadable shard: {reason(err)}")], False)
            tail = index.samples[-1].error if index.samples and index.samples[-1].key == TRUNCATED_KEY else None
            samples = index.samples[:-1] if tail is not None else index.samples
            nblocks = max(1, -(-len(samples) // self.block))
            with open(src, "rb") if index.seekable and samples else contextlib.nullcontext() as fh:
                for b in range(nblocks):
                    if number % nworkers == wid:
                        part = samples[b * self.block : (b + 1) * self.block]
                        items = [self._prepare(fh, s) for s in part]
                        yield Block(k, b, nblocks, len(samples), tail if b == nblocks - 1 else None, items)
                    number += 1

    def _prepare(self, fh: BinaryIO | None, s: TarSample[bytes | Span]) -> Prepared:
        if s.error is not None:
            return Prepared(s.key, None, s.error)
        ext = image_field(s.fields, self.image_exts)
        if ext is None:
            return Prepared(s.key, None, s.missing_image(self.image_exts))
        try:
            pixels = prepare_image(ShardIndex.read(fh, s.fields[ext]), size=self.size, factor=self.factor, decode=self.decode,
                                   exif_transpose=self.exif_transpose)  # (H, W, 3) uint8
            kept = {k: ShardIndex.read(fh, s.fields[k]) for k in self.keep if k in s.fields}
        except Exception as err:  # noqa: BLE001 - any per-sample data problem is recorded, not fatal
            return Prepared(s.key, None, reason(err, subject=f"{ext} field"))
        return Prepared(s.key, pixels, None, kept)

