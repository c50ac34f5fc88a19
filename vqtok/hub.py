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
from typing import Any, Collection, Mapping

import torch
from safetensors.torch import load_file, save_file

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
    # Write to temporary names then rename, so a crash never leaves a half-written model.
    tmp_weights = out / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "pt", "vqtok_format": str(FORMAT_VERSION)})
    os.chmod(tmp_weights, 0o644)  # safetensors creates its file 0600; a model folder is meant to be shared
    payload = {"vqtok_format": FORMAT_VERSION, "model_type": model_type, **dict(config)}
    tmp_config = out / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_weights, out / WEIGHTS_NAME)
    os.replace(tmp_config, out / CONFIG_NAME)
    logger.info("saved %s model to %s", model_type, out)
    return out


def resolve_folder(
    repo_id_or_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Path:
    """Return a local folder holding ``config.json`` and ``model.safetensors``.

    A path that exists locally is used as is; anything else is treated as a Hub repo id
    and fetched through ``huggingface_hub`` (which owns caching, revisions and offline mode).
    """
    path = Path(repo_id_or_dir)
    if path.is_dir():
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is a folder but lacks {', '.join(missing)}; a vqtok model folder holds "
                f"{CONFIG_NAME} and {WEIGHTS_NAME} (write one with save_pretrained)"
            )
        return path
    if path.exists():
        raise ValueError(f"{path} is a file, not a model folder; to import a foreign checkpoint use `vqtok convert`")
    repo_id = str(repo_id_or_dir)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(f"{repo_id!r} is neither a local folder nor a Hub repo id of the form 'org/name'")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    folder: Path | None = None
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            file = hf_hub_download(
                repo_id,
                name,
                revision=revision,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                local_files_only=local_files_only,
            )
        except LocalEntryNotFoundError as err:
            raise FileNotFoundError(
                f"{name} of Hub repo {repo_id!r} (revision {revision or 'main'}) is not in the local cache "
                f"and downloading is off or impossible; download it on a connected machine "
                f"(`huggingface-cli download {repo_id}`) and point HF_HOME/cache_dir at that cache"
            ) from err
        except (RepositoryNotFoundError, EntryNotFoundError) as err:
            raise FileNotFoundError(f"Hub repo {repo_id!r} has no {name}: {err}") from err
        folder = Path(file).parent
    assert folder is not None
    return folder


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
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{folder / CONFIG_NAME} must hold a JSON object")
    version = raw.pop("vqtok_format", None)
    if version is None:
        raise ValueError(f"{folder / CONFIG_NAME} has no 'vqtok_format' key: not a vqtok model folder")
    if int(version) > FORMAT_VERSION:
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
    if not hasattr(source, "save_pretrained"):
        info = api.upload_folder(repo_id=repo_id, folder_path=str(source), commit_message=commit_message)
        return str(info)
    with tempfile.TemporaryDirectory() as tmp:
        source.save_pretrained(tmp)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(info)


def weights_cache_dir() -> Path:
    """Folder where downloaded third-party weights (FID Inception, LPIPS) are cached.

    ``$VQTOK_CACHE`` if set, else ``$XDG_CACHE_HOME/vqtok``, else ``~/.cache/vqtok``.
    """
    env = os.environ.get("VQTOK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vqtok"


def _sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        actual = _sha256_of(path)
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
        if url is not None:
            tmp = folder / (filename + ".part")
            try:
                logger.info("downloading %s to %s", url, target)
                torch.hub.download_url_to_file(url, str(tmp), progress=False)
                verify(tmp)
                os.replace(tmp, target)
                return target
            except ValueError:
                tmp.unlink(missing_ok=True)
                raise
            except Exception as err:  # network errors come in many types
                tmp.unlink(missing_ok=True)
                errors.append(f"{url}: {type(err).__name__}: {err}")
        if hub is not None:
            try:
                from huggingface_hub import hf_hub_download

                file = Path(hf_hub_download(hub[0], hub[1]))
                verify(file)
                import shutil

                tmp = folder / (filename + ".part")
                shutil.copyfile(file, tmp)
                os.replace(tmp, target)
                return target
            except ValueError:
                raise
            except Exception as err:
                errors.append(f"hf://{hub[0]}/{hub[1]}: {type(err).__name__}: {err}")
    reason = "; ".join(errors) if errors else "downloads are disabled (local_files_only)"
    raise FileNotFoundError(
        f"weights file {filename} is not available ({reason}). Download it from "
        f"{' or '.join(sources)} and place it at {target} (or set VQTOK_CACHE to the folder holding it)"
    )
