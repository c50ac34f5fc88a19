"""Import Open-MAGVIT2 image tokenizers (TencentARC, ``TencentARC/Open-MAGVIT2-Tokenizer-*``).

Published checkpoints (``imagenet_256_L.ckpt``, ``imagenet_128_L.ckpt``...) are PyTorch
Lightning ``.ckpt`` files: ``{"state_dict": ..., "optimizer_states": ..., "hyper_parameters": ...}``.
They are read with vqtok's restricted unpickler; nothing pickled in them is imported or run.

The ``state_dict`` of ``lfqgan.VQModel`` holds

* ``encoder.*`` / ``decoder.*`` — the autoencoder, named exactly as
  :class:`~vqtok.models.magvit2.MAGVIT2` (so they load with ``strict=True``);
* ``loss.*`` — the discriminator and LPIPS of the training loss (dropped);
* ``model_ema.*`` when trained with ``use_ema: True`` (the published models): an exponential
  moving average of every parameter, stored by Lightning's ``LitEma`` under the parameter's
  name with the dots removed (``encoder.conv_in.weight`` -> ``model_ema.encoderconv_inweight``),
  plus ``model_ema.decay`` / ``model_ema.num_updates``. Open-MAGVIT2's own reconstruction and
  evaluation scripts run the EMA weights (``ema_scope``) when they exist, so does this
  importer by default (``ema=None``); ``ema=False`` takes the raw weights.

The LFQ quantizer has no tensors (its codebook is implicit), and the architecture is read off
the tensor shapes: ``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels`` (= bits per token).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from vqtok.convert._lightning import select_weights, split_ema_state
from vqtok.convert._shapes import count_indices, encoder_shape
from vqtok.convert._build import convert_files
from vqtok.convert.safe_pickle import load_checkpoint
from vqtok.models.magvit2 import MAGVIT2Config
from vqtok.tokenizer import Tokenizer

__all__ = ["convert_magvit2", "from_magvit2", "infer_magvit2_config", "magvit2_state_dict"]

def magvit2_state_dict(checkpoint: Any, *, ema: bool | None = None) -> dict[str, torch.Tensor]:
    """The autoencoder tensors of a loaded Open-MAGVIT2 checkpoint (Lightning dict or bare state dict).

    ema: ``None`` takes the EMA weights when the file has them (as Open-MAGVIT2's scripts do),
    ``True`` requires them, ``False`` takes the raw training weights.
    """
    model, averaged = split_ema_state(checkpoint)
    if "encoder.conv_in.weight" not in model or "decoder.conv_out.weight" not in model:
        raise ValueError("not an Open-MAGVIT2 checkpoint: 'encoder.conv_in.weight' / 'decoder.conv_out.weight' are missing")
    if "encoder.mid_block.0.conv1.weight" not in model or not any(k.startswith("decoder.adaptive.") for k in model):
        raise ValueError(
            "not an Open-MAGVIT2 checkpoint: no encoder.mid_block / decoder.adaptive tensors "
            "(a taming VQGAN? use vqtok.convert.from_taming)"
        )
    if "quantize.embedding.weight" in model:
        raise ValueError(
            "this checkpoint has a learned codebook (quantize.embedding.weight): an IBQ / VQ model, "
            "not Open-MAGVIT2's lookup-free quantizer"
        )
    return select_weights(model, averaged, ema)


def infer_magvit2_config(state: Mapping[str, torch.Tensor], *, resolution: int = 256) -> MAGVIT2Config:
    """Read the architecture off the tensor shapes (``resolution`` is not in the weights: it is recorded as given)."""
    arch = encoder_shape(state, what="an Open-MAGVIT2 encoder")
    decoder_blocks = count_indices(state, r"decoder\.up\.0\.block\.(\d+)\.")
    if decoder_blocks != arch.num_res_blocks:
        raise ValueError(f"encoder has {arch.num_res_blocks} blocks per level but decoder {decoder_blocks}: not a supported layout")
    return MAGVIT2Config(
        ch=arch.ch,
        ch_mult=arch.ch_mult,
        num_res_blocks=arch.num_res_blocks,
        z_channels=arch.z_channels,
        resolution=resolution,
        in_channels=arch.in_channels,
        out_ch=int(state["decoder.conv_out.weight"].shape[0]),
    )


def convert_magvit2(
    paths: list[Path], *, checkpoint: Any = None, ema: bool | None = None, resolution: int = 256
) -> tuple[MAGVIT2Config, dict[str, torch.Tensor]]:
    """An Open-MAGVIT2 ``.ckpt`` -> (MAGVIT2Config, state dict): the ``magvit2`` format's converter."""
    state = magvit2_state_dict(load_checkpoint(paths[0]) if checkpoint is None else checkpoint, ema=ema)
    return infer_magvit2_config(state, resolution=resolution), state


def from_magvit2(
    ckpt: str | os.PathLike[str], *, ema: bool | None = None, resolution: int = 256
) -> Tokenizer:
    """Load an Open-MAGVIT2 Lightning checkpoint (``imagenet_256_L.ckpt``, ...) into a :class:`~vqtok.Tokenizer`.

    ckpt: the ``.ckpt`` (weights under ``state_dict``) or a bare state dict saved with torch.save,
    read without executing pickled code. ema: see :func:`magvit2_state_dict`. resolution: the
    training image side, recorded in the config (the published files: 256 or 128).
    """
    return convert_files("magvit2", [Path(ckpt)], source=str(ckpt), ema=ema, resolution=resolution)[1]
