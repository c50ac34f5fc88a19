"""Import taming-transformers VQGAN checkpoints (``VQModel`` Lightning ``.ckpt`` files).

Published examples: ImageNet f16-1024 / f16-16384 (``vqgan_imagenet_f16_*``) and the
OpenImages f8-16384 ``vq-f8`` of latent diffusion. The parameter layout of
:class:`vqtok.models.vqgan.VQGAN` is taming's, so conversion is: read the file safely, keep
``state_dict`` minus the training-only ``loss.*`` entries (discriminator, LPIPS), find the
architecture, load strictly.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from vqtok.convert.safe_pickle import load_checkpoint
from vqtok.models.vqgan import VQGAN, VQGANConfig
from vqtok.hub import load_strict
from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["from_taming", "infer_taming_config", "taming_config_from_yaml", "taming_state_dict"]

_DROPPED_PREFIXES = ("loss.",)  # discriminator + LPIPS of the training loss


def taming_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The autoencoder tensors of a loaded checkpoint (Lightning dict or bare state dict)."""
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
    else:
        state = checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint holds no state dict (found {type(state).__name__})")
    out: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if key.startswith(_DROPPED_PREFIXES):
            dropped += 1
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    if dropped:
        logger.info("dropped %d training-only 'loss.*' tensors (discriminator, LPIPS)", dropped)
    if "quantize.embed.weight" in out or any(k.startswith("quantize.proj.") for k in out):
        raise ValueError("this is a Gumbel-quantizer taming checkpoint (GumbelQuantize); only VQModel checkpoints are supported")
    if "quantize.embedding.weight" not in out or "encoder.conv_in.weight" not in out:
        raise ValueError(
            "not a taming VQModel checkpoint: 'encoder.conv_in.weight' / 'quantize.embedding.weight' are missing"
        )
    return out


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def infer_taming_config(state: Mapping[str, torch.Tensor], *, resolution: int = 256) -> VQGANConfig:
    """Read the architecture off the tensor shapes.

    ``resolution`` cannot be seen in the weights (convolutions take any size); it only names
    the attention levels, which *are* seen: level i carries attention iff
    ``encoder.down.i.attn.*`` exists, and is recorded as ``resolution // 2**i``.
    """
    ch = state["encoder.conv_in.weight"].shape[0]
    in_channels = state["encoder.conv_in.weight"].shape[1]
    levels = _count(state, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    num_res_blocks = _count(state, r"encoder\.down\.0\.block\.(\d+)\.")
    attn_levels = [i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state]
    z_channels = state["encoder.conv_out.weight"].shape[0]
    if state["decoder.conv_in.weight"].shape[1] != z_channels:
        raise ValueError(
            f"encoder.conv_out gives {z_channels} channels but decoder.conv_in takes "
            f"{state['decoder.conv_in.weight'].shape[1]} (a double_z KL model is not a VQGAN)"
        )
    n_embed, embed_dim = state["quantize.embedding.weight"].shape
    return VQGANConfig(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        attn_resolutions=tuple(resolution // 2**i for i in attn_levels),
        z_channels=z_channels,
        embed_dim=embed_dim,
        n_embed=n_embed,
        resolution=resolution,
        in_channels=in_channels,
        out_ch=state["decoder.conv_out.weight"].shape[0],
    )


def taming_config_from_yaml(path: str | os.PathLike[str]) -> VQGANConfig:
    """Read taming's model YAML (``model.params.ddconfig``, ``n_embed``, ``embed_dim``)."""
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - pyyaml comes with huggingface-hub
        raise ValueError("reading taming YAML configs needs pyyaml: pip install pyyaml") from err
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config {p} does not exist")
    try:
        doc = yaml.safe_load(p.read_text())
        params = doc["model"]["params"]
        dd = params["ddconfig"]
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{p} is not a taming model config (expected model.params.ddconfig): {err}") from err
    target = str(doc["model"].get("target", ""))
    if "Gumbel" in target:
        raise ValueError(f"{p} describes a Gumbel-quantizer model ({target}); only VQModel is supported")
    if dd.get("double_z", False):
        raise ValueError(f"{p} has double_z: true (a KL autoencoder), not a VQGAN")
    return VQGANConfig(
        ch=int(dd["ch"]),
        ch_mult=tuple(dd["ch_mult"]),
        num_res_blocks=int(dd["num_res_blocks"]),
        attn_resolutions=tuple(dd.get("attn_resolutions", ())),
        z_channels=int(dd["z_channels"]),
        embed_dim=int(params["embed_dim"]),
        n_embed=int(params["n_embed"]),
        resolution=int(dd.get("resolution", 256)),
        in_channels=int(dd.get("in_channels", 3)),
        out_ch=int(dd.get("out_ch", 3)),
        dropout=float(dd.get("dropout", 0.0)),
    )


def _attn_levels(cfg: VQGANConfig) -> list[int]:
    return [i for i in range(len(cfg.ch_mult)) if cfg.resolution // 2**i in cfg.attn_resolutions]


def from_taming(
    ckpt: str | os.PathLike[str],
    config: str | os.PathLike[str] | VQGANConfig | None = None,
) -> Tokenizer:
    """Load a taming-transformers VQGAN checkpoint into a :class:`~vqtok.Tokenizer`.

    ckpt: Lightning ``.ckpt`` (or a bare state dict saved with torch.save), read without
    executing pickled code. config: taming's YAML, a VQGANConfig, or None to infer it from the
    weights. A YAML config is cross-checked against the weights.
    """
    state = taming_state_dict(load_checkpoint(ckpt))
    inferred = infer_taming_config(state)
    if config is None:
        cfg = inferred
    else:
        cfg = config if isinstance(config, VQGANConfig) else taming_config_from_yaml(config)
        diffs = [
            f"{name}: config {getattr(cfg, name)} vs weights {getattr(inferred, name)}"
            for name in ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "in_channels", "out_ch")
            if getattr(cfg, name) != getattr(inferred, name)
        ]
        if _attn_levels(cfg) != _attn_levels(inferred):
            diffs.append(f"attention levels: config {_attn_levels(cfg)} vs weights {_attn_levels(inferred)}")
        if diffs:
            raise ValueError("config does not match the checkpoint: " + "; ".join(diffs))
    model = VQGAN(cfg)
    load_strict(model, state, source=str(ckpt))
    logger.info("converted taming checkpoint %s: %s", ckpt, cfg)
    return Tokenizer(model)
