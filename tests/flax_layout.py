"""Write a taming-layout VQGAN as vqgan-jax / dalle-mini publish it: ``flax_model.msgpack`` + ``config.json``.

Built from the published vqgan-jax source (patil-suraj/vqgan-jax): its converter renames
``name.i`` to ``name_i`` (regex ``\\w+[.]\\d+``), stores conv weights as HWIO ``kernel``s,
GroupNorm weights as ``scale`` and the codebook as ``quantize/embedding/embedding``; the file
is ``flax.serialization.to_bytes(params)`` (MessagePack, arrays as extension type 1 holding
msgpack ``(shape, dtype name, bytes)``). Independent of vqtok's reader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import msgpack
import numpy as np
import torch

from vqtok.models.vqgan import VQGANConfig


def _rename(key: str) -> str:
    for pat in re.findall(r"\w+[.]\d+", key):
        key = key.replace(pat, "_".join(pat.split(".")))
    return key


def flax_tree(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in state.items():
        parts = _rename(key).split(".")
        array = value.detach().float().numpy()
        leaf = parts[-1]
        if parts[-2:] == ["embedding", "weight"] and parts[0] == "quantize":
            leaf = "embedding"
        elif leaf == "weight" and array.ndim == 4:
            leaf, array = "kernel", array.transpose(2, 3, 1, 0)
        elif leaf == "weight" and array.ndim == 1:  # GroupNorm
            leaf = "scale"
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(array)
    return tree


def _ext(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(1, msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")), use_bin_type=True))
    raise TypeError(type(obj))


def write_flax_folder(folder: Path, state: Mapping[str, torch.Tensor], cfg: VQGANConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flax_model.msgpack").write_bytes(msgpack.packb(flax_tree(state), default=_ext, strict_types=True))
    config = {
        "_name_or_path": "dalle-mini/vqgan_imagenet_f16_16384", "architectures": ["VQModel"], "transformers_version": "4.13.0",
        "ch": cfg.ch, "ch_mult": list(cfg.ch_mult), "num_res_blocks": cfg.num_res_blocks,
        "attn_resolutions": list(cfg.attn_resolutions), "z_channels": cfg.z_channels, "embed_dim": cfg.embed_dim,
        "n_embed": cfg.n_embed, "resolution": cfg.resolution, "in_channels": cfg.in_channels, "out_ch": cfg.out_ch,
        "dropout": 0.0, "double_z": False, "resamp_with_conv": True, "give_pre_end": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder
