"""Import taming-transformers VQGAN checkpoints (``VQModel`` Lightning ``.ckpt`` files).

Published examples: ImageNet f16-1024 / f16-16384 (``vqgan_imagenet_f16_*``) and the
OpenImages f8-16384 ``vq-f8`` of latent diffusion. The parameter layout of
:class:`vqtok.models.vqgan.VQGAN` is taming's, so conversion is: read the file safely, keep
``state_dict`` minus the training-only ``loss.*`` entries (discriminator, LPIPS), find the
architecture, load strictly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from vqtok.convert._lightning import split_ema_state
from vqtok.convert._shapes import attn_levels, encoder_shape
from vqtok.convert._build import convert_files
from vqtok.convert.safe_pickle import load_checkpoint
from vqtok.models.vqgan import VQGANConfig
from vqtok.tokenizer import Tokenizer

__all__ = ["convert_taming", "from_taming", "infer_taming_config", "taming_config_from_yaml", "taming_state_dict"]


def taming_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The autoencoder tensors of a loaded checkpoint (Lightning dict or bare state dict)."""
    out, _ = split_ema_state(checkpoint)  # drops the training loss's loss.* (discriminator, LPIPS)
    if "quantize.embed.weight" in out or any(k.startswith("quantize.proj.") for k in out):
        raise ValueError("this is a Gumbel-quantizer taming checkpoint (GumbelQuantize); only VQModel checkpoints are supported")
    if "quantize.embedding.weight" not in out or "encoder.conv_in.weight" not in out:
        raise ValueError(
            "not a taming VQModel checkpoint: 'encoder.conv_in.weight' / 'quantize.embedding.weight' are missing"
        )
    return out


def infer_taming_config(state: Mapping[str, torch.Tensor], *, resolution: int = 256) -> VQGANConfig:
    """Read the architecture off the tensor shapes.

    ``resolution`` cannot be seen in the weights (convolutions take any size); it only names
    the attention levels, which *are* seen: level i carries attention iff
    ``encoder.down.i.attn.*`` exists, and is recorded as ``resolution // 2**i``.
    """
    arch = encoder_shape(state, what="a taming VQModel")
    attn_levels = [i for i in range(len(arch.ch_mult)) if f"encoder.down.{i}.attn.0.q.weight" in state]
    n_embed, embed_dim = state["quantize.embedding.weight"].shape
    return VQGANConfig(
        ch=arch.ch,
        ch_mult=arch.ch_mult,
        num_res_blocks=arch.num_res_blocks,
        attn_resolutions=tuple(resolution // 2**i for i in attn_levels),
        z_channels=arch.z_channels,
        embed_dim=embed_dim,
        n_embed=n_embed,
        resolution=resolution,
        in_channels=arch.in_channels,
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


def convert_taming(
    paths: list[Path], *, checkpoint: Any = None, config: str | os.PathLike[str] | VQGANConfig | None = None
) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
    """A taming ``.ckpt`` -> (VQGANConfig, state dict): the ``taming`` format's converter.

    checkpoint: the file already loaded (from_pretrained reads it once to tell the family).
    config: taming's YAML, a VQGANConfig, or None to infer it from the weights; a given config is
    cross-checked against the weights.
    """
    state = taming_state_dict(load_checkpoint(paths[0]) if checkpoint is None else checkpoint)
    inferred = infer_taming_config(state)
    if config is None:
        return inferred, state
    cfg = config if isinstance(config, VQGANConfig) else taming_config_from_yaml(config)
    diffs = [
        f"{name}: config {getattr(cfg, name)} vs weights {getattr(inferred, name)}"
        for name in ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "in_channels", "out_ch")
        if getattr(cfg, name) != getattr(inferred, name)
    ]
    if attn_levels(cfg) != attn_levels(inferred):
        diffs.append(f"attention levels: config {attn_levels(cfg)} vs weights {attn_levels(inferred)}")
    if diffs:
        raise ValueError("config does not match the checkpoint: " + "; ".join(diffs))
    return cfg, state


def from_taming(
    ckpt: str | os.PathLike[str],
    config: str | os.PathLike[str] | VQGANConfig | None = None,
) -> Tokenizer:
    """Load a taming-transformers VQGAN checkpoint into a :class:`~vqtok.Tokenizer`.

    ckpt: Lightning ``.ckpt`` (or a bare state dict saved with torch.save), read without
    executing pickled code. config: see :func:`convert_taming`.
    """
    return convert_files("taming", [Path(ckpt)], source=str(ckpt), config=config)[1]
