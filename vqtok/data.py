"""Reading token corpora (the output of ``vqtok pretokenize``) for training the prior.

Shard format: tar files, one sample per image, ``__key__`` kept, members

* ``<key>.ids.npy`` – ``np.save`` of the (h, w) codebook ids (uint16 when the codebook has
  ≤ 65536 entries, else int32);
* ``<key>.cls`` – optional ASCII integer class label;
* ``<key>.txt`` / ``<key>.json`` – optional caption / metadata.

Beside each shard ``<name>.tar`` a ``<name>.json`` holds statistics; if it has a
``codebook_size`` key, :func:`load_token_corpus` reports it.

**Labels**: an ``int``; ``-1`` when the sample has no ``.cls`` member (the prior treats
-1 as "no class", i.e. the null class token).

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
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from vqtok.tars import is_remote

logger = logging.getLogger(__name__)

__all__ = ["expand_shards", "decode_token_sample", "token_dataset", "TokenCorpus", "load_token_corpus", "NO_LABEL"]

NO_LABEL = -1  # label of samples without a .cls member


def expand_shards(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Expand a shard spec into a list of shard URLs.

    Accepts brace notation (``tokens/train-{000000..000099}.tar``), a directory (all
    ``*.tar`` inside, sorted), or a list of those. Local paths must exist
    (FileNotFoundError); remote URLs (``pipe:``, ``http://``, ...) pass through.
    """
    from webdataset.shardlists import expand_urls

    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls: list[str] = []
    for s in specs:
        s = str(s)
        if Path(s).is_dir():
            found = sorted(str(p) for p in Path(s).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"{s} is a directory without .tar shards")
            urls.extend(found)
        else:
            urls.extend(expand_urls(s))
    if not urls:
        raise FileNotFoundError(f"no shards in {spec!r}")
    missing = [u for u in urls if not is_remote(u) and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"token shard {missing[0]} does not exist{more}")
    return urls


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def decode_token_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw webdataset sample (bytes per extension) -> ``{"__key__", "ids", "label", "txt"?, "json"?}``.

    ``ids`` is a (h, w) numpy array in the stored dtype; ``label`` an int (-1 when absent).
    """
    key = sample.get("__key__", "?")
    if "ids.npy" not in sample:
        raise ValueError(f"token sample {key!r} has no .ids.npy member (members: {sorted(sample)})")
    ids = np.load(io.BytesIO(sample["ids.npy"]), allow_pickle=False)
    if ids.ndim != 2:
        raise ValueError(f"token sample {key!r}: ids must be (h, w), got shape {ids.shape}")
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


def _to_pair(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    return torch.from_numpy(sample["ids"].astype(np.int64)), int(sample["label"])


def _to_torch_dict(sample: dict[str, Any]) -> dict[str, Any]:
    sample = dict(sample)
    sample["ids"] = torch.from_numpy(sample["ids"].astype(np.int64))
    return sample


def token_dataset(
    shards: str | Sequence[str],
    *,
    shuffle: int = 1000,
    resampled: bool = False,
    seed: int = 0,
    epoch_length: int | None = None,
    as_dict: bool = False,
) -> Any:
    """A ``webdataset.WebDataset`` over token shards yielding ``(ids, label)`` (or dicts).

    shuffle: sample shuffle buffer size (0 = keep shard order; shard order is shuffled too
        when > 0 and not resampled).
    resampled: draw shards with replacement forever (per node/worker seeded stream).
    seed: seeds shard and sample shuffling (same seed → same order for a given rank/worker).
    epoch_length: samples per epoch per worker (``with_epoch``); useful with ``resampled``.
    as_dict: yield ``{"__key__", "ids" (h, w) int64 tensor, "label", "txt"?, "json"?}``
        instead of ``(ids, label)``.
    """
    import webdataset as wds

    urls = expand_shards(shards)
    if resampled:
        # ResampledShards with a deterministic per-(rank, worker) seed; nodes/workers draw
        # independent streams, so no node/worker splitting of the shard list is needed.
        from webdataset.shardlists import ResampledShards

        source: Any = ResampledShards(urls, seed=seed, deterministic=True)
        ds = wds.DataPipeline(source, wds.tarfile_to_samples())
    else:
        ds = wds.WebDataset(
            urls,
            resampled=False,
            shardshuffle=len(urls) if shuffle > 0 else False,
            detshuffle=True,
            seed=seed,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,
        )
    if shuffle > 0:
        ds.append(wds.filters.shuffle(shuffle, initial=min(shuffle, 100), seed=seed))
    ds.append(wds.filters.map(decode_token_sample))
    ds.append(wds.filters.map(_to_torch_dict if as_dict else _to_pair))
    if epoch_length is not None:
        ds = ds.with_epoch(epoch_length)
    return ds


@dataclass
class TokenCorpus:
    """A whole token corpus in memory."""

    ids: np.ndarray  # (N, h, w) uint16 or int32, as stored
    labels: np.ndarray  # (N,) int64; -1 = no label
    keys: list[str] = field(default_factory=list)  # __key__ of each sample
    codebook_size: int | None = None  # from the shards' stats json, if recorded

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
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
        return TokenCorpus(self.ids[index], self.labels[index], [self.keys[i] for i in index], self.codebook_size)

    def split(self, n_val: int) -> tuple[TokenCorpus, TokenCorpus]:
        """(train, val) with the last ``n_val`` samples as validation."""
        cut = len(self) - n_val
        return (
            TokenCorpus(self.ids[:cut], self.labels[:cut], self.keys[:cut], self.codebook_size),
            TokenCorpus(self.ids[cut:], self.labels[cut:], self.keys[cut:], self.codebook_size),
        )


def _stats_codebook_size(url: str) -> int | None:
    stats = Path(url).with_suffix(".json")
    if "://" in url or not stats.is_file():
        return None
    try:
        data = json.loads(stats.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("could not read shard stats %s", stats)
        return None
    for key in ("codebook_size", "n_embed", "vocab_size"):
        if isinstance(data, dict) and isinstance(data.get(key), int):
            return int(data[key])
    return None


def _iter_shard(url: str) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    ds = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())
    for raw in ds:
        yield decode_token_sample(raw)


def load_token_corpus(shards: str | Sequence[str], *, progress: bool = False) -> TokenCorpus:
    """Read every sample of the shards (in shard order) into memory.

    All grids must share one shape (ValueError otherwise). Every process reads the whole
    corpus (no node splitting): the trainer draws per-rank batches from it.
    """
    urls = expand_shards(shards)
    ids: list[np.ndarray] = []
    labels: list[int] = []
    keys: list[str] = []
    sizes: set[int] = set()
    it: Iterator[str] = iter(urls)
    if progress:
        from tqdm.auto import tqdm

        it = iter(tqdm(urls, desc="reading token shards", unit="shard", file=sys.stderr))
    for url in it:
        size = _stats_codebook_size(url)
        if size is not None:
            sizes.add(size)
        for s in _iter_shard(url):
            if ids and s["ids"].shape != ids[0].shape:
                raise ValueError(
                    f"token grids differ in shape: {s['__key__']!r} in {url} is {s['ids'].shape}, "
                    f"earlier samples are {ids[0].shape}"
                )
            ids.append(s["ids"])
            labels.append(int(s["label"]))
            keys.append(s["__key__"])
    if not ids:
        raise ValueError(f"no samples in {len(urls)} token shard(s) ({urls[0]} ...)")
    if len(sizes) > 1:
        raise ValueError(f"shards disagree on the codebook size: {sorted(sizes)}")
    stacked = np.stack(ids)
    if stacked.dtype not in (np.uint16, np.int32, np.int64):
        raise ValueError(f"token ids must be uint16/int32, got {stacked.dtype}")
    logger.info("read %d token grids of shape %s from %d shards", len(ids), stacked.shape[1:], len(urls))
    return TokenCorpus(
        ids=stacked,
        labels=np.asarray(labels, dtype=np.int64),
        keys=keys,
        codebook_size=sizes.pop() if sizes else None,
    )
