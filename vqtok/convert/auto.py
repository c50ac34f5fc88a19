"""Load a folder or Hub repo published in another code base's layout: recognise it, convert once, cache.

:meth:`vqtok.Tokenizer.from_pretrained` hands every source that is not a plain vqtok folder
to :func:`resolve_pretrained` (registered as the Tokenizer's layout resolver when this module is
imported, which ``import vqtok`` does): the tokenizer does not import the converters, the
converters import the tokenizer.

Recognition (from the file names of the repo or folder, plus ``filename`` / ``subfolder``):

==============================================  ==============  ===================================
files                                           layout          converter
==============================================  ==============  ===================================
``config.json`` with ``"vqtok_format"``         ``vqtok``       none (loaded as is)
``config.json`` (``VQModel``) + diffusers       ``diffusers``   :func:`~vqtok.convert.from_diffusers`
weights, at the root or in ``subfolder``
``flax_model.msgpack`` (+ ``config.json``)      ``dalle-mini``  :func:`~vqtok.convert.from_dalle_mini`
one Lightning ``*.ckpt`` (or ``filename=``)     ``magvit2``,    :func:`~vqtok.convert.from_magvit2` (no
                                                ``ibq`` or      codebook tensor), :func:`~vqtok.convert.from_ibq`
                                                ``taming``      (a codebook and ``model_ema.*`` weights, or
                                                                "ibq" in the repo / file name), else
                                                                :func:`~vqtok.convert.from_taming`
one ``*.pt`` / ``*.pth`` (or ``filename=``)     ``llamagen``    :func:`~vqtok.convert.from_llamagen`
what a registered family's recogniser claims    its format      the family's pure converter
(``vae_*.pth``: VAR; a TiTok ``config.json``)   (``var``, ...)  (:mod:`vqtok.models.registry`)
==============================================  ==============  ===================================

Registered formats are tried right after vqtok's own folders, before the file-suffix rules.

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
from vqtok._io import atomic_write, sha256_file
from vqtok.hub import CONFIG_NAME, WEIGHTS_NAME, load_strict, weights_cache_dir
from vqtok.models import registry
from vqtok.tokenizer import Tokenizer, register_exporter, register_layout_resolver

logger = logging.getLogger(__name__)

__all__ = ["UnrecognisedLayout", "Recognised", "recognise_layout", "resolve_pretrained", "convert_files", "convert_format", "converted_cache_dir", "layouts", "LAYOUTS"]

_BUILTIN_LAYOUTS = ("vqtok", "diffusers", "dalle-mini", "cosmos", "magvit2", "ibq", "taming", "llamagen")


def layouts() -> tuple[str, ...]:
    """Every layout from_pretrained recognises: vqtok's own, the built-in converters' and each registered format."""
    return _BUILTIN_LAYOUTS + tuple(fmt.name for _, fmt in registry.source_formats() if fmt.name not in _BUILTIN_LAYOUTS)


def __getattr__(name: str) -> Any:
    if name == "LAYOUTS":  # computed when asked: registered families add their formats
        return layouts()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_FLAX_WEIGHTS = "flax_model.msgpack"
_LIGHTNING_SUFFIXES = (".ckpt",)
_TORCH_SUFFIXES = (".pt", ".pth")  # found by themselves; a .bin only when named (filename=)
_COMMIT = re.compile(r"[\\/]snapshots[\\/]([0-9a-f]{40})[\\/]")


class UnrecognisedLayout(FileNotFoundError):
    """A folder or repo whose files match no layout vqtok loads (the message lists both)."""


@dataclass(frozen=True)
class Recognised:
    """What :func:`recognise_layout` found: the layout and the files (relative to the folder) its converter reads."""

    layout: str  # one of LAYOUTS; "lightning" is resolved to magvit2 / ibq once the file is read
    files: tuple[str, ...]  # paths relative to the repo root (subfolder included)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # the vqtok loader names the problem
        return None
    return raw if isinstance(raw, dict) else None


def recognise_layout(
    names: Sequence[str],
    *,
    filename: str | None = None,
    subfolder: str | None = None,
    read_config: Callable[[str], Mapping[str, Any] | None] | None = None,
    where: str = "the source",
) -> Recognised:
    """The layout of a repo or folder from its file ``names`` (paths relative to its root, ``/``-separated).

    ``read_config(path)`` returns a parsed ``config.json`` (or None) when the decision needs it
    (vqtok vs diffusers vs dalle-mini). Raises ``ValueError`` naming the files seen and the
    layouts understood when nothing matches, or when several checkpoints leave the choice open.
    """
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    if filename is not None:
        path = prefix + filename
        if path not in names:
            raise FileNotFoundError(f"{where} has no {path!r} (files: {_listing(names)})")
        for _, fmt in registry.source_formats():
            claimed = fmt.recognise([path], read_config or (lambda _p: None)) if fmt.recognise else None
            if claimed:
                return Recognised(fmt.name, claimed)
        lower = filename.lower()
        if lower.endswith(_LIGHTNING_SUFFIXES):
            return Recognised("lightning", (path,))
        if lower.endswith(_TORCH_SUFFIXES + (".bin",)):
            return Recognised("llamagen", (path,))
        if lower.endswith(".msgpack"):
            config = prefix + CONFIG_NAME
            return Recognised("dalle-mini", (config, path) if config in names else (path,))
        raise ValueError(
            f"{filename!r} of {where}: vqtok converts Lightning .ckpt (Open-MAGVIT2, IBQ, taming), LlamaGen .pt and "
            f"Flax .msgpack files by name; for a folder layout leave filename out"
        )
    here = [n[len(prefix) :] for n in names if n.startswith(prefix) and "/" not in n[len(prefix) :]]
    if not here:
        raise UnrecognisedLayout(f"{where} has no files{f' in subfolder {subfolder!r}' if subfolder else ''}")
    config = read_config(prefix + CONFIG_NAME) if (CONFIG_NAME in here and read_config is not None) else None
    if config is not None and "vqtok_format" in config:
        return Recognised("vqtok", (prefix + CONFIG_NAME, prefix + WEIGHTS_NAME))
    for _, fmt in registry.source_formats():
        claimed = fmt.recognise(here, lambda p: read_config(prefix + p) if read_config else None) if fmt.recognise else None
        if claimed:
            return Recognised(fmt.name, tuple(prefix + f for f in claimed))
    weights = [w for w in _DIFFUSERS_WEIGHTS if w in here]
    if weights and CONFIG_NAME in here:
        return Recognised("diffusers", (prefix + CONFIG_NAME, prefix + weights[0]))
    if _FLAX_WEIGHTS in here:
        files = (prefix + CONFIG_NAME, prefix + _FLAX_WEIGHTS) if CONFIG_NAME in here else (prefix + _FLAX_WEIGHTS,)
        return Recognised("dalle-mini", files)
    if "encoder.jit" in here and "decoder.jit" in here:  # NVIDIA Cosmos (tensors read, archive code never run)
        return Recognised("cosmos", (prefix + "encoder.jit", prefix + "decoder.jit"))
    if not subfolder and any(n.startswith("vqvae/") for n in names):
        return recognise_layout(names, subfolder="vqvae", read_config=read_config, where=where)
    for suffixes, layout in ((_LIGHTNING_SUFFIXES, "lightning"), (_TORCH_SUFFIXES, "llamagen")):
        found = sorted(n for n in here if n.lower().endswith(suffixes))
        if len(found) == 1:
            return Recognised(layout, (prefix + found[0],))
        if len(found) > 1:
            raise ValueError(
                f"{where} holds several checkpoints ({', '.join(found)}): pass filename= to choose one"
            )
    raise UnrecognisedLayout(
        f"{where} is in no layout vqtok recognises (files: {_listing(here)}). vqtok loads its own folders "
        f"(config.json + model.safetensors), diffusers VQModel folders (subfolder='vqvae' for a pipeline), "
        f"Flax flax_model.msgpack (dalle-mini VQGAN), Cosmos encoder.jit + decoder.jit, Lightning .ckpt (Open-MAGVIT2, IBQ, taming), LlamaGen .pt "
        f"(filename='vq_ds16_c2i.pt')" + "".join(f", {fmt.help}" for _, fmt in registry.source_formats())
    )


def _listing(names: Sequence[str], n: int = 12) -> str:
    shown = sorted(names)[:n]
    return ", ".join(shown) + (f" (+{len(names) - n} more)" if len(names) > n else "") if shown else "none"


# ------------------------------------------------------------------------------ conversion
def _lightning_family(checkpoint: Any, *, source: str) -> str:
    """Which code base wrote a Lightning checkpoint: ``magvit2``, ``ibq`` or ``taming``.

    No codebook tensor: Open-MAGVIT2 (LFQ). A codebook: IBQ and taming share the tensor names, so
    IBQ is told by its ``model_ema.*`` weights (taming never kept an EMA; the published IBQ files
    do) or by "ibq" in the repo / file name; anything else is a taming VQGAN.
    """
    state = checkpoint["state_dict"] if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} holds no state dict (found {type(state).__name__})")
    keys = {k.removeprefix("module.") for k in state if isinstance(k, str)}
    if "quantize.embedding.weight" not in keys:
        return "magvit2"
    if any(k.startswith("model_ema.") for k in keys) or "ibq" in source.lower():
        return "ibq"
    return "taming"


def convert_format(fam: registry.Family, fmt: registry.SourceFormat, paths: Sequence[Path], *, source: str, **options: Any) -> Tokenizer:
    """A registered family's format: its pure converter gives (config, state dict), loaded strictly."""
    config, state = fmt.run(paths, **options)
    model = fam.model_class(config)
    load_strict(model, state, source=source)
    return Tokenizer(model)


def convert_files(layout: str, paths: Sequence[Path], *, source: str) -> tuple[str, Tokenizer]:
    """Convert local files of ``layout`` (as listed by :class:`Recognised`) to ``(final layout, Tokenizer)``."""
    for fam, fmt in registry.source_formats():
        if fmt.name == layout:
            return layout, convert_format(fam, fmt, paths, source=source)
    if layout == "diffusers":
        from vqtok.convert.diffusers import from_diffusers

        return layout, from_diffusers(paths[0].parent)
    if layout == "dalle-mini":
        from vqtok.convert.dalle_mini import from_dalle_mini

        return layout, from_dalle_mini(paths[-1].parent, weights=paths[-1].name)
    if layout == "cosmos":
        from vqtok.convert.cosmos import from_cosmos

        return layout, from_cosmos(paths[0], paths[1])
    if layout == "llamagen":
        from vqtok.convert.llamagen import from_llamagen

        return layout, from_llamagen(paths[0])
    if layout == "lightning":
        from vqtok.convert.safe_pickle import load_checkpoint

        checkpoint = load_checkpoint(paths[0])  # read once, handed to the family's converter
        family = _lightning_family(checkpoint, source=source)
        if family == "ibq":
            from vqtok.convert.ibq import ibq_tokenizer

            return family, ibq_tokenizer(checkpoint, source=source)
        if family == "taming":
            from vqtok.convert.taming import infer_taming_config, taming_state_dict
            from vqtok.models.vqgan import VQGAN

            state = taming_state_dict(checkpoint)
            vqgan = VQGAN(infer_taming_config(state))
            load_strict(vqgan, state, source=source)
            return family, Tokenizer(vqgan)
        from vqtok.convert.magvit2 import infer_magvit2_config, magvit2_state_dict
        from vqtok.models.magvit2 import MAGVIT2

        state = magvit2_state_dict(checkpoint)
        model = MAGVIT2(infer_magvit2_config(state))
        load_strict(model, state, source=source)
        return family, Tokenizer(model)
    raise ValueError(f"unknown layout {layout!r}; vqtok converts {', '.join(layouts()[1:])}")


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


def _cache_key(repo: str, commit: str, layout: str, paths: Sequence[Path]) -> Path:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode() + b"\0" + _file_hash(p).encode() + b"\0")
    return converted_cache_dir() / _safe(repo.replace("/", "--")) / _safe(commit) / f"{layout}-{digest.hexdigest()[:16]}"


def _convert_cached(repo: str, commit: str, layout: str, paths: Sequence[Path], *, source: str) -> Path:
    # Lightning files are keyed before their family is known: the key is the bytes, not the name.
    target = _cache_key(repo, commit, layout, paths)
    if (target / CONFIG_NAME).is_file() and (target / WEIGHTS_NAME).is_file():
        logger.info("using the converted copy of %s at %s", source, target)
        return target
    family, tok = convert_files(layout, paths, source=source)
    # a whole folder appears at once; one a concurrent conversion completed meanwhile is kept, a broken one replaced
    with atomic_write(target, keep_existing=not target.exists()) as tmp:
        tok.save_pretrained(tmp)
    logger.info("converted %s (%s) once; cached at %s", source, family, target)
    return target


# ------------------------------------------------------------------------------ sources
def _local_names(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _hub_names(repo_id: str, *, revision: str | None, cache_dir: str | None, local_files_only: bool, offline_why: str | None = None) -> list[str]:
    """The repo's file names: asked of the Hub, or read from the cached snapshot when offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    why = offline_why or "downloading is off (local_files_only)"
    if not local_files_only:
        try:
            from huggingface_hub import HfApi

            return sorted(HfApi().list_repo_files(repo_id, revision=revision))
        except Exception as err:  # offline mode, no network, gated repo: fall back to the cache
            from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

            if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)):
                raise FileNotFoundError(f"Hub repo {repo_id!r} (revision {revision or 'main'}): {err}") from err
            why = f"the Hub could not be asked ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            logger.info("cannot list %s on the Hub (%s); using the local cache", repo_id, type(err).__name__)
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError) as err:
        raise FileNotFoundError(
            f"Hub repo {repo_id!r} (revision {revision or 'main'}) is not in the local cache and {why}; download it "
            f"on a connected machine (`hf download {repo_id}`) and point HF_HOME/cache_dir at that cache"
        ) from err
    return _local_names(snapshot)


def _hub_file(
    repo_id: str, path: str, *, revision: str | None, cache_dir: str | None, local_files_only: bool
) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    sub, _, name = path.rpartition("/")
    try:
        return Path(
            hf_hub_download(
                repo_id, name, subfolder=sub or None, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
            )
        )
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{path} of Hub repo {repo_id!r} (revision {revision or 'main'}) is not in the local cache and "
            f"downloading is off or impossible"
        ) from err


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
    cache = str(cache_dir) if cache_dir is not None else None
    local = Path(repo_id_or_dir)
    if local.is_dir():
        root = local
        names = _local_names(root)
        try:
            recognised = recognise_layout(
                names, filename=filename, subfolder=subfolder, read_config=lambda p: _read_json(root / p), where=str(root)
            )
        except UnrecognisedLayout:
            if filename is None and subfolder is None:
                return None  # the vqtok loader says what a model folder must hold
            raise
        if recognised.layout == "vqtok":
            return None if subfolder is None else (root / recognised.files[0]).parent
        paths = [root / f for f in recognised.files]
        return _convert_cached("local-" + _safe(str(root.resolve()))[-80:], "local", recognised.layout, paths, source=str(root))
    if local.is_file() and not local.name.lower().endswith(_LIGHTNING_SUFFIXES + _TORCH_SUFFIXES + (".msgpack",)):
        return None  # the caller's loader explains what a model folder is
    if local.is_file():  # a checkpoint file itself: its name says the layout
        if filename is not None or subfolder is not None:
            raise ValueError(f"{local} is a file: filename= and subfolder= apply to folders and repos")
        root = local.parent
        beside = [CONFIG_NAME] if (root / CONFIG_NAME).is_file() and local.name != CONFIG_NAME else []
        recognised = recognise_layout([local.name, *beside], filename=local.name, where=str(root))
        paths = [root / f for f in recognised.files]
        return _convert_cached("local-" + _safe(str(root.resolve()))[-80:], "local", recognised.layout, paths, source=str(local))
    repo_id = str(repo_id_or_dir)
    if repo_id.count("/") != 1 or hub.looks_like_path(repo_id):
        return None  # the caller's loader explains what a repo id is, or names the missing folder
    offline_why = None if local_files_only else hub.hub_unreachable()
    if offline_why:  # HF_HUB_OFFLINE or no network: the cache only, no retries
        local_files_only = True
    # A vqtok repo is recognised from its config.json alone: no listing, no network beyond the usual.
    if filename is None and subfolder is None:
        try:
            config = _read_json(_hub_file(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache, local_files_only=local_files_only))
        except Exception:  # absent, or not cached: decided from the listing below
            config = None
        if config is not None and "vqtok_format" in config:
            return None
    where = f"Hub repo {repo_id!r}"

    def fetch(path: str) -> Path:
        return _hub_file(repo_id, path, revision=revision, cache_dir=cache, local_files_only=local_files_only)

    names = _hub_names(repo_id, revision=revision, cache_dir=cache, local_files_only=local_files_only, offline_why=offline_why)
    recognised = recognise_layout(
        names, filename=filename, subfolder=subfolder, read_config=lambda p: _read_json(fetch(p)), where=where
    )
    paths = [fetch(f) for f in recognised.files]
    if recognised.layout == "vqtok":
        return paths[0].parent
    match = _COMMIT.search(str(paths[0]))
    commit = match.group(1) if match else (revision or "main")
    return _convert_cached(repo_id, commit, recognised.layout, paths, source=f"{repo_id}/{recognised.files[-1]}")


def _export_diffusers(tokenizer: Tokenizer, directory: str | os.PathLike[str]) -> Path:
    from vqtok.convert.diffusers import to_diffusers

    return to_diffusers(tokenizer, directory)


register_layout_resolver(resolve_pretrained)
register_exporter("diffusers", _export_diffusers)  # for the deprecated Tokenizer.to_diffusers
