"""Names and completion records of ``pretokenize`` outputs: which token shard an input shard becomes,
which model made it, and whether it is already complete."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vqtok._io import remove_stale_tmp
from vqtok.pipeline.remote import shard_name
from vqtok.tars import is_remote
from vqtok.tokens import ShardStats, read_shard_stats, stats_path_for

if TYPE_CHECKING:
    from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["all_fingerprints", "completed_output", "fingerprint_matches", "legacy_fingerprint", "model_fingerprint", "output_name_for"]


def output_name_for(src: str | os.PathLike[str]) -> str:
    """``train-000123.tar`` (also ``.tar.gz``/``.tgz``, and remote shards by their file name) -> ``train-000123.tar``."""
    name = shard_name(src) if is_remote(src) else Path(src).name  # type: ignore[arg-type]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + ".tar"
    return name + ".tar"


def _start(tokenizer: Tokenizer, precision: str, *, legacy: bool) -> hashlib._Hash:
    """A hasher fed with everything of a fingerprint but the weights."""
    if legacy:  # vqtok 0.1: serialised config, precision
        h = hashlib.sha256()
        h.update(json.dumps(tokenizer.config.to_dict(), sort_keys=True).encode())
        h.update(precision.encode())
        return h
    h = hashlib.sha256(b"vqtok-fingerprint/2\0")
    # the config fields whose values differ from the field defaults (a field added later, at its default, changes nothing)
    values = tokenizer.config.to_dict()
    defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default  # as to_dict writes tuples
                for f in dataclasses.fields(tokenizer.config) if f.default is not dataclasses.MISSING}  # type: ignore[arg-type]
    identity = {"model_type": tokenizer.model_type, "layout": tokenizer.layout().to_dict(),
                "config": {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}, "precision": precision}
    h.update(json.dumps(identity, sort_keys=True).encode())
    return h


def _fingerprints(tokenizer: Tokenizer, keys: list[tuple[str | None, bool]]) -> list[str]:
    """The fingerprint of each ``(precision or None for the tokenizer's, legacy)``, from one pass over the weights."""
    own = str(getattr(tokenizer, "precision", "fp32"))
    hashers = [_start(tokenizer, p or own, legacy=legacy) for p, legacy in keys]
    for name, tensor in sorted(tokenizer.model.state_dict().items()):  # every weight: name, dtype, shape, bytes
        t = tensor.detach().to("cpu").contiguous()
        head = f"{name}:{t.dtype}:{tuple(t.shape)}".encode()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        for h in hashers:
            h.update(head)
            h.update(data)
    return [h.hexdigest()[:16] if legacy else "2:" + h.hexdigest()[:16] for h, (_, legacy) in zip(hashers, keys)]


def model_fingerprint(tokenizer: Tokenizer, *, precision: str | None = None) -> str:
    """sha256 (16 hex) of what decides the ids: the family, its token layout, the config fields that differ
    from their defaults, the precision and the weights. Marked ``"2:"`` apart from :func:`legacy_fingerprint`."""
    return _fingerprints(tokenizer, [(precision, False)])[0]


def legacy_fingerprint(tokenizer: Tokenizer, *, precision: str | None = None) -> str:
    """The fingerprint of vqtok 0.1's corpora (serialised config, precision, weights): still accepted on resume."""
    return _fingerprints(tokenizer, [(precision, True)])[0]


def all_fingerprints(tokenizer: Tokenizer, precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> set[str]:
    """The fingerprints of ``tokenizer`` at each precision under today's rule and 0.1's, from one pass over the weights."""
    return set(_fingerprints(tokenizer, [(p, legacy) for p in precisions for legacy in (False, True)]))


def fingerprint_matches(tokenizer: Tokenizer, fingerprint: object, *, current: str | None = None) -> bool:
    """Whether ``fingerprint`` (from a manifest or shard stats) names this tokenizer, under today's rule or 0.1's."""
    if not isinstance(fingerprint, str):
        return False
    if fingerprint.startswith("2:"):
        return fingerprint == (current or model_fingerprint(tokenizer))
    return fingerprint == legacy_fingerprint(tokenizer)


def completed_output(dst: str | os.PathLike[str], fingerprint: str, size: int | None, *, overwrite: bool = False) -> ShardStats | None:
    """The stats of ``dst`` when it is a complete output of this model and size, else None
    (always None with ``overwrite``).

    Removes temporary files left by a crash; raises ValueError when ``dst`` was made by another model.
    """
    dst = Path(dst)
    stats_path = stats_path_for(dst)
    remove_stale_tmp(dst)
    remove_stale_tmp(stats_path)
    done = read_shard_stats(stats_path)
    if done is None or overwrite:
        return None
    if done.get("model_fingerprint") != fingerprint:
        raise ValueError(f"{stats_path} was made by another model (fingerprint {done.get('model_fingerprint')}, "
                         f"this one is {fingerprint}); use another output folder or delete it")
    if done.get("size") != size or not dst.is_file():
        return None
    try:
        stats = ShardStats.from_json(done, skipped=True)
    except (KeyError, TypeError, ValueError) as err:
        logger.warning("%s is not a readable shard record (%s: %s); redoing %s", stats_path, type(err).__name__, err, dst.name)
        return None
    logger.info("%s is complete, skipping", dst)
    return stats
