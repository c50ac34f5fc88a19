"""Model families: ``config.json``'s ``model_type`` -> the family that builds, converts and recognises it.

A family lives in one module that ends with ``register_family(Family(...))``: its config, its
model, the converters of the foreign checkpoints it loads (pure state-dict -> state-dict
functions, imported only when a file is converted), its Hub/file recogniser and its CLI name.
Adding a family is that module plus one line in :data:`FAMILY_MODULES`.

=============  =======================================  ==========================
model_type     config / model                           ids (see :mod:`vqtok.layout`)
=============  =======================================  ==========================
``vqgan``      VQGANConfig / VQGAN (taming layout)      grid, nearest-code VQ
``magvit2``    MAGVIT2Config / MAGVIT2 (Open-MAGVIT2)   grid, LFQ
``cosmos``     CosmosConfig / CosmosDI (NVIDIA Cosmos)  grid, FSQ
``ibq``        IBQConfig / IBQ (taming autoencoder)     grid, largest inner product
``var``        VARConfig / VARVQVAE (FoundationVision)  scales (multi-scale residual VQ)
``titok``      TiTokConfig / TiTok (ByteDance)          sequence (1-D tokens)
=============  =======================================  ==========================

Every registered model offers :class:`TokenizerModel`, the only interface the
:class:`~vqtok.Tokenizer` uses.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from vqtok.layout import TokenLayout

__all__ = [
    "FAMILY_MODULES", "Family", "SourceFormat", "ModelConfig", "TokenizerModel", "MODEL_TYPES",
    "register_family", "one_file", "state_keys", "lightning_options", "families", "family", "family_of", "source_formats", "model_type_of", "build_model",
    "model_from_config", "model_entry", "source_format",
]

# The modules that define a family (imported on first use of the registry, in this order).
FAMILY_MODULES: tuple[str, ...] = (
    "vqtok.models.vqgan",
    "vqtok.models.magvit2",
    "vqtok.models.cosmos",
    "vqtok.models.ibq",
    "vqtok.models.var",
    "vqtok.models.titok",
)


@runtime_checkable
class ModelConfig(Protocol):
    """What every family's config offers (a frozen dataclass, see :class:`~vqtok.models._config.ArchConfig`)."""

    def to_dict(self) -> dict[str, Any]: ...

    def hash(self) -> str: ...


class TokenizerModel(Protocol):
    """What the Tokenizer needs of a model: its layout and ids in, ids out.

    ``encode_ids(x)``: x (B, 3, H, W) in ``pixel_range`` -> ids (B, *layout(H, W).shape) int64.
    ``decode_ids(ids)``: the inverse -> image (B, 3, H, W) in ``pixel_range`` (roughly).
    ``autocast_dtype`` (bf16/fp16) runs the heavy convolution/attention stacks under autocast;
    what decides the ids (projection, code search) stays in the weights' dtype. ``channels_last``
    is a memory-format hint for convolutional decoders (same result); models may ignore it.
    """

    config: Any
    pixel_range: ClassVar[tuple[float, float]]  # (-1, 1) or (0, 1): what encode_ids takes and decode_ids gives

    def layout(self, image_size: tuple[int, int] | None = None) -> TokenLayout: ...

    def encode_ids(self, x: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor: ...

    def decode_ids(
        self, ids: torch.Tensor, *, autocast_dtype: torch.dtype | None = None, channels_last: bool = False
    ) -> torch.Tensor: ...


# A recogniser: (file names of a repo or folder, read_config(path) -> parsed JSON or None) -> the
# files its converter reads (relative paths), or None when the files are not this format's.
Recogniser = Callable[[Sequence[str], Callable[[str], "Mapping[str, Any] | None"]], "tuple[str, ...] | None"]


@dataclass(frozen=True)
class SourceFormat:
    """A foreign checkpoint layout that converts into a family (``vqtok convert NAME``).

    The converter, ``function(paths: list[Path], **options) -> (config, state dict)``, returns the
    state dict in the model's own names; the caller builds the model and loads it strictly. It
    lives where ``convert`` points and is imported only when a file is converted.
    """

    name: str  # CLI name and cache tag: `vqtok convert NAME SRC --out DIR`
    help: str  # one line for `vqtok convert --help` and for "no layout recognised" errors
    convert: str  # "module:function" of the converter
    recognise: Recogniser | None = None  # Hub repos / folders recognised by from_pretrained
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # CLI options -> converter keywords
    # positional arguments of `vqtok convert NAME`: one (a file, a folder or a Hub repo id) or several files
    sources: tuple[str, ...] = ("source",)
    # True: recognised by file suffix alone (a .ckpt, a .pt), so tried after the formats that look
    # at names or config.json; several such formats may claim one checkpoint, and ``accepts``
    # (the loaded checkpoint, its file name) -> bool picks the one it belongs to. The checkpoint,
    # read once, is then handed to the converter as ``checkpoint=``.
    by_suffix: bool = False
    accepts: Callable[[Any, str], bool] | None = None

    def load_converter(self) -> Callable[..., tuple[Any, dict[str, torch.Tensor]]]:
        module, _, name = self.convert.partition(":")
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]

    def run(self, paths: Sequence[Path], **options: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Convert the local files ``paths`` -> (config, state dict)."""
        return self.load_converter()(list(paths), **options)


def one_file(names: Sequence[str], suffixes: tuple[str, ...]) -> tuple[str, ...] | None:
    """The one file of ``names`` ending in ``suffixes`` (a by-suffix recogniser); several: ValueError asking for filename=."""
    found = sorted(n for n in names if n.lower().endswith(suffixes))
    if len(found) > 1:
        raise ValueError(f"several checkpoints ({', '.join(found)}): pass filename= to choose one")
    return tuple(found) or None


def lightning_options(code_base: str, resolution_help: str) -> Callable[[argparse.ArgumentParser], None]:
    """``--ema/--no-ema`` and ``--resolution`` of a SEED-Voken-style Lightning checkpoint's CLI."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                            help=f"take the model_ema.* weights (default: when present, as {code_base}'s own scripts do)")
        parser.add_argument("--resolution", type=int, default=256, help=resolution_help)

    return add


def state_keys(checkpoint: Any) -> set[str]:
    """The tensor names of a loaded checkpoint (Lightning's ``state_dict`` or a bare dict; wrappers stripped)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        return set()
    return {k.removeprefix("module.") for k in state if isinstance(k, str)}


@dataclass(frozen=True)
class Family:
    """A model family: what ``model_type`` names in ``config.json``."""

    name: str  # model_type
    config_class: type  # from_dict(dict) / to_dict() / hash()
    model_class: type[nn.Module]  # model_class(config)
    tiny_config: Callable[[], Any]  # a small config for CPU tests (the registry sweep)
    test_image_size: int = 32  # image side the tiny config takes (sequence / multi-scale families fix it)
    formats: tuple[SourceFormat, ...] = ()  # foreign checkpoints that convert into this family
    description: str = ""


_REGISTRY: dict[str, Family] = {}
_loaded = False


def register_family(entry: Family) -> Family:
    """Add ``entry`` (called at the end of the family's module); a second family of the same name is an error."""
    old = _REGISTRY.get(entry.name)
    if old is not None and old.model_class is not entry.model_class:
        raise ValueError(f"model family {entry.name!r} is already registered ({old.model_class.__qualname__})")
    _REGISTRY[entry.name] = entry
    return entry


def _load() -> dict[str, Family]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(module)
    return _REGISTRY


def families() -> tuple[Family, ...]:
    """Every registered family, in :data:`FAMILY_MODULES` order."""
    order = {m: i for i, m in enumerate(FAMILY_MODULES)}
    return tuple(sorted(_load().values(), key=lambda f: order.get(f.model_class.__module__, len(order))))


def family(model_type: str) -> Family:
    """The family registered as ``model_type``; ValueError naming the known ones."""
    reg = _load()
    try:
        return reg[model_type]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model_type {model_type!r}; this vqtok knows {', '.join(f.name for f in families())}") from None


model_entry = family


def source_formats() -> tuple[tuple[Family, SourceFormat], ...]:
    """Every (family, format) pair, for ``vqtok convert`` and the Hub recogniser: by-suffix formats last."""
    pairs = [(fam, fmt) for fam in families() for fmt in fam.formats]
    return tuple(sorted(pairs, key=lambda pair: pair[1].by_suffix))


def source_format(name: str) -> tuple[Family, SourceFormat]:
    """The (family, format) registered as ``name``; ValueError naming the known ones."""
    for fam, fmt in source_formats():
        if fmt.name == name:
            return fam, fmt
    raise ValueError(f"unknown checkpoint format {name!r}; vqtok converts {', '.join(f.name for _, f in source_formats())}")


def family_of(model: nn.Module) -> Family:
    """The family of a model (the most specific registered class it is an instance of)."""
    reg = _load()
    for entry in reg.values():
        if type(model) is entry.model_class:
            return entry
    for entry in reg.values():
        if isinstance(model, entry.model_class):
            return entry
    raise TypeError(f"{type(model).__name__} is not a registered vqtok model ({', '.join(f.name for f in families())})")


def model_type_of(model: nn.Module) -> str:
    """The ``model_type`` a model is saved under."""
    return family_of(model).name


def build_model(model_type: str, config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised model of ``model_type`` from its config fields (as stored in config.json)."""
    entry = family(model_type)
    return entry.model_class(entry.config_class.from_dict(config))


def model_from_config(config: Any) -> nn.Module:
    """A randomly initialised model for a config object (VQGANConfig -> VQGAN, ...)."""
    for entry in _load().values():
        if isinstance(config, entry.config_class):
            return entry.model_class(config)
    raise TypeError(f"{type(config).__name__} is not a registered vqtok model config ({', '.join(f.name for f in families())})")


def __getattr__(name: str) -> Any:
    if name == "MODEL_TYPES":  # computed when asked: the families register themselves on import
        return tuple(f.name for f in families())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
