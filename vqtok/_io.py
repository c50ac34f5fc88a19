"""Writing files so that a reader never sees half of one: the one temporary-name-then-rename helper.

Everything vqtok writes for others to read (model folders, token shards and their stats, manifests,
downloads, checkpoints) goes through :func:`atomic_write`: the content is written under
``<name>.tmp-<host>-<pid>`` beside the target and renamed onto it (``os.replace``, atomic on one file
system) only when complete. The host and process id in the name keep concurrent writers (ranks on
several machines sharing a folder) off each other's temporary files; :func:`remove_stale_tmp` deletes
the ones a crashed writer left. :func:`sha256_file` is the one way files are checksummed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "remove_stale_tmp", "sha256_file", "temporary_path"]

_TMP = ".tmp-"  # <name>.tmp-<host>-<pid>: the temporary file or folder being written
_OLD = ".old-"  # <name>.old-<host>-<pid>: a replaced folder, removed after the swap


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, mode: int | None = 0o644, owner: str | None = None, keep_existing: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; the caller creates a file or a folder there.

    ``owner`` replaces ``<host>-<pid>`` in the temporary name, for several processes that fill one
    folder (ranks agree on e.g. ``f"step{step}"``; the one that entered this block commits it).

    On normal exit a file is given permissions ``mode`` (None: as created; safetensors creates its
    files 0600, a model folder is meant to be shared) and renamed onto ``path``; a folder replaces an
    existing ``path`` folder by a swap (old aside, new in place, old removed). ``keep_existing``: a
    folder another process put at ``path`` meanwhile (a shared cache entry) stays, ours is dropped. On an exception the
    temporary file or folder is removed and the exception propagates; ``path`` is untouched. Nested
    blocks commit innermost first, so a completion marker written in the outer block lands last.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target, owner=owner)
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} (the temporary name of {target})")
        if tmp.is_dir():
            if keep_existing and target.exists():
                _remove(tmp)
                return
            old = target.with_name(f"{target.name}{_OLD}{_owner()}")
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def temporary_path(path: str | os.PathLike[str], *, owner: str | None = None) -> Path:
    """The temporary name :func:`atomic_write` writes ``path`` under (other ranks filling the same
    folder with an agreed ``owner`` use this to find it)."""
    target = Path(path)
    return target.with_name(f"{target.name}{_TMP}{owner or _owner()}")


def remove_stale_tmp(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary (``<name>.tmp-*``) and swapped-out (``<name>.old-*``) siblings of ``path``
    that a crashed writer left; returns what was removed. Call it only where no other process is
    writing ``path`` at the same time (the owner of a shard, or under a lock)."""
    target = Path(path)
    removed: list[Path] = []
    for marker in (_TMP, _OLD):
        for stale in target.parent.glob(glob.escape(target.name) + marker + "*"):
            _remove(stale)
            removed.append(stale)
            logger.info("removed stale temporary %s", stale)
    return removed


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
