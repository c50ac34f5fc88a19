"""Import LlamaGen's VQ image tokenizers (``tokenizer/tokenizer_image/vq_model.py``).

Published checkpoints: ``vq_ds16_c2i.pt`` (VQ-16, ImageNet), ``vq_ds8_c2i.pt`` (VQ-8, ImageNet)
and ``vq_ds16_t2i.pt`` (VQ-16, LAION-COCO + internal data). They are ``torch.save`` dicts
``{"model": state_dict, "optimizer": ..., "discriminator": ..., "optimizer_disc": ...,
"steps": int, "args": argparse.Namespace}``, with an ``"ema"`` state dict when trained with
``--ema``. They are read with vqtok's restricted unpickler (``argparse.Namespace`` becomes an
inert :class:`~vqtok.convert.safe_pickle.Placeholder` whose fields are still readable).

The network is taming's VQGAN with other module names and fixed choices:

* encoder levels are ``encoder.conv_blocks.{i}.{res,attn,downsample}`` (taming:
  ``encoder.down.{i}.{block,attn,downsample}``); the decoder's ``conv_blocks`` are stored in
  the order they run, lowest resolution first (taming's ``decoder.up`` is indexed by level, so
  ``decoder.conv_blocks.{k}`` is ``decoder.up.{n-1-k}``);
* the middle blocks are a ``ModuleList`` ``mid.{0,1,2}`` (taming: ``mid.block_1``,
  ``mid.attn_1``, ``mid.block_2``);
* attention sits in the lowest-resolution level only, in encoder and decoder alike
  (taming's ``attn_resolutions = (resolution / f,)``); ``ch`` = 128, two ResNet blocks per
  encoder level (three per decoder level), GroupNorm(32, eps 1e-6), taming's asymmetric
  downsample padding — the same computation as vqtok's :class:`~vqtok.models.vqgan.VQGAN`;
* the quantizer compares l2-normalised features with l2-normalised codes (cosine lookup) and
  returns normalised codes: ``VQGANConfig(l2_norm_codes=True)``. Its training-only
  ``quantize.codebook_used`` buffer (a usage ring buffer) is dropped.

So conversion is a renaming of keys plus a config; nothing of the model file is forked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from vqtok.convert.safe_pickle import Placeholder, load_checkpoint
from vqtok.models.vqgan import VQGANConfig
from vqtok.convert._lightning import strip_wrappers
from vqtok.convert._shapes import attn_levels, count_indices
from vqtok.convert.taming import infer_taming_config
from vqtok.convert._build import convert_files
from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "convert_llamagen",
    "from_llamagen",
    "infer_llamagen_config",
    "llamagen_state_dict",
    "llamagen_args",
    "llamagen_to_vqtok_keys",
    "vqtok_to_llamagen_keys",
]

_DROPPED = ("quantize.codebook_used",)  # training-only usage statistics
_MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}  # LlamaGen's mid.{i} -> taming's name
_MEMBERS = {"res": "block", "attn": "attn", "downsample": "downsample", "upsample": "upsample"}  # of a level


def llamagen_args(checkpoint: Any) -> dict[str, Any]:
    """The training arguments saved in a LlamaGen checkpoint (``args``), as a plain dict ({} if absent)."""
    if not isinstance(checkpoint, Mapping):
        return {}
    args = checkpoint.get("args")
    if isinstance(args, Placeholder):
        return args.attributes()
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def llamagen_state_dict(checkpoint: Any, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The VQ model tensors of a loaded LlamaGen checkpoint, in LlamaGen's own key layout.

    checkpoint: the training dict (``model`` / ``ema`` entries) or a bare state dict.
    ema: take the ``ema`` weights instead of ``model``.
    """
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint and "model" not in checkpoint:
        raise ValueError(
            "this is a PyTorch Lightning checkpoint ('state_dict' entry), as taming-transformers writes, "
            "not LlamaGen's: use `vqtok convert taming`"
        )
    if isinstance(checkpoint, Mapping) and ("model" in checkpoint or "ema" in checkpoint):
        entry = "ema" if ema else "model"
        if entry not in checkpoint:
            have = ", ".join(sorted(str(k) for k in checkpoint))
            hint = " (this run was not trained with --ema)" if ema else ""
            raise ValueError(f"checkpoint has no {entry!r} entry{hint}; it holds: {have}")
        state = checkpoint[entry]
    elif ema:
        raise ValueError("ema weights were asked for, but the checkpoint is a bare state dict without an 'ema' entry")
    else:
        state = checkpoint
    if isinstance(state, Placeholder):  # e.g. a whole pickled nn.Module instead of its state dict
        raise ValueError(
            "checkpoint stores a pickled model object, not a state dict; re-save it with "
            "torch.save({'model': model.state_dict()}, path)"
        )
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint holds no state dict (found {type(state).__name__})")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        key = strip_wrappers(key)
        if key in _DROPPED:
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    if "quantize.embedding.weight" not in out or "encoder.conv_blocks.0.res.0.conv1.weight" not in out:
        if "encoder.down.0.block.0.conv1.weight" in out:
            raise ValueError("this is a taming-transformers checkpoint, not LlamaGen's: use `vqtok convert taming`")
        raise ValueError(
            "not a LlamaGen VQ checkpoint: 'encoder.conv_blocks.0.res.0.conv1.weight' / "
            "'quantize.embedding.weight' are missing"
        )
    if any(k.endswith(".running_mean") for k in out):
        raise ValueError("this LlamaGen model uses norm_type='batch' (SyncBatchNorm); only GroupNorm models are supported")
    if any(".conv_shortcut." in k for k in out):
        raise ValueError("this LlamaGen model uses 3x3 conv shortcuts (conv_shortcut=True), which vqtok does not express")
    return out


def _levels(state: Mapping[str, torch.Tensor], part: str) -> int:
    rx = re.compile(rf"{part}\.conv_blocks\.(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    if not found or found != set(range(len(found))):
        raise ValueError(f"LlamaGen checkpoint has no contiguous {part}.conv_blocks.* levels (found {sorted(found)})")
    return len(found)


def _rename(state: Mapping[str, torch.Tensor], n_dec: int, *, to_vqtok: bool) -> dict[str, torch.Tensor]:
    """LlamaGen's key layout -> vqtok's (taming's), or back; ``decoder.conv_blocks.{k}`` is ``decoder.up.{n_dec-1-k}``."""
    members, mid = (_MEMBERS, _MID) if to_vqtok else ({v: k for k, v in _MEMBERS.items()}, {v: k for k, v in _MID.items()})
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.(conv_blocks|down|up|mid)\.(\w+)\.(.+)", key):
            part, group, idx, rest = m.groups()
            level, resample = ("down", "downsample") if part == "encoder" else ("up", "upsample")
            if group == "mid":
                if idx not in mid:
                    raise ValueError(f"unexpected LlamaGen middle block {key!r}")
                new = f"{part}.mid.{mid[idx]}.{rest}"
            elif group == ("conv_blocks" if to_vqtok else level) and idx.isdigit():
                kind, _, tail = rest.partition(".")
                if members.get(kind) not in ("block", "res", "attn", resample):
                    raise ValueError(f"unexpected LlamaGen key part {kind!r} in {rest!r}")
                i = int(idx) if part == "encoder" else n_dec - 1 - int(idx)
                new = f"{part}.{level if to_vqtok else 'conv_blocks'}.{i}.{members[kind]}.{tail}"
        if new in out:
            raise ValueError(f"two LlamaGen keys map to {new!r}")
        out[new] = value
    return out


def llamagen_to_vqtok_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename LlamaGen VQ keys to vqtok's (taming's) layout. Tensors are shared, not copied."""
    return _rename(state, _levels(state, "decoder"), to_vqtok=True)


def vqtok_to_llamagen_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`llamagen_to_vqtok_keys` (vqtok state dict -> LlamaGen ``VQModel`` keys)."""
    return _rename(state, count_indices(state, r"decoder\.up\.(\d+)\."), to_vqtok=False)


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"checkpoint args.{name} = {value!r} is not a boolean")


def infer_llamagen_config(
    state: Mapping[str, torch.Tensor],
    *,
    args: Mapping[str, Any] | None = None,
    l2_norm: bool | None = None,
) -> VQGANConfig:
    """The :class:`VQGANConfig` of a LlamaGen VQ model, from its weights (LlamaGen key layout).

    The shapes give ``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``, ``embed_dim`` and
    ``n_embed``. What the weights cannot show comes from the saved training ``args``:
    ``codebook_l2_norm`` (LlamaGen's default, and the only value its training script can set,
    is True), ``commit_loss_beta`` and ``dropout_p`` (training only) and ``image_size``
    (recorded as ``resolution``; it only names the attention level). ``l2_norm`` overrides
    ``args.codebook_l2_norm``.
    """
    args = dict(args or {})
    n_enc, n_dec = _levels(state, "encoder"), _levels(state, "decoder")
    if l2_norm is None:
        l2_norm = _as_bool(args.get("codebook_l2_norm", True), "codebook_l2_norm")
    resolution = int(args.get("image_size", 256) or 256)
    if resolution < 2 ** (n_enc - 1):
        resolution = 256
    vq = llamagen_to_vqtok_keys(state)  # taming's names: decoder.up.{i} is decoder level i
    arch = infer_taming_config(vq, resolution=resolution)
    ch, enc_mult = arch.ch, arch.ch_mult
    dec_out = [vq[f"decoder.up.{i}.block.0.conv1.weight"].shape[0] for i in range(n_dec)]
    dec_ch = vq["decoder.conv_out.weight"].shape[1]
    dec_mult = tuple(c // dec_ch for c in dec_out)
    if (dec_ch, dec_mult) != (ch, enc_mult):
        raise ValueError(
            f"encoder (ch {ch}, ch_mult {enc_mult}) and decoder (ch {dec_ch}, ch_mult {dec_mult}) differ; "
            "vqtok's VQGAN uses one ch_mult for both (as every published LlamaGen tokenizer does)"
        )
    if any(ch * m != c for m, c in zip(enc_mult, dec_out)):
        raise ValueError(f"level widths are not multiples of ch={ch}; not a LlamaGen VQ layout")
    dec_blocks = count_indices(vq, rf"decoder\.up\.{n_dec - 1}\.block\.(\d+)\.")
    if dec_blocks != arch.num_res_blocks + 1:
        raise ValueError(f"decoder levels have {dec_blocks} ResNet blocks, expected encoder's {arch.num_res_blocks} + 1")
    enc_attn = attn_levels(arch)  # the levels with encoder.down.{i}.attn.*
    dec_attn = [i for i in range(n_dec) if f"decoder.up.{i}.attn.0.q.weight" in vq]
    if enc_attn != dec_attn or len(enc_attn) > 1 or (enc_attn and enc_attn[0] != n_enc - 1):
        raise ValueError(
            f"attention at encoder levels {enc_attn} and decoder levels {dec_attn}; LlamaGen (and this "
            f"converter) put it at the lowest-resolution level {n_enc - 1} only"
        )
    return dataclasses.replace(
        arch,
        dropout=float(args.get("dropout_p", 0.0) or 0.0),
        beta=float(args.get("commit_loss_beta", 0.25)),
        legacy_loss=False,  # LlamaGen: codebook term + β · commitment term (the paper's form)
        l2_norm_codes=l2_norm,
    )


def convert_llamagen(
    paths: list[Path], *, checkpoint: Any = None, ema: bool = False, l2_norm: bool | None = None
) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
    """A LlamaGen ``.pt`` -> (VQGANConfig, state dict in vqtok's names): the ``llamagen`` format's converter.

    ema: take the ``ema`` weights instead of ``model``. l2_norm: override the cosine-lookup flag
    (default: the checkpoint's ``args.codebook_l2_norm``, else True).
    """
    checkpoint = load_checkpoint(paths[0]) if checkpoint is None else checkpoint
    args = llamagen_args(checkpoint)
    state = llamagen_state_dict(checkpoint, ema=ema)
    if args.get("vq_model"):
        logger.info("LlamaGen checkpoint %s: %s, %s weights", paths[0], args["vq_model"], "ema" if ema else "model")
    return infer_llamagen_config(state, args=args, l2_norm=l2_norm), llamagen_to_vqtok_keys(state)


def from_llamagen(
    ckpt: str | os.PathLike[str],
    *,
    ema: bool = False,
    l2_norm: bool | None = None,
) -> Tokenizer:
    """Load a LlamaGen VQ tokenizer checkpoint (``vq_ds16_c2i.pt``, ``vq_ds8_c2i.pt``, ...) into a Tokenizer.

    ckpt: LlamaGen's ``torch.save`` training dict (or a bare state dict), read without executing
    pickled code. ema, l2_norm: see :func:`convert_llamagen`.
    """
    return convert_files("llamagen", [Path(ckpt)], source=str(ckpt), ema=ema, l2_norm=l2_norm)[1]
