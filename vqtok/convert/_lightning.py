"""What the importers of Lightning-trained checkpoints share (taming; Open-MAGVIT2, IBQ: SEED-Voken's ``LitEma``).

* :func:`strip_wrappers`: drop the ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefixes a
  saved key may keep (also used by the LlamaGen importer);
* :func:`split_ema_state`: the raw weights and Lightning's ``model_ema.*`` copies of a checkpoint,
  with the training loss (``loss.*``) and EMA bookkeeping dropped;
* :func:`select_weights`: the raw or the EMA weights, under the raw weights' names (``LitEma``
  stores ``encoder.conv_in.weight`` as ``model_ema.encoderconv_inweight``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

import torch

from vqtok._errors import listing

logger = logging.getLogger(__name__)

__all__ = ["strip_wrappers", "split_ema_state", "select_weights"]

_WRAPPERS = re.compile(r"^(?:module\.|_orig_mod\.)+")  # DDP / torch.compile wrappers, should a file keep them
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
DROPPED_PREFIXES = ("loss.",)  # discriminator + LPIPS of the training loss


def strip_wrappers(key: str) -> str:
    """``key`` without any leading ``module.`` / ``_orig_mod.`` (in any order and number)."""
    return _WRAPPERS.sub("", key)


def split_ema_state(
    checkpoint: Any, *, keep: tuple[str, ...] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(raw weights, EMA weights by their dotless names) of a Lightning dict or bare state dict.

    ``keep``: key prefixes of the raw weights to keep (others are dropped as training-only);
    ``None`` keeps every raw weight. Non-string keys are skipped; a non-tensor value is an error.
    """
    state = checkpoint["state_dict"] if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint holds no state dict (found {type(state).__name__})")
    model: dict[str, torch.Tensor] = {}
    averaged: dict[str, torch.Tensor] = {}
    dropped = 0
    for raw_key, value in state.items():
        if not isinstance(raw_key, str):
            continue
        key = strip_wrappers(raw_key)
        if key.startswith(DROPPED_PREFIXES) or key in EMA_BOOKKEEPING:
            dropped += 1
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {raw_key!r} is a {type(value).__name__}, not a tensor")
        if key.startswith(EMA_PREFIX):
            averaged[key[len(EMA_PREFIX) :]] = value
        elif keep is None or key.startswith(keep):
            model[key] = value
        else:
            dropped += 1
    if dropped:
        logger.info("dropped %d training-only entries (loss.*: discriminator, LPIPS; EMA bookkeeping)", dropped)
    return model, averaged


def select_weights(
    model: dict[str, torch.Tensor], averaged: Mapping[str, torch.Tensor], ema: bool | None
) -> dict[str, torch.Tensor]:
    """The raw weights, or their EMA copies under the same names.

    ema: ``None`` takes the EMA weights when there are any (as the trainers' own scripts do),
    ``True`` requires them, ``False`` takes the raw weights. ValueError naming the tensors the EMA lacks.
    """
    use_ema = bool(averaged) if ema is None else ema
    if not use_ema:
        return model
    if not averaged:
        raise ValueError("ema=True but the checkpoint has no model_ema.* weights (trained with use_ema: False)")
    missing = [key for key in model if key.replace(".", "") not in averaged]
    if missing:
        raise ValueError(f"the checkpoint's EMA weights lack {listing(missing)}; pass ema=False for the raw weights")
    logger.info("using the EMA weights of the checkpoint (%d tensors)", len(model))
    return {key: averaged[key.replace(".", "")] for key in model}
