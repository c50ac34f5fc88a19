"""Reading WebDataset tar shards: one place for the rules that training, evaluation and
pre-tokenization share.

A WebDataset shard is a tar whose members ``<key>.<ext>`` are grouped into samples: consecutive
members with the same key form one sample, ``{ext: bytes}`` (webdataset's own rule; the key is
everything up to the first dot of the file name, directories included). Plain, gzip, bzip2 and
xz tars are read in order, one member at a time.

A truncated or corrupt tar does not raise: :func:`read_samples` yields the samples read so far,
then one :class:`TarSample` with key :data:`TRUNCATED_KEY` and ``error`` set, so a long job can
record it and go on with the next shard.
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "IMAGE_FIELDS",
    "SHARD_SUFFIXES",
    "TAR_ERRORS",
    "TRUNCATED_KEY",
    "TarSample",
    "check_complete",
    "group_members",
    "image_field",
    "is_remote",
    "is_shard",
    "read_samples",
    "split_key",
]

# Sample fields tried, in this order, as the sample's image.
IMAGE_FIELDS: tuple[str, ...] = (
    "jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pbm", "img", "image",
)
SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")
# What reading a damaged tar can raise (zlib.error: a corrupt gzip stream).
TAR_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error)
TRUNCATED_KEY = "<rest of shard>"  # key of the error sample for the unreadable tail of a shard

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key / extension split
V = TypeVar("V")


def split_key(name: str) -> tuple[str, str] | None:
    """``"dir/000123.seg.png"`` -> ``("dir/000123", "seg.png")``; None for names without an extension."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def group_members(members: Iterable[tuple[str, V]]) -> Iterator[tuple[str, dict[str, V]]]:
    """(member name, value) pairs -> (key, {ext: value}) samples; members without an extension are skipped."""
    key: str | None = None
    fields: dict[str, V] = {}
    for name, value in members:
        split = split_key(name)
        if split is None:
            continue
        k, ext = split
        if k != key:
            if key is not None:
                yield key, fields
            key, fields = k, {}
        fields[ext] = value
    if key is not None:
        yield key, fields


def is_remote(spec: str | os.PathLike[str]) -> bool:
    """Whether a shard spec is remote: ``pipe:...`` or ``scheme://...`` (except ``file://``)."""
    if not isinstance(spec, str):
        return False
    return spec.startswith("pipe:") or (_SCHEME.match(spec) is not None and not spec.startswith("file://"))


def is_shard(path: str | os.PathLike[str]) -> bool:
    """Whether the file name is a tar shard's (``.tar``, ``.tar.gz``, ``.tgz``)."""
    return os.fspath(path).lower().endswith(SHARD_SUFFIXES)


def image_field(fields: Mapping[str, object], exts: Sequence[str] = IMAGE_FIELDS) -> str | None:
    """The field holding the sample's image: the first of ``exts`` present, in any letter case
    (``JPG`` counts as ``jpg``); None when there is none."""
    lower = {f.lower(): f for f in reversed(list(fields))}  # the first spelling wins
    return next((lower[ext] for ext in exts if ext in lower), None)


@dataclass(frozen=True)
class TarSample:
    """One sample of a shard: ``fields`` maps extension -> bytes; ``error`` marks an unreadable tail."""

    key: str
    fields: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None

    @property
    def image(self) -> bytes | None:
        ext = image_field(self.fields)
        return None if ext is None else self.fields[ext]

    def missing_image(self) -> str:
        """Why this sample has no image, naming the fields it has."""
        have = ", ".join(sorted(self.fields)) or "nothing"
        return f"no image field (looked for {'/'.join(IMAGE_FIELDS[:6])}/...; have {have})"


def check_complete(tf: tarfile.TarFile) -> None:
    """After iterating ``tf`` (opened seekable, ``"r:*"``): raise ``tarfile.ReadError`` unless the
    archive ended with its end-of-archive marker.

    tarfile stops quietly at a cut or garbled header after the first member; a complete tar has a
    zero block where the iteration stopped.
    """
    assert tf.fileobj is not None
    tf.fileobj.seek(tf.offset)
    block = tf.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"no end-of-archive marker at byte {tf.offset} (cut or garbled header)")


def read_samples(path: str | os.PathLike[str]) -> Iterator[TarSample]:
    """The samples of one tar shard, read in tar order (see the module docstring for errors).

    Members are read whole and checked for length, and the archive for its end marker, so the
    sample in progress when a tar breaks is yielded with its complete members only, before the
    error sample.
    """
    members = 0
    error: str | None = None

    def stream() -> Iterator[tuple[str, bytes]]:
        nonlocal members, error
        try:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    fh = tf.extractfile(m)
                    data = fh.read() if fh is not None else b""
                    if len(data) != m.size:
                        raise tarfile.ReadError(f"member {m.name} is cut off ({len(data)} of {m.size} bytes)")
                    members += 1
                    yield m.name, data
                check_complete(tf)
        except TAR_ERRORS as err:
            error = f"truncated or corrupt tar after {members} members: {type(err).__name__}: {err}"

    for key, fields in group_members(stream()):
        yield TarSample(key, fields)
    if error is not None:
        yield TarSample(TRUNCATED_KEY, error=error)
