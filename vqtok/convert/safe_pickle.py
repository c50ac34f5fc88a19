"""Reading foreign PyTorch checkpoints without executing code from them.

Published checkpoints (PyTorch Lightning ``.ckpt``, plain ``torch.save`` dicts) pickle more
than tensors: Lightning callback classes, ``argparse.Namespace`` hyper-parameters, numpy
scalars. The full pickle machinery would import and call whatever the file names, so
:func:`load_checkpoint` hands ``torch.load`` a restricted unpickler instead:

* tensors, storages, dtypes, ``OrderedDict`` and numpy arrays/scalars are rebuilt for real
  (an explicit allow-list of the functions torch and numpy use for that);
* any other class or function the file names becomes an inert :class:`Placeholder` that only
  records the arguments and state it was given — nothing from the file is imported or run;
* names that can only mean an attack (``os.system``, ``subprocess.*``, ``builtins.eval``,
  ``importlib``...) are refused with :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import logging
import os
import pickle
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["load_checkpoint", "Placeholder", "UnsafeCheckpointError"]


class UnsafeCheckpointError(ValueError):
    """The checkpoint asks to run code that no model file has a reason to run."""


class Placeholder:
    """Inert stand-in for a class or function named in a checkpoint (never imported)."""

    _vqtok_name = "?"

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    mapping: dict[Any, Any]
    sequence: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        # pickle's NEWOBJ calls __new__ without __init__: set everything up here.
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.mapping, self.sequence = args, kwargs, None, {}, []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.mapping[key] = value

    def append(self, value: Any) -> None:
        self.sequence.append(value)

    def extend(self, values: Any) -> None:
        self.sequence.extend(values)

    def attributes(self) -> dict[str, Any]:
        """The object's recorded ``__dict__``-like state (e.g. the fields of an argparse.Namespace)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0]
        return dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<Placeholder {self._vqtok_name}>"


_placeholders: dict[str, type[Placeholder]] = {}


def _placeholder(module: str, name: str) -> type[Placeholder]:
    full = f"{module}.{name}"
    if full not in _placeholders:
        _placeholders[full] = type(name, (Placeholder,), {"_vqtok_name": full, "__module__": "vqtok.placeholder"})
    return _placeholders[full]


_DENIED_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "socket", "runpy", "code", "codeop",
    "pickle", "_pickle", "marshal", "ctypes", "webbrowser", "pty", "commands", "platform", "signal", "multiprocessing",
    "builtins", "__builtin__", "types", "inspect", "pdb", "timeit", "tempfile", "glob", "io", "operator",
    "functools", "asyncio", "threading", "requests", "urllib", "http", "ftplib", "smtplib", "pathlib", "zipimport",
    "torch.hub", "torch.serialization", "torch.storage", "torch.ops", "torch.jit", "torch.package", "numpy.testing",
}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
}


def _allowed_extra(module: str, name: str) -> Any | None:
    # torch dtypes (torch.float32 ...) and storage types (torch.FloatStorage ...)
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            return obj
        if name.endswith("Storage") and isinstance(obj, type):
            return obj
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        import numpy as np

        return getattr(np.core.multiarray if hasattr(np, "core") else np._core.multiarray, name)
    if module == "numpy" and name in ("ndarray", "dtype"):
        import numpy as np

        return getattr(np, name)
    if module.startswith("numpy") and name.endswith("DType"):  # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType
        import numpy as np

        dtypes = getattr(np, "dtypes", None)
        obj = getattr(dtypes, name, None) if dtypes is not None else None
        if isinstance(obj, type):
            return obj
    if module == "copyreg" and name == "_reconstructor":
        import copyreg

        return copyreg._reconstructor  # type: ignore[attr-defined]
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` never imports what the file names."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        allowed = _ALLOWED.get((module, name)) or _allowed_extra(module, name)
        if allowed is not None:
            return allowed
        root = module.split(".")[0]
        if module in _DENIED_MODULES or root in _DENIED_MODULES:
            raise UnsafeCheckpointError(
                f"checkpoint refers to {module}.{name}, which can run code; refusing to load it "
                "(a model checkpoint has no reason to contain this)"
            )
        logger.debug("checkpoint names %s.%s: loaded as an inert placeholder", module, name)
        return _placeholder(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) takes a module-like object with Unpickler and load.
_restricted_pickle = types.SimpleNamespace(
    Unpickler=RestrictedUnpickler, load=_restricted_load, __name__="vqtok_restricted_pickle"
)


def _what_folder(folder: Path) -> str:
    """Advice for a folder given where a checkpoint file was expected."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and "vqtok_format" in config:
        return "it is already a vqtok model folder (load it as is)"
    if isinstance(config, dict) and config.get("_class_name") == "VQModel":
        return "it looks like a diffusers VQModel folder (use `vqtok convert diffusers`)"
    if (folder / "model_index.json").is_file() or (folder / "vqvae").is_dir():
        return "it looks like a diffusers pipeline (use `vqtok convert diffusers` with its vqvae subfolder)"
    found = sorted(q.name for q in folder.iterdir() if q.suffix in (".ckpt", ".pt", ".pth", ".bin", ".safetensors"))
    return f"give one of its files ({', '.join(found[:5])})" if found else "give the .ckpt / .pt file"


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a ``torch.save``/Lightning checkpoint onto the CPU without running code from it.

    Raises FileNotFoundError, ValueError for files that are not checkpoints, and
    :class:`UnsafeCheckpointError` for files that name dangerous callables.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not a checkpoint file: {_what_folder(p)}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        # The pickle stream is interpreted by RestrictedUnpickler only (see module docstring):
        # torch.load's own weights_only unpickler cannot stand in for Lightning's classes.
        return torch.load(p, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)  # noqa: S614
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{p} is not a readable PyTorch checkpoint: {err}") from err
