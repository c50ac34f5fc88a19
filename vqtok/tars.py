"""WebDataset image shards: naming them (:func:`expand_shards`, :func:`is_remote`) and reading them
(:func:`read_samples`, :func:`index_shard`), one set of rules for training, evaluation and pre-tokenization.

A WebDataset shard is a tar whose members ``<key>.<ext>`` are grouped into samples: consecutive
members with the same key form one sample, ``{ext: bytes}`` (webdataset's own rule; the key is
everything up to the first dot of the file name, directories included). Plain, gzip, bzip2 and
xz tars are read in order, one member at a time.

One verdict for damaged shards (every reader gets the same samples and the same errors):

* a key seen earlier in the shard (its members are not consecutive) gives a sample with ``error``
  set (outputs are named by key, so the two cannot both be kept); so does a sample with the same
  member twice (``a.jpg`` twice in a row: :data:`REPEATED_MEMBER`);
* a member whose file name starts with a dot (``.a.jpg``, ``dir/.a.jpg``: no key by webdataset's
  rule) gives a sample with that name as key and ``error`` :data:`HIDDEN_NAME`; other members without
  an extension (``README``) are not samples and are skipped;
* keys are made safe to use as file and member names: empty, ``.`` and ``..`` parts are dropped
  (``../../x`` and ``/x`` become ``x``; a clash with another key is then a repeated key);
* a member larger than :data:`MAX_MEMBER_BYTES`, or a header whose size or offset does not fit in
  memory, counts as a corrupt tar (below);
* a truncated or corrupt tar does not raise: the samples read so far are yielded, then one
  :class:`TarSample` with key :data:`TRUNCATED_KEY` and ``error`` set. The sample in progress when
  the tar broke is kept only when the break is known to lie in a member of a *later* sample (the
  cut member's header names another key); otherwise it may be missing fields and gets ``error``
  too.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar, Union

from vqtok._errors import listing, reason
from vqtok.images import IMAGE_SUFFIXES

__all__ = [
    "DUPLICATE_KEY",
    "IMAGE_FIELDS",
    "SHARD_SUFFIXES",
    "TRUNCATED_KEY",
    "ShardIndex",
    "Span",
    "TarSample",
    "expand_shards",
    "group_members",
    "image_field",
    "index_shard",
    "is_remote",
    "is_shard",
    "read_samples",
    "split_key",
]

# Sample fields tried, in this order, as the sample's image.
IMAGE_FIELDS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pbm", "img", "image")
SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")
# What reading a damaged tar can raise (zlib.error: a corrupt gzip stream; OverflowError: a header
# whose size or offset does not fit in a C integer).
_TAR_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, OSError, ValueError, OverflowError, zlib.error)
MAX_MEMBER_BYTES = 1 << 31  # a member claiming more (2 GiB) makes the tar corrupt: no image or field is that large
_READ_CHUNK = 1 << 20
TRUNCATED_KEY = "<rest of shard>"  # key of the error sample for the unreadable tail of a shard
DUPLICATE_KEY = "duplicate key (its members are not consecutive in the tar)"  # error of a repeated key
REPEATED_MEMBER = "duplicate member (the same file name twice in one sample)"  # error of ``a.jpg`` twice
HIDDEN_NAME = "file name starts with a dot (no key)"  # error of ``.a.jpg``
Span = tuple[int, int]  # (offset, size) of a member's data inside an uncompressed tar file

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key / extension split
V = TypeVar("V")
F = TypeVar("F", bytes, Union[bytes, Span])


def split_key(name: str) -> tuple[str, str] | None:
    """``"dir/000123.seg.png"`` -> ``("dir/000123", "seg.png")``; None for names without an extension."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def safe_key(key: str) -> str:
    """``key`` without empty, ``.`` and ``..`` parts (``../../x`` -> ``x``): safe as a file or member name."""
    return "/".join(p for p in key.split("/") if p not in ("", ".", ".."))


def group_members(members: Iterable[tuple[str, V]]) -> Iterator[tuple[str, dict[str, V]]]:
    """(member name, value) pairs -> (key, {ext: value}) samples; members without an extension are skipped."""
    named = ((split, value) for name, value in members if (split := split_key(name)) is not None)
    for key, group in itertools.groupby(named, key=lambda item: item[0][0]):
        yield key, {ext: value for (_, ext), value in group}


def is_remote(spec: str | os.PathLike[str]) -> bool:
    """Whether a shard spec is remote: ``pipe:...`` or ``scheme://...`` (except ``file://``)."""
    return isinstance(spec, str) and (spec.startswith("pipe:") or (_SCHEME.match(spec) is not None and not spec.startswith("file://")))


def is_shard(path: str | os.PathLike[str]) -> bool:
    """Whether the file name is a tar shard's (``.tar``, ``.tar.gz``, ``.tgz``)."""
    return os.fspath(path).lower().endswith(SHARD_SUFFIXES)


def image_field(fields: Mapping[str, object], exts: Sequence[str] = IMAGE_FIELDS) -> str | None:
    """The field holding the sample's image: the first of ``exts`` present, in any letter case
    (``JPG`` counts as ``jpg``); None when there is none."""
    lower = {f.lower(): f for f in reversed(list(fields))}  # the first spelling wins
    return next((lower[ext] for ext in exts if ext in lower), None)


@dataclass(frozen=True)
class TarSample(Generic[F]):
    """One sample of a shard: ``fields`` maps extension -> bytes (a :data:`Span` in an index of an
    uncompressed tar); ``error`` set means the sample must be skipped (see the module docstring)."""

    key: str
    fields: dict[str, F] = field(default_factory=dict)
    error: str | None = None

    @property
    def image(self) -> F | None:
        ext = image_field(self.fields)
        return None if ext is None else self.fields[ext]

    def missing_image(self, exts: Sequence[str] = IMAGE_FIELDS) -> str:
        """Why this sample has no image, naming the fields it has."""
        have = ", ".join(sorted(self.fields)) or "nothing"
        return f"no image field (looked for {'/'.join(exts[:6])}/...; have {have})"


def _check_complete(tf: tarfile.TarFile) -> None:
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


_BAD_HEADER = "_vqtok_bad_header"


class _HeaderCheck(tarfile.TarInfo):
    """Records on the TarFile why a header could not be read where tarfile itself just stops
    (a stream cannot be sought back to look, as :func:`_check_complete` does)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:  # the zero block of a complete tar
            raise
        except tarfile.HeaderError as err:
            setattr(tarfile_, _BAD_HEADER, reason(err))
            raise


def _member_bytes(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    """The whole data of member ``m``; ReadError when the tar ends before it does (read in chunks: memory
    holds what the tar has, not what it claims)."""
    fh = tf.extractfile(m)
    assert fh is not None, "a file member has data"
    data = b"".join(iter(functools.partial(fh.read, _READ_CHUNK), b""))  # reads stop at the member's end
    if len(data) != m.size:
        raise tarfile.ReadError(f"member {m.name} is cut off ({len(data)} of {m.size} bytes)")
    return data


@dataclass
class _Reading:
    """What one pass over a tar found besides its members: the tail error and where it happened."""

    members: int = 0
    error: str | None = None
    cut_key: str | None = None  # key of the member whose data was cut, when known
    seekable: bool = False  # members were given as Spans (uncompressed tar read by offset)
    _reading: str | None = None  # the member whose data is being read

    def members_of(self, path: str | os.PathLike[str], *, by_offset: bool) -> Iterator[tuple[str, bytes | Span]]:
        """(name, data) of the tar's file members; ``by_offset``: Spans instead of bytes for plain tars.
        A remote shard (:func:`is_remote`) is streamed through webdataset's ``gopen``."""
        try:
            if is_remote(path):  # a stream: read once, in order
                from webdataset.gopen import gopen

                with contextlib.closing(gopen(str(path), "rb")) as stream, tarfile.open(fileobj=stream, mode="r|*", tarinfo=_HeaderCheck) as tf:
                    yield from self._members(tf)
                    bad = getattr(tf, _BAD_HEADER, None)
                    if bad is not None:  # tarfile ends quietly at a cut or garbled header after the first member
                        raise tarfile.ReadError(f"no end-of-archive marker (cut or garbled header: {bad})")
                return
            if by_offset:
                with open(path, "rb") as fh:
                    magic = fh.read(6)
                self.seekable = not magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))  # not gzip, bzip2 or xz
            with tarfile.open(path, "r:" if self.seekable else "r:*") as tf:
                yield from self._members(tf)
                _check_complete(tf)
        except _TAR_ERRORS as err:
            self.error = f"truncated or corrupt tar after {self.members} members: {reason(err)}"
            split = split_key(self._reading) if self._reading is not None else None
            self.cut_key = safe_key(split[0]) if split is not None else None

    def _members(self, tf: tarfile.TarFile) -> Iterator[tuple[str, bytes | Span]]:
        """(name, data) of the file members of ``tf``: Spans when :attr:`seekable`, else whole bytes; a
        member larger than :data:`MAX_MEMBER_BYTES`, or cut off, is a ReadError."""
        size = os.fstat(tf.fileobj.fileno()).st_size if self.seekable and tf.fileobj is not None else 0
        for m in tf:
            if not m.isfile():
                continue
            self._reading = m.name
            if m.size > MAX_MEMBER_BYTES:
                raise tarfile.ReadError(f"member {m.name} claims {m.size} bytes (more than {MAX_MEMBER_BYTES})")
            if self.seekable and m.offset_data + m.size > size:
                raise tarfile.ReadError(f"member {m.name} is cut off")
            value: bytes | Span = (m.offset_data, m.size) if self.seekable else _member_bytes(tf, m)
            self._reading = None
            self.members += 1
            yield m.name, value

    def samples(self, members: Iterable[tuple[str, F]]) -> Iterator[TarSample[F]]:
        """Group members into samples and give the verdicts of the module docstring."""
        seen: set[str] = set()
        for key, fields, problem in _group(members):
            error = problem or (DUPLICATE_KEY if key in seen else None)
            seen.add(key)
            # _group holds a sample until the next key arrives, so a sample reaching here
            # after the tar broke is the one in progress at the break.
            if self.error is not None and error is None and self.cut_key in (None, key):
                error = self.error
            yield TarSample(key, fields, error)
        if self.error is not None:
            yield TarSample(TRUNCATED_KEY, error=self.error)


def _group(members: Iterable[tuple[str, V]]) -> Iterator[tuple[str, dict[str, V], str | None]]:
    """:func:`group_members` with safe keys (:func:`safe_key`) and the member-level verdicts:
    (key, fields, error or None); a dot-named member is a sample of its own (:data:`HIDDEN_NAME`)."""
    key: str | None = None
    fields: dict[str, V] = {}
    problem: str | None = None
    for name, value in members:
        split = split_key(name)
        if split is None:
            if name.rpartition("/")[2].startswith("."):
                if key is not None:
                    yield key, fields, problem
                    key, fields, problem = None, {}, None
                yield safe_key(name), {}, HIDDEN_NAME
            continue
        k, ext = safe_key(split[0]), split[1]
        if k != key:
            if key is not None:
                yield key, fields, problem
            key, fields, problem = k, {}, None
        if ext in fields:
            problem = REPEATED_MEMBER
        fields[ext] = value
    if key is not None:
        yield key, fields, problem


def read_samples(path: str | os.PathLike[str]) -> Iterator[TarSample[bytes]]:
    """The samples of one tar shard, read in tar order, members whole (verdicts: module docstring)."""
    reading = _Reading()
    yield from reading.samples(reading.members_of(path, by_offset=False))  # type: ignore[misc]


@dataclass
class ShardIndex:
    """The samples of a shard without their image data: uncompressed tars give :data:`Span` fields
    (read them with :meth:`read`), compressed ones bytes. The last sample is the
    :data:`TRUNCATED_KEY` one when the tar is damaged."""

    path: Path
    samples: list[TarSample[bytes | Span]]
    seekable: bool  # fields are Spans into ``path``

    @staticmethod
    def read(fh: BinaryIO | None, value: bytes | Span) -> bytes:
        """A field's bytes: ``value`` itself, or its Span read from ``fh`` (the shard opened ``"rb"``)."""
        if isinstance(value, bytes):
            return value
        assert fh is not None, "a Span field needs the shard file open"
        offset, size = value
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise EOFError(f"read {len(data)} of {size} bytes at {offset}")
        return data


def index_shard(path: str | os.PathLike[str]) -> ShardIndex:
    """List the samples of a shard, with the verdicts of :func:`read_samples`, reading image data only
    from compressed tars (an uncompressed tar's fields are Spans, read later by offset)."""
    reading = _Reading()
    samples = list(reading.samples(reading.members_of(path, by_offset=True)))
    return ShardIndex(Path(path), samples, reading.seekable)


def expand_shards(specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, images: bool = False) -> list[str]:
    """Shard specs -> shards, in order, without repeats (the one expander of vqtok).

    A spec is a shard file, a brace pattern (``data/train-{000000..000999}.tar``, expanded in its
    written order, also inside URLs and ``pipe:`` commands), a glob (``*``, ``**``; each sorted), a
    folder (its shards, searched recursively, hidden folders skipped) or a remote shard
    (``pipe:...``, ``https://...``; see :func:`is_remote`), which passes through unchecked.
    ``images=True`` (evaluation) also takes image files, and a folder with images gives its images
    instead of its shards. Raises FileNotFoundError naming the specs that match nothing.
    """
    from braceexpand import braceexpand  # a dependency of webdataset

    items = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    if not items:
        raise ValueError("no input shards given")
    wanted = SHARD_SUFFIXES + (IMAGE_SUFFIXES if images else ())
    out: list[str] = []
    missing: list[str] = []
    for item in items:
        for pattern in braceexpand(os.fspath(item)):
            if is_remote(pattern):
                out.append(pattern)
                continue
            pattern = os.path.expanduser(pattern)
            p = Path(pattern)
            if p.is_dir():
                found = _folder_files(p, IMAGE_SUFFIXES) if images else []
                found = found or _folder_files(p, SHARD_SUFFIXES)
                if not found:
                    missing.append(f"{pattern} (folder without {'images or ' if images else ''}shards)")
                out += found
            elif p.is_file():
                out.append(pattern)
            elif glob.has_magic(pattern):
                found = [m for m in sorted(glob.glob(pattern, recursive=True)) if m.lower().endswith(wanted) and Path(m).is_file()]
                if not found:
                    missing.append(f"{pattern} (glob matches no {'image or ' if images else ''}shard)")
                out += found
            else:
                missing.append(pattern)
    if missing:
        raise FileNotFoundError(f"{len(missing)} input(s) not found (no such folder, file or shard): {listing(missing, 3)}")
    return list(dict.fromkeys(out))


def _folder_files(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``folder`` (recursively, hidden folders such as ``.incoming`` skipped) ending in ``suffixes``, sorted."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.lower().endswith(suffixes)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]) and p.is_file())
