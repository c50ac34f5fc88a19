"""Reading foreign PyTorch checkpoints without executing code from them.

Published checkpoints (PyTorch Lightning ``.ckpt``, plain ``torch.save`` dicts) pickle more
than tensors: Lightning callback classes, ``argparse.Namespace`` hyper-parameters, numpy
scalars. The full pickle machinery would import and call whatever the file names, so
:func:`load_checkpoint` and :func:`read_torchscript_tensors` read the pickle with a restricted
unpickler instead:

* tensors, storages, dtypes, ``OrderedDict`` and numpy arrays/scalars are rebuilt for real
  (an explicit allow-list of the functions torch and numpy use for that);
* any other class or function the file names becomes an inert :class:`Placeholder` that only
  records the arguments and state it was given — nothing from the file is imported or run;
* names that can only mean an attack (``os.system``, ``subprocess.*``, ``builtins.eval``,
  ``importlib``...) are refused with :class:`UnsafeCheckpointError`;
* what the file makes vqtok allocate is bounded by its size (:func:`allocation_limit`): zip
  records are sized from the zip directory before they are read, each storage must hold exactly
  its declared ``numel × itemsize`` bytes, and tensor views, ``bytearray(n)`` and numpy arrays
  are counted before they are made. A file that asks for more is refused with
  :class:`UnsafeCheckpointError`.

Zip archives (``torch.save`` since torch 1.6, TorchScript) are read by vqtok itself
(``<name>/data.pkl`` and ``<name>/data/<n>``); older ``torch.save`` pickles go through
``torch.load`` with the restricted unpickler as its ``pickle_module``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import types
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from vqtok._errors import is_int

logger = logging.getLogger(__name__)

__all__ = ["load_checkpoint", "read_torchscript_tensors", "allocation_limit", "Placeholder", "UnsafeCheckpointError"]


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
        # pickle's NEWOBJ calls __new__ without __init__: set everything up here (object.__init__
        # ignores the arguments of a class that overrides __new__ only).
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.mapping, self.sequence = args, kwargs, None, {}, []
        return self

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
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
}


def _allowed_extra(module: str, name: str) -> Any | None:
    # torch dtypes (torch.float32 ...); storage types and numpy arrays are RestrictedUnpickler._bounded's
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            return obj
    if (module, name) == ("numpy", "dtype"):
        import numpy as np

        return np.dtype
    if module.startswith("numpy") and name.endswith("DType"):  # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType
        import numpy as np

        obj = getattr(getattr(np, "dtypes", None), name, None)  # numpy.dtypes is absent before 1.25
        if isinstance(obj, type):
            return obj
    if module == "copyreg" and name == "_reconstructor":
        import copyreg

        return copyreg._reconstructor  # type: ignore[attr-defined]
    return None


# What a checkpoint may allocate beyond the bytes it stores: tensors, bytearrays and numpy arrays
# rebuilt from a file of n bytes may take at most EXPANSION * n + SLACK bytes in all (shared
# storages count once per tensor viewing them). A zip archive's records may unpack to no more.
EXPANSION = 16
SLACK = 64 << 20


def allocation_limit(stored_bytes: int) -> int:
    """The most bytes a checkpoint file of ``stored_bytes`` may make vqtok allocate."""
    return EXPANSION * stored_bytes + SLACK


class _Uncallable:
    """Stand-in for a type a checkpoint may name (as an argument) but not call."""

    _vqtok_name = "?"
    dtype: torch.dtype

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Uncallable":
        raise UnsafeCheckpointError(f"checkpoint calls {cls._vqtok_name}(...) itself, which only allocates memory")


class _TensorType(_Uncallable):
    _vqtok_name = "torch.Tensor"


class _NdarrayType(_Uncallable):
    _vqtok_name = "numpy.ndarray"


_storage_types: dict[str, type[_Uncallable]] = {}


def _storage_type(name: str) -> type[_Uncallable] | None:
    """``torch.FloatStorage`` etc. as an inert class that carries only the dtype (what the loaders read)."""
    if name not in _storage_types:
        cls = getattr(torch, name, None)
        if not isinstance(cls, type):  # the caller checked the name ends in Storage
            return None
        with warnings.catch_warnings():  # torch.FloatStorage.dtype warns that TypedStorage is deprecated
            warnings.simplefilter("ignore", UserWarning)
            dtype = torch.uint8 if cls is torch.UntypedStorage else getattr(cls, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            return None
        _storage_types[name] = type(name, (_Uncallable,), {"_vqtok_name": f"torch.{name}", "dtype": dtype, "_dtype": dtype})
    return _storage_types[name]


def _sizes(value: Any, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of non-negative ints (a tensor or array shape)."""
    dims = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not all(is_int(d, 0) for d in dims):
        raise pickle.UnpicklingError(f"{what} shape {dims!r:.80} is not a list of sizes")
    return dims


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` never imports what the file names.

    Everything the allowed functions allocate (tensor views, ``bytearray(n)``, numpy arrays and
    scalars) is counted against ``max_bytes`` (see :func:`allocation_limit`) before it is made.
    """

    max_bytes: int = allocation_limit(0)  # per file: set on a subclass (torch.load) or on the instance

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._left = self.max_bytes

    def _charge(self, nbytes: int, what: str) -> None:
        if nbytes > self._left:
            raise UnsafeCheckpointError(
                f"checkpoint asks for {what} ({nbytes} bytes): more than a file of its size can hold "
                f"({self.max_bytes} bytes in all); refusing to allocate it"
            )
        self._left -= nbytes

    def _bytearray(self, *args: Any) -> bytearray:
        if args and isinstance(args[0], int):
            self._charge(args[0], f"bytearray({args[0]})")
        return bytearray(*args)

    @staticmethod
    def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
        """``_codecs.encode(str, "latin1")``: how pickle protocol 2 writes a bytes object (as long as the text)."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r:.20}) is not how pickle writes bytes")
        return text.encode("latin-1")

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
        if not isinstance(storage, torch.storage.TypedStorage):
            raise pickle.UnpicklingError(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage")
        dims = _sizes(size, "tensor")
        self._charge(math.prod(dims) * storage.dtype.itemsize, f"a {storage.dtype} tensor of shape {dims}")
        if rest:
            return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *rest)
        return torch._utils._rebuild_tensor(storage, offset, size, stride)

    def _rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        new_type = torch.Tensor if new_type is _TensorType else new_type
        if not (isinstance(new_type, type) and issubclass(new_type, torch.Tensor)):
            raise pickle.UnpicklingError(f"a tensor is rebuilt as {new_type!r:.80}, not as a tensor type")
        return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)

    def _np_reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        import numpy as np

        if subtype is not _NdarrayType:
            raise pickle.UnpicklingError(f"a numpy array is rebuilt as {subtype!r:.80}, not as numpy.ndarray")
        dims, itemsize = _sizes(shape, "numpy array"), np.dtype(dtype).itemsize
        self._charge(math.prod(dims) * itemsize, f"a numpy array of shape {dims}")
        return _np_multiarray()._reconstruct(np.ndarray, shape, dtype)

    def _np_scalar(self, dtype: Any, *args: Any) -> Any:
        import numpy as np

        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"a numpy scalar of dtype {dtype!r:.80}")
        self._charge(dtype.itemsize, f"a numpy scalar of {dtype.itemsize} bytes")
        return _np_multiarray().scalar(dtype, *args)

    def _bounded(self, module: str, name: str) -> Any | None:
        """The allowed callables that allocate, wrapped to count what they allocate (None: not one of them)."""
        if (module, name) in (("builtins", "bytearray"), ("__builtin__", "bytearray")):
            return self._bytearray
        if (module, name) == ("_codecs", "encode"):
            return self._latin1
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return self._rebuild_from_type_v2
        if (module, name) == ("torch", "Tensor"):
            return _TensorType
        if module == "torch" and name.endswith("Storage"):
            return _storage_type(name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return {"_reconstruct": self._np_reconstruct, "scalar": self._np_scalar}.get(name)
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayType
        return None

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        module = "torch._tensor" if module == "torch.tensor" else module  # the name before torch 1.10
        allowed = self._bounded(module, name) or _ALLOWED.get((module, name)) or _allowed_extra(module, name)
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


def _np_multiarray() -> Any:
    import numpy as np

    return np.core.multiarray if hasattr(np, "core") else np._core.multiarray


# --- zip archives (torch.save since 1.6, TorchScript) ----------------------------------------


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value  # TorchScript tags containers with their static type; the value is what matters here


# TorchScript's pickler wraps specialised lists and typed containers in these (torch/jit/_pickle.py).
_TORCHSCRIPT_HELPERS: dict[tuple[str, str], Any] = {
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}

_CHUNK = 16 << 20


class _ArchiveUnpickler(RestrictedUnpickler):
    """The restricted unpickler plus TorchScript's list helpers and storages read from the zip."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.storage.TypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        helper = _TORCHSCRIPT_HELPERS.get((module, name))
        return helper if helper is not None else super().find_class(module, name)

    def _read(self, name: str, nbytes: int, what: str) -> torch.UntypedStorage:
        """Record ``name`` as a storage; its size in the zip directory must be ``nbytes`` before anything is read."""
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise pickle.UnpicklingError(f"data.pkl refers to {name}, which the archive lacks") from None
        if info.file_size != nbytes:
            raise pickle.UnpicklingError(f"{name} holds {info.file_size} bytes, expected {what}")
        if nbytes == 0:
            return torch.UntypedStorage(0)
        buffer = bytearray(nbytes)
        view, done = memoryview(buffer), 0
        with self._archive.open(info) as fh:
            while done < nbytes:
                block = fh.read(min(_CHUNK, nbytes - done))
                if not block:
                    break
                view[done : done + len(block)] = block
                done += len(block)
        if done != nbytes:
            raise pickle.UnpicklingError(f"{name} ends after {done} of its {nbytes} bytes")
        return torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"storage {key!r:.40} has no known dtype ({storage_type!r:.80})")
        if not is_int(numel, 0):
            raise pickle.UnpicklingError(f"storage {key!r:.40} has size {numel!r:.40}")
        key = str(key)
        if key not in self._storages:
            itemsize = dtype.itemsize
            untyped = self._read(f"{self._prefix}data/{key}", numel * itemsize, f"{numel} × {itemsize} ({dtype})")
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self._storages[key]


def _load_archive(path: Path, kind: str) -> Any:
    """The object pickled in ``<name>/data.pkl`` of a zip archive, its storages read from ``<name>/data/<n>``.

    The archive's records must unpack to at most :func:`allocation_limit` of the file size, which
    also bounds what the pickle may allocate. ``kind`` names the file in errors.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a {kind} (not a zip file)") from err
    with archive:
        size = path.stat().st_size
        limit = allocation_limit(size)
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > limit:
            raise UnsafeCheckpointError(
                f"{path}: its zip records unpack to {unpacked} bytes from a {size}-byte file (more than "
                f"{EXPANSION}x + {SLACK >> 20} MiB); refusing a zip bomb"
            )
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is not a {kind}: expected one <name>/data.pkl, found {pickles or 'none'}")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            order = archive.read(f"{prefix}byteorder").decode(errors="replace").strip() if f"{prefix}byteorder" in names else "little"
            if order == "little":
                return _ArchiveUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix, limit).load()
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError, KeyError,
                RuntimeError, OSError, NotImplementedError, zipfile.BadZipFile, zlib.error) as err:
            raise ValueError(f"{path}: data.pkl is not a readable {kind}: {err}") from err
    raise ValueError(f"{path} stores its tensors {order}-endian; only little-endian archives are supported")


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    """Walk the module tree of placeholders; record every tensor attribute under its dotted name."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in (obj.attributes() if isinstance(obj, Placeholder) else {}).items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.detach()
        elif isinstance(value, Placeholder):
            _collect(value, f"{prefix}{name}.", out, seen)


def read_torchscript_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor attribute (parameters and buffers) of a TorchScript archive, by dotted module path.

    Reads ``<name>/data.pkl`` and ``<name>/data/<n>`` only, with the restricted unpickler: module
    classes (``__torch__.…``) become placeholders, ``code/`` and ``constants.pkl`` are never read,
    compiled or run (``torch.jit.load`` is never called). Raises FileNotFoundError,
    :class:`UnsafeCheckpointError` when data.pkl names a dangerous callable or the archive asks for
    more memory than it can hold, ValueError for anything that is not a readable archive.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"TorchScript archive {p} does not exist")
    root = _load_archive(p, "TorchScript archive")
    with zipfile.ZipFile(p) as archive:
        if not any("/code/" in n for n in archive.namelist()):
            logger.warning("%s has no code/ folder: a plain torch.save zip rather than TorchScript?", p)
    tensors: dict[str, torch.Tensor] = {}
    try:
        _collect(root, "", tensors, set())
    except RecursionError:
        raise ValueError(f"{p}: the module tree in data.pkl is nested too deeply to be a model") from None
    if not tensors:
        raise ValueError(f"{p}: no tensors found in the archive's module tree")
    logger.debug("read %d tensors from %s (root %r)", len(tensors), p, root)
    return tensors


def what_folder(folder: Path) -> str:
    """Advice for a folder given where a checkpoint file was expected."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
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
        raise IsADirectoryError(f"{p} is a folder, not a checkpoint file: {what_folder(p)}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":  # torch.save's zip format (torch >= 1.6)
        return _load_archive(p, "PyTorch checkpoint")
    if not magic.startswith(b"\x80"):
        raise ValueError(f"{p} is not a readable PyTorch checkpoint (neither a zip archive nor a pickle)")
    # Older torch.save files: torch.load interprets the pickle stream with RestrictedUnpickler only (see the
    # module docstring), bounded by the file's allocation limit; torch's own weights_only unpickler cannot stand
    # in for Lightning's classes. pickle_module is a module-like Unpickler and load.
    unpickler = type("BoundedUnpickler", (RestrictedUnpickler,), {"max_bytes": allocation_limit(p.stat().st_size)})
    module = types.SimpleNamespace(Unpickler=unpickler, load=lambda file, **kw: unpickler(file, **kw).load(),
                                   __name__="vqtok_restricted_pickle")
    try:
        return torch.load(p, map_location="cpu", pickle_module=module, weights_only=False)  # noqa: S614
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{p}: {err}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{p} is not a readable PyTorch checkpoint: {err}") from err
