"""Load a folder or Hub repo published in another code base's layout: recognise it, convert once, cache.

:meth:`vqtok.Tokenizer.from_pretrained` hands every source that is not a plain vqtok folder
to :func:`resolve_pretrained` (registered as the Tokenizer's layout resolver when this module is
imported, which ``import vqtok`` does): the tokenizer does not import the converters, the
converters import the tokenizer.

The layouts are the registered families' source formats (:mod:`vqtok.models.registry`): each
format's recogniser looks at the file names of the folder (and at ``config.json``) and claims the
files its converter reads. A folder is tried against vqtok's own layout first (``config.json``
with ``"vqtok_format"``), then against the formats that recognise by name or config
(``diffusers``, ``dalle-mini``, ``cosmos``, ``var``, ``titok``), then against those that go by
file suffix alone (a ``.ckpt``: ``taming``, ``magvit2`` or ``ibq``, told apart by the loaded
checkpoint's tensors; a ``.pt``: ``llamagen``). A pipeline's ``vqvae/`` subfolder is found by
itself. ``filename=`` names the file to convert; ``subfolder=`` the folder to look in.

Files are fetched with ``huggingface_hub`` (its cache, ``revision``, ``local_files_only`` and
``HF_HUB_OFFLINE``). The converted folder is kept under ``<vqtok cache>/converted/`` (see
:func:`vqtok.hub.weights_cache_dir`; ``$VQTOK_CACHE`` moves it) at
``<org>--<name>/<commit>/<layout>-<hash of the source files>``, so a repo is converted once
per revision and file content, and a new commit or a changed file converts again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from vqtok import hub
from vqtok._errors import listing
from vqtok._io import atomic_write, sha256_file
from vqtok.convert._build import convert_files
from vqtok.hub import CONFIG_NAME, WEIGHTS_NAME, weights_cache_dir
from vqtok.models import registry
from vqtok.tokenizer import Tokenizer, register_exporter, register_layout_resolver

logger = logging.getLogger(__name__)

__all__ = [
    "UnrecognisedLayout", "Recognised", "Located", "recognise_layout", "locate", "resolve_pretrained", "convert_files",
    "converted_cache_dir", "layouts", "LAYOUTS",
]


def layouts() -> tuple[str, ...]:
    """Every layout from_pretrained recognises: vqtok's own and each registered source format."""
    return ("vqtok",) + tuple(fmt.name for _, fmt in registry.source_formats())


def __getattr__(name: str) -> Any:
    if name == "LAYOUTS":  # computed when asked: registered families add their formats
        return layouts()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_COMMIT = re.compile(r"[\\/]snapshots[\\/]([0-9a-f]{40})[\\/]")


class UnrecognisedLayout(FileNotFoundError):
    """A folder or repo whose files match no layout vqtok loads (the message lists both)."""


@dataclass(frozen=True)
class Recognised:
    """What :func:`recognise_layout` found: the layout and the files (relative to the folder) its converter reads.

    ``layout`` is one of :data:`LAYOUTS`, or several by-suffix formats joined by ``|`` (a
    ``.ckpt`` is ``taming|magvit2|ibq`` until the loaded checkpoint tells which).
    """

    layout: str
    files: tuple[str, ...]  # paths relative to the repo root (subfolder included)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # the vqtok loader names the problem
        return None
    return raw if isinstance(raw, dict) else None


def _formats_help(formats: Sequence[registry.SourceFormat]) -> str:
    return "; ".join(f"{fmt.name}: {fmt.help}" for fmt in formats)


def recognise_layout(
    names: Sequence[str],
    *,
    filename: str | None = None,
    subfolder: str | None = None,
    read_config: Callable[[str], Mapping[str, Any] | None] | None = None,
    where: str = "the source",
    formats: Sequence[str] | None = None,
) -> Recognised:
    """The layout of a repo or folder from its file ``names`` (paths relative to its root, ``/``-separated).

    ``read_config(path)`` returns a parsed ``config.json`` (or None) when a recogniser needs it.
    ``formats`` limits the search to those source formats (``vqtok convert NAME``). Raises
    :class:`UnrecognisedLayout` naming the files seen and the layouts understood when nothing
    matches; ValueError when the named ``filename`` is of no format, or when several checkpoints
    leave the choice open.
    """
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    candidates = [fmt for _, fmt in registry.source_formats() if formats is None or fmt.name in formats]
    if filename is not None:
        if prefix + filename not in names:
            raise FileNotFoundError(f"{where} has no {prefix + filename!r} (files: {_listing(names)})")
        here = [filename] + [CONFIG_NAME for n in names if n == prefix + CONFIG_NAME and filename != CONFIG_NAME]
    else:
        here = [n[len(prefix):] for n in names if n.startswith(prefix) and "/" not in n[len(prefix):]]
        if not here:
            raise UnrecognisedLayout(f"{where} has no files{f' in subfolder {subfolder!r}' if subfolder else ''}")

    def read(path: str) -> Mapping[str, Any] | None:
        return read_config(prefix + path) if read_config is not None else None

    if filename is None and formats is None and CONFIG_NAME in here and "vqtok_format" in (read(CONFIG_NAME) or {}):
        return Recognised("vqtok", (prefix + CONFIG_NAME, prefix + WEIGHTS_NAME))
    claims: list[tuple[registry.SourceFormat, tuple[str, ...]]] = []
    several: ValueError | None = None
    for fmt in candidates:  # the first claim wins; by-suffix formats with `accepts` that claim the same files join it
        try:
            files = fmt.recognise(here, read) if fmt.recognise else None
        except ValueError as err:  # several checkpoints: an error only if no other format claims the folder
            several = several or err
            continue
        if files and (filename is None or filename in files):
            if not claims or (claims[0][0].accepts and fmt.accepts and files == claims[0][1]):
                claims.append((fmt, files))
    if claims:
        return Recognised("|".join(fmt.name for fmt, _ in claims), tuple(prefix + f for f in claims[0][1]))
    if several is not None:
        raise ValueError(f"{where} holds {several}") from None
    if filename is None and not subfolder and any(n.startswith("vqvae/") for n in names):  # a diffusers pipeline
        return recognise_layout(names, subfolder="vqvae", read_config=read_config, where=where, formats=formats)
    if filename is not None:
        raise ValueError(f"{filename!r} of {where} is a file of no format vqtok converts: {_formats_help(candidates)}")
    if formats is not None:
        raise UnrecognisedLayout(f"{where} holds no {_formats_help(candidates)} (files: {_listing(here)})")
    raise UnrecognisedLayout(
        f"{where} is in no layout vqtok recognises (files: {_listing(here)}). vqtok loads its own folders "
        f"(config.json + model.safetensors) and converts: {_formats_help(candidates)}"
    )


def _listing(names: Sequence[str]) -> str:
    return listing(sorted(names), 12) or "none"


# ------------------------------------------------------------------------------ conversion
def converted_cache_dir() -> Path:
    """Where converted folders are kept: ``<vqtok cache>/converted`` (``$VQTOK_CACHE`` moves the cache)."""
    return weights_cache_dir() / "converted"


def _file_hash(path: Path) -> str:
    """The content hash of a file: the Hub cache names blobs by it (sha256 for LFS files); else sha256 it."""
    blob = path.resolve()
    if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob.name):
        return blob.name
    return sha256_file(path)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _convert_cached(found: Located) -> Path:
    # A .ckpt is keyed before its family is known: the key is the bytes, not the name.
    digest = hashlib.sha256()
    for p in found.paths:
        digest.update(p.name.encode() + b"\0" + _file_hash(p).encode() + b"\0")
    target = (converted_cache_dir() / _safe(found.repo.replace("/", "--")) / _safe(found.commit)
              / f"{_safe(found.layout)}-{digest.hexdigest()[:16]}")
    if (target / CONFIG_NAME).is_file() and (target / WEIGHTS_NAME).is_file():
        logger.info("using the converted copy of %s at %s", found.source, target)
        return target
    name, tok = convert_files(found.layout, found.paths, source=found.source)
    # a whole folder appears at once; one a concurrent conversion completed meanwhile is kept, a broken one replaced
    with atomic_write(target, keep_existing=not target.exists()) as tmp:
        tok.save_pretrained(tmp)
    logger.info("converted %s (%s) once; cached at %s", found.source, name, target)
    return target


# ------------------------------------------------------------------------------ sources
def _local_names(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Located:
    """The local files of one source in a recognised layout (see :func:`locate`)."""

    layout: str  # as in Recognised
    paths: tuple[Path, ...]  # local files, in the order the converter takes them
    repo: str  # the conversion cache's key: "org--name" of a Hub repo, "local-..." of a folder
    commit: str  # the Hub commit of the files, "local" for a folder
    source: str  # names the source in messages


def locate(
    source: str | os.PathLike[str],
    *,
    filename: str | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    formats: Sequence[str] | None = None,
) -> Located | None:
    """Recognise ``source`` (a folder, a checkpoint file or a Hub repo id) and fetch the files its converter reads.

    Returns None where the vqtok loader should take ``source`` as it is: a plain vqtok folder or
    repo, or something that is neither a folder, a checkpoint file nor a repo id (the loader
    explains). ``formats`` limits recognition to those formats (``vqtok convert NAME``): then a
    file the format's recogniser does not claim is still handed to it, as the user named it.
    """
    cache = str(cache_dir) if cache_dir is not None else None
    local = Path(source)
    root = local if local.is_dir() else local.parent
    if local.is_dir():
        try:
            recognised = recognise_layout(
                _local_names(local), filename=filename, subfolder=subfolder, read_config=lambda p: _read_json(root / p),
                where=str(local), formats=formats,
            )
        except UnrecognisedLayout:
            if filename is None and subfolder is None and formats is None:
                return None  # the vqtok loader says what a model folder must hold
            raise
        if recognised.layout == "vqtok" and subfolder is None:
            return None
    elif local.is_file():  # a checkpoint file itself: its name (and a config.json beside it) says the layout
        if filename is not None or subfolder is not None:
            raise ValueError(f"{local} is a file: filename= and subfolder= apply to folders and repos")
        beside = [CONFIG_NAME] if (root / CONFIG_NAME).is_file() and local.name != CONFIG_NAME else []
        try:
            recognised = recognise_layout([local.name, *beside], filename=local.name, where=str(root), formats=formats,
                                          read_config=lambda p: _read_json(root / p))
        except ValueError:  # no format claims it
            if formats is None:
                return None  # the caller's loader explains what a model folder is
            recognised = Recognised(formats[0], (local.name,))
    else:  # a Hub repo id
        repo_id = str(source)
        if repo_id.count("/") != 1 or hub.looks_like_path(repo_id):
            if formats is None:
                return None  # the caller's loader explains what a repo id is, or names the missing folder
            raise FileNotFoundError(f"{repo_id} is neither a file, a folder nor a Hub repo id (org/name)")
        offline_why = None if local_files_only else hub.hub_unreachable()
        if offline_why:  # HF_HUB_OFFLINE or no network: the cache only, no retries
            local_files_only = True

        def fetch(path: str) -> Path:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import LocalEntryNotFoundError

            sub, _, name = path.rpartition("/")
            try:
                return Path(hf_hub_download(repo_id, name, subfolder=sub or None, revision=revision, cache_dir=cache,
                                            local_files_only=local_files_only))
            except LocalEntryNotFoundError as err:
                raise FileNotFoundError(
                    f"{path} of Hub repo {repo_id!r} (revision {revision or 'main'}) is not in the local cache and "
                    f"downloading is off or impossible"
                ) from err

        # A vqtok repo is recognised from its config.json alone: no listing, no network beyond the usual.
        if filename is None and subfolder is None and formats is None:
            try:
                config = _read_json(fetch(CONFIG_NAME))
            except Exception:  # absent, or not cached: decided from the listing below
                config = None
            if "vqtok_format" in (config or {}):
                return None

        # the repo's file names: asked of the Hub, or read from the cached snapshot when offline
        names: list[str] | None = None
        why = offline_why or "downloading is off (local_files_only)"
        if not local_files_only:
            try:
                from huggingface_hub import HfApi

                names = sorted(HfApi().list_repo_files(repo_id, revision=revision))
            except Exception as err:  # offline mode, no network, gated repo: fall back to the cache
                from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

                if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)):
                    raise FileNotFoundError(f"Hub repo {repo_id!r} (revision {revision or 'main'}): {err}") from err
                why = f"the Hub could not be asked ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                logger.info("cannot list %s on the Hub (%s); using the local cache", repo_id, type(err).__name__)
        if names is None:
            from huggingface_hub import snapshot_download

            try:
                snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
            except FileNotFoundError as err:  # LocalEntryNotFoundError included
                raise FileNotFoundError(
                    f"Hub repo {repo_id!r} (revision {revision or 'main'}) is not in the local cache and {why}; download "
                    f"it on a connected machine (`hf download {repo_id}`) and point HF_HOME/cache_dir at that cache"
                ) from err
            names = _local_names(snapshot)
        recognised = recognise_layout(
            names, filename=filename, subfolder=subfolder, read_config=lambda p: _read_json(fetch(p)),
            where=f"Hub repo {repo_id!r}", formats=formats,
        )
        paths = tuple(fetch(f) for f in recognised.files)
        match = _COMMIT.search(str(paths[0]))
        commit = match.group(1) if match else (revision or "main")
        return Located(recognised.layout, paths, repo_id, commit, f"{repo_id}/{recognised.files[-1]}")
    return Located(recognised.layout, tuple(root / f for f in recognised.files), "local-" + _safe(str(root.resolve()))[-80:], "local", str(local))


def resolve_pretrained(
    repo_id_or_dir: str | os.PathLike[str],
    *,
    filename: str | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Path | None:
    """A local vqtok folder for ``repo_id_or_dir`` in any recognised layout (converted once, then cached).

    Returns None for a plain vqtok folder or repo (no ``filename``/``subfolder``): the caller loads it
    as before. See the module docstring for the layouts and the cache.
    """
    found = locate(
        repo_id_or_dir, filename=filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    if found is None:
        return None
    if found.layout == "vqtok":
        return found.paths[0].parent
    return _convert_cached(found)


def _export_diffusers(tokenizer: Tokenizer, directory: str | os.PathLike[str]) -> Path:
    from vqtok.convert.diffusers import to_diffusers

    return to_diffusers(tokenizer, directory)


register_layout_resolver(resolve_pretrained)
register_exporter("diffusers", _export_diffusers)  # for the deprecated Tokenizer.to_diffusers
