"""Import IBQ image tokenizers (TencentARC, SEED-Voken; ``TencentARC/IBQ-Tokenizer-{1024,8192,16384,262144}``).

Published checkpoints (``imagenet256_262144.ckpt``, ...) are PyTorch Lightning ``.ckpt`` files,
read with vqtok's restricted unpickler (nothing pickled in them is imported or run). Their
``state_dict`` (``src.IBQ.models.ibqgan.IBQ``) holds

* ``encoder.*`` / ``decoder.*`` / ``quant_conv.*`` / ``post_quant_conv.*`` /
  ``quantize.embedding.weight`` — named exactly as :class:`~vqtok.models.ibq.IBQ` (taming's
  layout), so they load with ``strict=True``;
* ``loss.*`` — discriminator and LPIPS of the training loss (dropped);
* ``model_ema.*`` when trained with ``use_ema: True`` (the published models): Lightning's
  ``LitEma`` copy of every trained parameter under its name without dots
  (``quantize.embedding.weight`` -> ``model_ema.quantizeembeddingweight``), plus
  ``model_ema.decay`` / ``model_ema.num_updates``. IBQ's reconstruction and evaluation scripts
  run the EMA weights (``ema_scope``) when the model has them, and so does this importer by
  default (``ema=None``); ``ema=False`` takes the raw weights.

The architecture is read off the tensor shapes (``resolution`` only names the attention levels).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from vqtok.convert._lightning import select_weights, split_ema_state
from vqtok.convert._build import convert_files
from vqtok.convert.safe_pickle import load_checkpoint
from vqtok.convert.taming import infer_taming_config
from vqtok.models.ibq import IBQConfig
from vqtok.tokenizer import Tokenizer

__all__ = ["convert_ibq", "from_ibq", "ibq_state_dict", "infer_ibq_config"]

_KEPT_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")


def ibq_state_dict(checkpoint: Any, *, ema: bool | None = None) -> dict[str, torch.Tensor]:
    """The tokenizer tensors of a loaded IBQ checkpoint (Lightning dict or bare state dict).

    ema: ``None`` takes the EMA weights when the file has them (as IBQ's scripts do), ``True``
    requires them, ``False`` takes the raw training weights.
    """
    model, averaged = split_ema_state(checkpoint, keep=_KEPT_PREFIXES)
    if "quantize.embedding.weight" not in model or "encoder.conv_in.weight" not in model:
        raise ValueError(
            "not an IBQ checkpoint: 'encoder.conv_in.weight' / 'quantize.embedding.weight' are missing"
            + (" (an Open-MAGVIT2 LFQ model? use vqtok.convert.from_magvit2)" if any(k.startswith("decoder.adaptive.") for k in model) else "")
        )
    if "encoder.mid.block_1.conv1.weight" not in model:
        raise ValueError("not an IBQ checkpoint: the encoder has no taming mid block (encoder.mid.block_1)")
    return select_weights(model, averaged, ema)


def infer_ibq_config(state: Mapping[str, torch.Tensor], *, resolution: int = 256) -> IBQConfig:
    """Read the architecture off the tensor shapes (taming's layout; see :func:`~vqtok.convert.infer_taming_config`)."""
    arch = infer_taming_config(state, resolution=resolution)  # dropout, beta: the same defaults as IBQConfig's
    return IBQConfig(**{f.name: getattr(arch, f.name) for f in fields(IBQConfig)})


def convert_ibq(
    paths: list[Path], *, checkpoint: Any = None, ema: bool | None = None, resolution: int = 256
) -> tuple[IBQConfig, dict[str, torch.Tensor]]:
    """An IBQ ``.ckpt`` -> (IBQConfig, state dict): the ``ibq`` format's converter."""
    state = ibq_state_dict(load_checkpoint(paths[0]) if checkpoint is None else checkpoint, ema=ema)
    return infer_ibq_config(state, resolution=resolution), state


def from_ibq(ckpt: str | os.PathLike[str], *, ema: bool | None = None, resolution: int = 256) -> Tokenizer:
    """Load an IBQ Lightning checkpoint (``imagenet256_262144.ckpt``, ...) into a :class:`~vqtok.Tokenizer`.

    ckpt: the ``.ckpt`` (weights under ``state_dict``) or a bare state dict saved with torch.save,
    read without executing pickled code. ema: see :func:`ibq_state_dict`. resolution: the training
    image side, recorded in the config (names the attention levels; the published models: 256).
    """
    return convert_files("ibq", [Path(ckpt)], source=str(ckpt), ema=ema, resolution=resolution)[1]
