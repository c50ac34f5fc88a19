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

import logging
import os
from typing import Any, Mapping

import torch

from vqtok.convert.safe_pickle import load_checkpoint
from vqtok.convert.taming import infer_taming_config
from vqtok.hub import load_strict
from vqtok.models.ibq import IBQ, IBQConfig
from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["from_ibq", "ibq_state_dict", "infer_ibq_config", "ibq_tokenizer"]

_EMA_PREFIX = "model_ema."
_EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
_DROPPED_PREFIXES = ("loss.",)  # discriminator + LPIPS of the training loss
_WRAPPERS = ("module.", "_orig_mod.")  # DDP / torch.compile prefixes, should a file keep them
_KEPT_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPERS:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def ibq_state_dict(checkpoint: Any, *, ema: bool | None = None) -> dict[str, torch.Tensor]:
    """The tokenizer tensors of a loaded IBQ checkpoint (Lightning dict or bare state dict).

    ema: ``None`` takes the EMA weights when the file has them (as IBQ's scripts do), ``True``
    requires them, ``False`` takes the raw training weights.
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
        key = _strip(raw_key)
        if key.startswith(_DROPPED_PREFIXES) or key in _EMA_BOOKKEEPING:
            dropped += 1
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {raw_key!r} is a {type(value).__name__}, not a tensor")
        if key.startswith(_EMA_PREFIX):
            averaged[key[len(_EMA_PREFIX) :]] = value
        elif key.startswith(_KEPT_PREFIXES):
            model[key] = value
        else:
            dropped += 1
    if dropped:
        logger.info("dropped %d training-only entries (loss.*: discriminator, LPIPS; EMA bookkeeping)", dropped)
    if "quantize.embedding.weight" not in model or "encoder.conv_in.weight" not in model:
        raise ValueError(
            "not an IBQ checkpoint: 'encoder.conv_in.weight' / 'quantize.embedding.weight' are missing"
            + (" (an Open-MAGVIT2 LFQ model? use vqtok.convert.from_magvit2)" if any(k.startswith("decoder.adaptive.") for k in model) else "")
        )
    if "encoder.mid.block_1.conv1.weight" not in model:
        raise ValueError("not an IBQ checkpoint: the encoder has no taming mid block (encoder.mid.block_1)")
    use_ema = bool(averaged) if ema is None else ema
    if not use_ema:
        return model
    if not averaged:
        raise ValueError("ema=True but the checkpoint has no model_ema.* weights (trained with use_ema: False)")
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key in model:
        flat = key.replace(".", "")
        if flat in averaged:
            out[key] = averaged[flat]
        else:
            missing.append(key)
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"the checkpoint's EMA weights lack {', '.join(missing[:5])}{more}; pass ema=False for the raw weights")
    logger.info("using the EMA weights of the checkpoint (%d tensors)", len(out))
    return out


def infer_ibq_config(state: Mapping[str, torch.Tensor], *, resolution: int = 256) -> IBQConfig:
    """Read the architecture off the tensor shapes (taming's layout; see :func:`~vqtok.convert.infer_taming_config`)."""
    arch = infer_taming_config(state, resolution=resolution)
    return IBQConfig(
        ch=arch.ch, ch_mult=arch.ch_mult, num_res_blocks=arch.num_res_blocks, attn_resolutions=arch.attn_resolutions,
        z_channels=arch.z_channels, embed_dim=arch.embed_dim, n_embed=arch.n_embed, resolution=arch.resolution,
        in_channels=arch.in_channels, out_ch=arch.out_ch,
    )


def ibq_tokenizer(checkpoint: Any, *, source: str, ema: bool | None = None, resolution: int = 256) -> Tokenizer:
    """A Tokenizer from an already loaded IBQ checkpoint (``source`` names it in errors and logs)."""
    state = ibq_state_dict(checkpoint, ema=ema)
    cfg = infer_ibq_config(state, resolution=resolution)
    model = IBQ(cfg)
    load_strict(model, state, source=source)
    logger.info("converted IBQ checkpoint %s: %s", source, cfg)
    return Tokenizer(model)


def from_ibq(ckpt: str | os.PathLike[str], *, ema: bool | None = None, resolution: int = 256) -> Tokenizer:
    """Load an IBQ Lightning checkpoint (``imagenet256_262144.ckpt``, ...) into a :class:`~vqtok.Tokenizer`.

    ckpt: the ``.ckpt`` (weights under ``state_dict``) or a bare state dict saved with torch.save,
    read without executing pickled code. ema: see :func:`ibq_state_dict`. resolution: the training
    image side, recorded in the config (names the attention levels; the published models: 256).
    """
    return ibq_tokenizer(load_checkpoint(ckpt), source=str(ckpt), ema=ema, resolution=resolution)
