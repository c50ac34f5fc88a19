"""Remote input shards for ``pretokenize``: URLs and ``pipe:`` commands.

A remote shard is copied to a local file first (``<output>/.incoming/<name>``, written under a
temporary name and renamed when the copy is complete and the command or download succeeded),
tokenized like a local shard, then deleted; the next shard downloads while one is tokenized.
Opening uses webdataset's ``gopen``, so every scheme webdataset reads works here: ``pipe:CMD``
(the command's stdout is the tar), ``http(s)://`` (through ``curl``), ``gs://`` (``gsutil``),
``hf://``, ``ais://``, ``sftp://``/``scp://``. A failed command or download is reported, and its
shard is left undone so that a re-run fetches it again.

The output is named after the shard's file name: the URL's last path component, or for
``pipe:`` the last word of the command that ends in ``.tar``/``.tar.gz``/``.tgz``
(``pipe:aws s3 cp s3://bucket/train-000001.tar -`` -> ``train-000001.tar``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from vqtok._io import atomic_write
from vqtok.tars import is_remote, is_shard

__all__ = ["fetch", "is_remote", "shard_name"]


def shard_name(spec: str) -> str:
    """The shard's file name (see the module docstring); ValueError when it cannot be told."""
    if spec.startswith("pipe:"):
        words = [urlparse(w).path for w in shlex.split(spec[len("pipe:") :])]
        names = [PurePosixPath(w).name for w in words if is_shard(w)]
        if not names:
            raise ValueError(
                f"cannot name the output of {spec!r}: no word of the command ends in .tar, .tar.gz or .tgz"
            )
        return names[-1]
    name = PurePosixPath(urlparse(spec).path).name
    if not is_shard(name):
        raise ValueError(f"cannot name the output of {spec!r}: its path does not end in .tar, .tar.gz or .tgz")
    return name


def fetch(spec: str, folder: str | os.PathLike[str]) -> Path:
    """Copy the remote shard ``spec`` to ``folder/<shard name>`` and return that path.

    The copy is written under a temporary name (:func:`vqtok._io.atomic_write`) and renamed only
    after the stream ended and the command/download exited successfully, so ``<name>`` is always a
    whole copy. Raises OSError (failed command, HTTP error, ...) and leaves nothing behind.
    """
    from webdataset.gopen import gopen

    dst = Path(folder) / shard_name(spec)
    with atomic_write(dst) as tmp, contextlib.closing(gopen(spec, "rb")) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return dst
