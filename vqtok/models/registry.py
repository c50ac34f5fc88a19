"""Which architecture a model folder holds: ``config.json``'s ``model_type`` -> (config class, model class).

A vqtok model folder is ``model.safetensors`` + ``config.json``; the latter carries
``"model_type"`` beside the config fields (see :mod:`vqtok.hub`). Folders written before
other architectures existed say ``"vqgan"`` and load exactly as before.

=============  =======================================  ==========================
model_type     config / model                           quantizer
=============  =======================================  ==========================
``vqgan``      VQGANConfig / VQGAN (taming layout)      nearest-code VQ
``magvit2``    MAGVIT2Config / MAGVIT2 (Open-MAGVIT2)   LFQ (``config.quantizer``)
``cosmos``     CosmosConfig / CosmosDI (NVIDIA Cosmos)  FSQ (``config.levels``)
``ibq``        IBQConfig / IBQ (taming autoencoder)     largest inner product (IBQ)
=============  =======================================  ==========================

Every registered model offers the interface the :class:`~vqtok.Tokenizer` uses (see
:class:`TokenizerModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from vqtok.models.cosmos import CosmosConfig, CosmosDI
from vqtok.models.ibq import IBQ, IBQConfig
from vqtok.models.magvit2 import MAGVIT2, MAGVIT2Config
from vqtok.models.quantizer import Quantizer, QuantizerOutput
from vqtok.models.vqgan import VQGAN, VQGANConfig

__all__ = ["ModelConfig", "TokenizerModel", "ModelEntry", "MODEL_TYPES", "model_entry", "model_type_of", "build_model", "model_from_config"]


@runtime_checkable
class ModelConfig(Protocol):
    """What every architecture config offers."""

    @property
    def n_embed(self) -> int: ...  # codebook size K

    @property
    def embed_dim(self) -> int: ...  # code dimension D

    @property
    def downsample_factor(self) -> int: ...  # image side / grid side

    def to_dict(self) -> dict[str, Any]: ...

    def hash(self) -> str: ...


class TokenizerModel(Protocol):
    """What the Tokenizer needs of a model (VQGAN and MAGVIT2 both provide it).

    ids = ``quantize.lookup(quant_conv(encoder(x)))`` = ``encode(x).ids``;
    image = ``decode(quantize.codes(ids))`` = ``decode_ids(ids)``.
    """

    config: Any  # a ModelConfig
    encoder: nn.Module  # (B, 3, H, W) -> (B, z_channels, h, w)
    quant_conv: nn.Module  # (B, z_channels, h, w) -> (B, D, h, w)
    quantize: Quantizer

    def encode(self, x: torch.Tensor) -> QuantizerOutput: ...

    def decode(self, z_q: torch.Tensor) -> torch.Tensor: ...

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelEntry:
    config_class: type  # has from_dict(dict) and to_dict()
    model_class: type[nn.Module]  # model_class(config)


_REGISTRY: dict[str, ModelEntry] = {
    "vqgan": ModelEntry(VQGANConfig, VQGAN),
    "magvit2": ModelEntry(MAGVIT2Config, MAGVIT2),
    "cosmos": ModelEntry(CosmosConfig, CosmosDI),
    "ibq": ModelEntry(IBQConfig, IBQ),
}
MODEL_TYPES: tuple[str, ...] = tuple(_REGISTRY)


def model_entry(model_type: str) -> ModelEntry:
    """The registered (config class, model class) of ``model_type``; ValueError naming the known ones."""
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise ValueError(f"unknown model_type {model_type!r}; this vqtok knows {', '.join(MODEL_TYPES)}") from None


def model_type_of(model: nn.Module) -> str:
    """The ``model_type`` a model is saved under (the most specific registered class it is an instance of)."""
    for name, entry in _REGISTRY.items():
        if type(model) is entry.model_class:
            return name
    for name, entry in _REGISTRY.items():
        if isinstance(model, entry.model_class):
            return name
    raise TypeError(f"{type(model).__name__} is not a registered vqtok model ({', '.join(MODEL_TYPES)})")


def build_model(model_type: str, config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised model of ``model_type`` from its config fields (as stored in config.json)."""
    entry = model_entry(model_type)
    return entry.model_class(entry.config_class.from_dict(config))


def model_from_config(config: Any) -> nn.Module:
    """A randomly initialised model for a config object (VQGANConfig -> VQGAN, MAGVIT2Config -> MAGVIT2, ...)."""
    for entry in _REGISTRY.values():
        if isinstance(config, entry.config_class):
            return entry.model_class(config)
    raise TypeError(f"{type(config).__name__} is not a registered vqtok model config ({', '.join(MODEL_TYPES)})")
