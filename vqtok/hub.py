"""All weight-file and Hugging Face Hub I/O for vqtok lives here.

Our on-disk format is a folder with two files:

* ``model.safetensors`` – the tensors (no pickle, safe to load from anyone);
* ``config.json`` – ``{"vqtok_format": 1, "model_type": "<kind>", ...config fields}``.

A folder like that can be a local directory or a Hub repository; ``load_pretrained``
accepts both and uses ``huggingface_hub``'s own download cache for the latter.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from vqtok._errors import is_int, listing
from vqtok._io import atomic_write, sha256_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

__all__ = [
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "save_pretrained",
    "load_pretrained",
    "push_to_hub",
    "resolve_folder",
    "read_config_json",
    "load_strict",
    "build_for_weights",
    "download_weights",
    "weights_cache_dir",
]


def save_pretrained(
    directory: str | os.PathLike[str],
    *,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    model_type: str,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    payload = {"vqtok_format": FORMAT_VERSION, "model_type": model_type, **dict(config)}
    # config.json is renamed last: a folder with a config always has its whole weights file.
    with atomic_write(out / CONFIG_NAME) as tmp_config:
        tmp_config.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        with atomic_write(out / WEIGHTS_NAME) as tmp_weights:
            save_file(tensors, str(tmp_weights), metadata={"format": "pt", "vqtok_format": str(FORMAT_VERSION)})
    logger.info("saved %s model to %s", model_type, out)
    return out


_VQTOK_FOLDER = f"a vqtok model folder holds {CONFIG_NAME} and {WEIGHTS_NAME} (write one with save_pretrained)"


def resolve_folder(
    repo_id_or_dir: str | os.PathLike[str],
    *,
    files: Sequence[str | Sequence[str]] = (CONFIG_NAME, WEIGHTS_NAME),
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    what: str = _VQTOK_FOLDER,
) -> Path:
    """Return a local folder holding ``files`` (the one folder resolver of vqtok).

    Each entry of ``files`` is a file name or a sequence of alternative names (the first present
    wins). A path that exists locally is used as is (``subfolder`` inside it); anything else is
    treated as a Hub repo id and fetched through ``huggingface_hub`` (which owns caching, revisions
    and offline mode). ``what`` ends the error for a local folder that lacks a file.
    """
    wanted = [(f,) if isinstance(f, str) else tuple(f) for f in files]
    path = Path(repo_id_or_dir).expanduser()
    if path.is_dir():
        folder = path / subfolder if subfolder else path
        missing = [alt[0] for alt in wanted if not any((folder / n).is_file() for n in alt)]
        if missing:
            raise FileNotFoundError(f"{folder} has no {' and no '.join(missing)}; {what}")
        return folder
    if path.exists():
        raise ValueError(f"{path} is a file, not a model folder; to import a foreign checkpoint use `vqtok convert`")
    repo_id = str(repo_id_or_dir)
    if looks_like_path(repo_id):
        raise FileNotFoundError(f"no such model folder: {repo_id}")
    if repo_id.count("/") != 1:
        raise FileNotFoundError(f"no such model folder: {repo_id} (and not a Hub repo id of the form 'org/name')")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"Hub repo {repo_id!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    unreachable = None if local_files_only else hub_unreachable()
    if unreachable:  # no network: read the cache only (huggingface_hub would retry for ~30 s first)
        local_files_only = True
    for alternatives in wanted:
        for name in alternatives:
            try:
                file = hf_hub_download(
                    repo_id,
                    name,
                    subfolder=subfolder,
                    revision=revision,
                    cache_dir=str(cache_dir) if cache_dir is not None else None,
                    local_files_only=local_files_only,
                )
            except (RepositoryNotFoundError, EntryNotFoundError) as err:  # LocalEntryNotFoundError is an EntryNotFoundError
                if name != alternatives[-1]:
                    continue
                if isinstance(err, LocalEntryNotFoundError):
                    why = unreachable or "downloading is off (HF_HUB_OFFLINE or local_files_only)"
                    raise FileNotFoundError(
                        f"{name} of {where} (revision {revision or 'main'}) is not in the local cache and {why}; "
                        f"download it on a connected machine (`hf download {repo_id}`) and point HF_HOME/cache_dir "
                        f"at that cache"
                    ) from None
                hint = "" if subfolder else " (a pipeline repo keeps its model in a subfolder, e.g. subfolder='vqvae')"
                raise FileNotFoundError(f"{where} has no {name}{hint}: {err}") from err
            break
    return Path(file).parent  # every file lies in this one snapshot folder


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub repo id: it starts with ``.``, ``/``
    or ``~``, has more than one ``/``, or its parent folder exists (``models/nope`` beside ``models/``)."""
    if name.startswith((".", "/", "~")) or os.sep != "/" and os.sep in name:
        return True
    if "/" not in name:
        return False
    return name.count("/") > 1 or Path(name).parent.is_dir()


_reachability: dict[str, str | None] = {}


def hub_unreachable() -> str | None:
    """None when the Hub endpoint answers a TCP connection within 3 s (or a proxy is configured); else a
    short reason ("the Hub (huggingface.co) cannot be reached: ..."). ``HF_HUB_OFFLINE=1`` gives a reason
    at once. Checked once per process."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    if endpoint not in _reachability:
        if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
            _reachability[endpoint] = None  # a proxy decides; let huggingface_hub try
        else:
            import socket
            from urllib.parse import urlsplit

            parts = urlsplit(endpoint)
            host = parts.hostname or endpoint
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                socket.create_connection((host, port), timeout=3.0).close()
                _reachability[endpoint] = None
            except OSError as err:
                _reachability[endpoint] = f"the Hub ({host}) cannot be reached from this machine ({err.strerror or err})"
    return _reachability[endpoint]


def _check_names_and_shapes(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str) -> None:
    """ValueError listing what ``state`` misses, adds or shapes differently from ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape  # torch.Size is a tuple
    ]
    parts = [f"{label}: {listing(items)}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                                 ("wrong shape", misshapen)) if items]
    if parts:
        raise ValueError(f"weights in {source} do not match the config: " + "; ".join(parts))


class _SkipInPlaceOnMeta(TorchFunctionMode):
    """Skips in-place calls (``normal_``, ``uniform_``, ``zero_``...) on meta tensors: they change no shape,
    and torch runs some of them on meta through Python references that import torch._dynamo (seconds)."""

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("_"):
            first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if first is not None and first.is_meta:
                return first
        return func(*args, **kwargs)


def build_for_weights(build: Callable[[], torch.nn.Module], state: Mapping[str, torch.Tensor], *, source: str) -> torch.nn.Module:
    """``build()`` once on the meta device (no memory, no initialisation), check its tensor names and
    shapes against ``state``, and only then build the model for real.

    A config that does not fit its weights (``n_embed: 100000000`` beside a small file) is refused
    with :func:`load_strict`'s one-line error before anything the size of the config is allocated.
    """
    with torch.device("meta"), _SkipInPlaceOnMeta():
        shell = build()
    _check_names_and_shapes(shell.state_dict(), state, source)
    return build()


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is missing, unexpected or misshapen.

    Weights holding NaN or ±inf are refused too (the error names the tensor). ``source`` names
    where the weights came from (a file, folder or repo) in the error.
    """
    _check_names_and_shapes(model.state_dict(), state, source)
    for key, value in state.items():  # the first floating-point tensor holding NaN or ±inf is named
        if value.numel() == 0 or not (value.is_floating_point() or value.is_complex()):
            continue
        if value.dtype.itemsize == 1:  # float8 has no aminmax; float16 holds each of its values
            value = value.to(torch.float16)
        # NaN propagates; no temporary the size of the tensor (a complex tensor: over its real and imaginary parts)
        low, high = torch.aminmax(torch.view_as_real(value) if value.is_complex() else value)
        if not (torch.isfinite(low) and torch.isfinite(high)):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"weights in {source}: {key} holds {bad} NaN or infinite values (of {value.numel()})")
    model.load_state_dict(state, strict=True)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_config_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``config.json`` (ours or another library's) as a dict; ValueError when it is not a JSON object.

    NaN / Infinity (which Python's json accepts) and nesting too deep to parse are errors too.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(), parse_constant=_no_constant)
    except ValueError as err:  # a JSONDecodeError, or _no_constant's
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    except RecursionError:
        raise ValueError(f"{path} is not a config: its JSON is nested too deeply") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return raw


def load_pretrained(
    repo_id_or_dir: str | os.PathLike[str],
    *,
    model_type: str | Collection[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``(config, state_dict)`` of a vqtok model folder or Hub repo.

    The config returned has the bookkeeping keys (``vqtok_format``, ``model_type``) removed.
    ``model_type`` may also be a collection of accepted kinds: then the config keeps the
    ``"model_type"`` found, for the caller to dispatch on.
    """
    folder = resolve_folder(
        repo_id_or_dir, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
    )
    raw = read_config_json(folder / CONFIG_NAME)
    version = raw.pop("vqtok_format", None)
    if version is None:
        raise ValueError(f"{folder / CONFIG_NAME} has no 'vqtok_format' key: not a vqtok model folder")
    if not is_int(version, 1):
        raise ValueError(f"{folder / CONFIG_NAME}: vqtok_format must be a positive integer, got {version!r:.40}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{folder} uses vqtok format {version}, newer than this vqtok understands ({FORMAT_VERSION}); upgrade vqtok"
        )
    found_type = raw.pop("model_type", None)
    accepted = (model_type,) if isinstance(model_type, str) else tuple(model_type)
    if found_type not in accepted:
        expected = " or ".join(map(repr, accepted))
        raise ValueError(f"{folder} holds a {found_type!r} model, expected {expected}")
    if not isinstance(model_type, str):
        raw["model_type"] = found_type
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{folder / WEIGHTS_NAME} is not a readable safetensors file: {err}") from err
    return raw, state


def push_to_hub(
    source: str | os.PathLike[str] | Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload vqtok model",
) -> str:
    """Upload a model to the Hub repo ``repo_id``; returns the commit URL.

    ``source`` is a folder written by ``save_pretrained``, or any object with a
    ``save_pretrained(directory)`` method (saved to a temporary folder first).
    """
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        saved = hasattr(source, "save_pretrained")
        if saved:
            source.save_pretrained(tmp)
        return str(api.upload_folder(repo_id=repo_id, folder_path=tmp if saved else str(source), commit_message=commit_message))


def weights_cache_dir() -> Path:
    """Folder where downloaded third-party weights (FID Inception, LPIPS) are cached.

    ``$VQTOK_CACHE`` if set, else ``$XDG_CACHE_HOME/vqtok``, else ``~/.cache/vqtok``.
    """
    env = os.environ.get("VQTOK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vqtok"


def download_weights(
    *,
    filename: str,
    url: str | None = None,
    hub: tuple[str, str] | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Path:
    """Return a local, checksum-verified copy of a third-party weights file.

    The file is looked up as ``<cache_dir>/<filename>`` (``cache_dir`` defaults to
    :func:`weights_cache_dir`); if absent it is fetched from ``url`` (plain HTTP(S)) or
    ``hub`` (``(repo_id, filename)`` on the Hugging Face Hub), tried in that order.
    ``sha256`` may be a full hex digest or a prefix (like the ``6726825d`` in
    ``pt_inception-2015-12-05-6726825d.pth``); a mismatch raises ``ValueError`` and the
    download is discarded. When nothing can be fetched, ``FileNotFoundError`` names the
    sources and the exact path where the file can be placed by hand.
    """
    if url is None and hub is None:
        raise ValueError("download_weights needs a url or a hub (repo_id, filename) source")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else weights_cache_dir()
    target = folder / filename
    expected = sha256.lower() if sha256 else None

    def verify(path: Path) -> None:
        if expected is None:
            return
        actual = sha256_file(path)
        if not actual.startswith(expected):
            raise ValueError(
                f"{path} has sha256 {actual[:16]}…, expected {expected[:16]}…: the file is corrupt or "
                f"not the published one; delete it and retry"
            )

    if target.is_file():
        verify(target)
        return target

    sources = [s for s in (url, f"hf://{hub[0]}/{hub[1]}" if hub else None) if s]
    errors: list[str] = []
    if not local_files_only:
        folder.mkdir(parents=True, exist_ok=True)
        for source in sources:  # the url, then the Hub file
            try:
                if source == url:
                    logger.info("downloading %s to %s", url, target)
                    with atomic_write(target) as tmp:
                        torch.hub.download_url_to_file(url, str(tmp), progress=False)
                        verify(tmp)
                else:
                    import shutil

                    from huggingface_hub import hf_hub_download

                    file = Path(hf_hub_download(*hub))  # type: ignore[misc]
                    verify(file)
                    with atomic_write(target) as tmp:
                        shutil.copyfile(file, tmp)
                return target
            except ValueError:  # a checksum mismatch
                raise
            except Exception as err:  # network errors come in many types
                errors.append(f"{source}: {type(err).__name__}: {err}")
    reason = "; ".join(errors) if errors else "downloads are disabled (local_files_only)"
    raise FileNotFoundError(
        f"weights file {filename} is not available ({reason}). Download it from "
        f"{' or '.join(sources)} and place it at {target} (or set VQTOK_CACHE to the folder holding it)"
    )
