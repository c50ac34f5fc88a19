"""Import and export 🤗 diffusers ``VQModel`` folders (``config.json`` + ``diffusion_pytorch_model.safetensors``).

diffusers' ``VQModel`` is taming's VQGAN rebuilt from diffusers blocks; the computation is the
same where the config allows it and the names differ:

================================================  ==========================================
diffusers                                         vqtok (taming)
================================================  ==========================================
``encoder.down_blocks.{i}.resnets.{j}``           ``encoder.down.{i}.block.{j}``
``...resnets.{j}.conv_shortcut`` (1×1)             ``...block.{j}.nin_shortcut``
``encoder.down_blocks.{i}.attentions.{j}``        ``encoder.down.{i}.attn.{j}``
``...attentions.{j}.group_norm / to_q / to_k /     ``...attn.{j}.norm / q / k / v / proj_out``
to_v / to_out.0`` (Linear, (C, C))                (1×1 Conv2d, (C, C, 1, 1))
``encoder.down_blocks.{i}.downsamplers.0.conv``   ``encoder.down.{i}.downsample.conv``
``{en,de}coder.mid_block.resnets.{0,1}``          ``{en,de}coder.mid.block_{1,2}``
``{en,de}coder.mid_block.attentions.0``           ``{en,de}coder.mid.attn_1``
``{en,de}coder.conv_norm_out``                    ``{en,de}coder.norm_out``
``decoder.up_blocks.{k}`` (run order)             ``decoder.up.{n-1-k}`` (indexed by level)
``decoder.up_blocks.{k}.upsamplers.0.conv``       ``decoder.up.{n-1-k}.upsample.conv``
================================================  ==========================================

``quant_conv``, ``post_quant_conv``, ``quantize.embedding.weight``, ``{en,de}coder.conv_in`` and
``conv_out`` keep their names. Older diffusers files name the attention projections
``query / key / value / proj_attn``; they are read too.

What vqtok's :class:`~vqtok.models.vqgan.VQGANConfig` can express, and so what is accepted:
``block_out_channels = ch · ch_mult`` with ``ch_mult[0] = 1``; ``norm_num_groups`` (vqtok's ``norm_groups``);
``act_fn = silu``; ``norm_type = "group"``; ``mid_block_add_attention = true``; and attention
at the same levels of encoder (``AttnDownEncoderBlock2D``) and decoder (``AttnUpDecoderBlock2D``).
Anything else (e.g. Kandinsky's MoVQ with ``norm_type="spatial"``, aMUSEd's VQ without middle
attention) is refused with a message naming the field. Export refuses models with
``l2_norm_codes=True`` (LlamaGen): diffusers' quantizer has no cosine lookup, so its ids would
differ.

diffusers itself is not needed to convert either way (only ``safetensors`` and JSON); it is
needed only to run the exported model.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from vqtok._io import atomic_write
from vqtok.convert._build import convert_files
from vqtok.convert._shapes import attn_levels
from vqtok.convert.safe_pickle import load_checkpoint
from vqtok.hub import read_config_json, resolve_folder
from vqtok.models.vqgan import VQGAN, VQGANConfig
from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "convert_diffusers",
    "from_diffusers",
    "to_diffusers",
    "diffusers_config_to_vqtok",
    "vqtok_config_to_diffusers",
    "diffusers_to_vqtok_keys",
    "vqtok_to_diffusers_keys",
    "DIFFUSERS_CONFIG_NAME",
    "DIFFUSERS_WEIGHTS_NAME",
]

DIFFUSERS_CONFIG_NAME = "config.json"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_DIFFUSERS_BIN_NAME = "diffusion_pytorch_model.bin"
# Written into exported configs when diffusers is not installed (the config format it matches).
_FALLBACK_DIFFUSERS_VERSION = "0.30.0"

_DOWN, _ATTN_DOWN = "DownEncoderBlock2D", "AttnDownEncoderBlock2D"
_UP, _ATTN_UP = "UpDecoderBlock2D", "AttnUpDecoderBlock2D"

# per-module renames inside a block (diffusers name -> vqtok name)
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # names of diffusers' deprecated AttentionBlock, still found in older files
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_ATTN_INV = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET_INV = {v: k for k, v in _RESNET.items()}


# ---------------------------------------------------------------------------------- configs
def _get(config: Mapping[str, Any], key: str, default: Any) -> Any:
    value = config.get(key, default)
    return default if value is None else value


def diffusers_config_to_vqtok(config: Mapping[str, Any]) -> VQGANConfig:
    """Map a diffusers ``VQModel`` config (its ``config.json``) onto a :class:`VQGANConfig`.

    Raises ValueError naming every field whose value vqtok's VQGAN cannot compute faithfully.
    """
    cls = config.get("_class_name", "VQModel")
    if cls != "VQModel":
        raise ValueError(f"config.json describes a diffusers {cls!r}, not a 'VQModel'")
    problems: list[str] = []
    boc = [int(c) for c in _get(config, "block_out_channels", (64,))]
    down = list(_get(config, "down_block_types", (_DOWN,)))
    up = list(_get(config, "up_block_types", (_UP,)))
    n = len(boc)
    if len(down) != n or len(up) != n:
        problems.append(f"{len(down)} down / {len(up)} up block types for {n} block_out_channels")
    for name, types, allowed in (("down_block_types", down, (_DOWN, _ATTN_DOWN)), ("up_block_types", up, (_UP, _ATTN_UP))):
        odd = sorted({t for t in types if t not in allowed})
        if odd:
            problems.append(f"{name} {odd} (supported: {', '.join(allowed)})")
    act = str(_get(config, "act_fn", "silu"))
    if act not in ("silu", "swish"):
        problems.append(f"act_fn={act!r} (vqtok uses silu)")
    groups = int(_get(config, "norm_num_groups", 32))
    norm_type = str(_get(config, "norm_type", "group"))
    if norm_type != "group":
        problems.append(f"norm_type={norm_type!r} (spatially conditioned norm, as in MoVQ; vqtok has GroupNorm only)")
    if not bool(_get(config, "mid_block_add_attention", True)):
        problems.append("mid_block_add_attention=false (vqtok's middle block always has attention)")
    ch = boc[0] if boc else 0
    if ch <= 0 or any(c % ch for c in boc):
        problems.append(f"block_out_channels={boc} are not multiples of the first ({ch}); vqtok needs ch · ch_mult with ch_mult[0]=1")
    enc_attn = [i for i, t in enumerate(down) if t == _ATTN_DOWN]
    dec_attn = sorted(n - 1 - k for k, t in enumerate(up) if t == _ATTN_UP)
    if enc_attn != dec_attn:
        problems.append(
            f"attention at encoder levels {enc_attn} but decoder levels {dec_attn} (vqtok places it at the same levels in both)"
        )
    if problems:
        raise ValueError("this diffusers VQModel cannot be expressed by vqtok's VQGAN: " + "; ".join(problems))
    latent = int(_get(config, "latent_channels", 3))
    embed_dim = int(_get(config, "vq_embed_dim", latent))
    f = 2 ** (n - 1)
    resolution = int(_get(config, "sample_size", 256))
    if isinstance(config.get("sample_size"), (list, tuple)) or resolution < f:
        resolution = max(256, f)
    scaling = config.get("scaling_factor")
    if scaling is not None:
        logger.debug("ignoring scaling_factor=%s (a latent-diffusion scale; tokens do not depend on it)", scaling)
    return VQGANConfig(
        ch=ch,
        ch_mult=tuple(c // ch for c in boc),
        num_res_blocks=int(_get(config, "layers_per_block", 1)),
        attn_resolutions=tuple(resolution // 2**i for i in enc_attn),
        z_channels=latent,
        embed_dim=embed_dim,
        n_embed=int(_get(config, "num_vq_embeddings", 256)),
        resolution=resolution,
        in_channels=int(_get(config, "in_channels", 3)),
        out_ch=int(_get(config, "out_channels", 3)),
        norm_groups=groups,
    )


def vqtok_config_to_diffusers(cfg: VQGANConfig) -> dict[str, Any]:
    """The diffusers ``VQModel`` config of a vqtok model (raises ValueError if it has none)."""
    problems = []
    if cfg.quantizer != "vq":
        problems.append(f"quantizer {cfg.quantizer!r}: diffusers' VQModel has only nearest-code VQ")
    if cfg.l2_norm_codes:
        problems.append(
            "l2_norm_codes=True (cosine code lookup, e.g. LlamaGen): diffusers' VectorQuantizer compares raw "
            "features with raw codes, so its ids would differ"
        )
    if cfg.ch_mult[0] != 1:
        problems.append(f"ch_mult[0]={cfg.ch_mult[0]}: diffusers' first level keeps the conv_in width (needs ch_mult[0]=1)")
    if problems:
        raise ValueError("this model cannot be exported to a diffusers VQModel: " + "; ".join(problems))
    n = len(cfg.ch_mult)
    attn = set(attn_levels(cfg))
    try:  # the installed diffusers' version, without importing it (slow)
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        version = _FALLBACK_DIFFUSERS_VERSION
    return {
        "_class_name": "VQModel",
        "_diffusers_version": version,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_ch,
        "down_block_types": [_ATTN_DOWN if i in attn else _DOWN for i in range(n)],
        "up_block_types": [_ATTN_UP if (n - 1 - k) in attn else _UP for k in range(n)],
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": cfg.z_channels,
        "sample_size": cfg.resolution,
        "num_vq_embeddings": cfg.n_embed,
        "norm_num_groups": cfg.norm_groups,
        "vq_embed_dim": cfg.embed_dim,
        "scaling_factor": 1.0,  # no latent scaling: tokens and pixels do not depend on it
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


# ---------------------------------------------------------------------------------- keys
def _is_linear_attn(new_key: str) -> bool:
    return bool(re.search(r"\.(attn\.\d+|attn_1)\.(q|k|v|proj_out)\.weight$", new_key))


def _block_tail(tail: str, table: Mapping[str, str], key: str) -> str:
    for old, new in table.items():
        if tail.startswith(old + "."):
            return new + tail[len(old) :]
    raise ValueError(f"unexpected diffusers key {key!r}")


def _level_blocks(key: str, levels: int, rx: re.Pattern[str]) -> tuple[str, str, int, str | None, str | None, str] | None:
    """``(part, "down" | "up", level, member, j, tail)`` of a level key matched by ``rx`` (an encoder's
    ``down``, a decoder's ``up``); the decoder's run order (diffusers) is the reverse of its level order (vqtok)."""
    m = rx.match(key)
    if m is None or (m[1], m[2]) not in (("encoder", "down"), ("decoder", "up")):
        return None
    part, side, i, kind, j, tail = m.groups()
    return part, side, int(i) if part == "encoder" else levels - 1 - int(i), kind, j, tail


def diffusers_to_vqtok_keys(state: Mapping[str, torch.Tensor], *, levels: int) -> dict[str, torch.Tensor]:
    """Rename a diffusers VQModel state dict to vqtok's layout (attention Linear -> 1×1 conv weights)."""
    rx_level = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|attentions|\2samplers)\.(\d+)\.(.+)$")
    rx_mid = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if found := _level_blocks(key, levels, rx_level):
            part, side, level, kind, j, tail = found
            base = f"{part}.{side}.{level}"
            if kind == "resnets":
                new = f"{base}.block.{j}.{_block_tail(tail, _RESNET, key)}"
            elif kind == "attentions":
                new = f"{base}.attn.{j}.{_block_tail(tail, _ATTN, key)}"
            else:
                if j != "0" or not tail.startswith("conv."):
                    raise ValueError(f"unexpected diffusers key {key!r}")
                new = f"{base}.{side}sample.{tail}"
        elif m := rx_mid.match(key):
            part, kind, j, tail = m.groups()
            if kind == "resnets":
                if j not in ("0", "1"):
                    raise ValueError(f"unexpected diffusers key {key!r}")
                new = f"{part}.mid.block_{int(j) + 1}.{_block_tail(tail, _RESNET, key)}"
            else:
                if j != "0":
                    raise ValueError(f"unexpected diffusers key {key!r}")
                new = f"{part}.mid.attn_1.{_block_tail(tail, _ATTN, key)}"
        elif key.startswith(("encoder.conv_norm_out.", "decoder.conv_norm_out.")):
            new = key.replace(".conv_norm_out.", ".norm_out.", 1)
        else:
            new = key
        if _is_linear_attn(new) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        if new in out:
            raise ValueError(f"two diffusers keys map to {new!r}")
        out[new] = value
    return out


def vqtok_to_diffusers_keys(state: Mapping[str, torch.Tensor], *, levels: int) -> dict[str, torch.Tensor]:
    """Rename a vqtok state dict to diffusers' VQModel layout (1×1 conv -> Linear attention weights)."""
    rx_level = re.compile(r"(encoder|decoder)\.(down|up)\.(\d+)\.(?:(block|attn)\.(\d+)|\2sample)\.(.+)$")
    rx_mid = re.compile(r"(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.(.+)$")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if found := _level_blocks(key, levels, rx_level):
            part, side, level, kind, j, tail = found
            base = f"{part}.{side}_blocks.{level}"
            if kind is None:
                new = f"{base}.{side}samplers.0.{tail}"
            elif kind == "block":
                new = f"{base}.resnets.{j}.{_block_tail(tail, _RESNET_INV, key)}"
            else:
                new = f"{base}.attentions.{j}.{_block_tail(tail, _ATTN_INV, key)}"
        elif m := rx_mid.match(key):
            part, name, tail = m.groups()
            if name == "attn_1":
                new = f"{part}.mid_block.attentions.0.{_block_tail(tail, _ATTN_INV, key)}"
            else:
                new = f"{part}.mid_block.resnets.{int(name[-1]) - 1}.{_block_tail(tail, _RESNET_INV, key)}"
        elif key.startswith(("encoder.norm_out.", "decoder.norm_out.")):
            new = key.replace(".norm_out.", ".conv_norm_out.", 1)
        else:
            new = key
        if _is_linear_attn(key):
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


# ---------------------------------------------------------------------------------- files
def convert_diffusers(paths: list[Path]) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
    """``[config.json, diffusion_pytorch_model.safetensors]`` -> (VQGANConfig, state dict): the ``diffusers`` format's converter."""
    config_path, weights_path = (Path(p) for p in paths)
    cfg = diffusers_config_to_vqtok(read_config_json(config_path))
    state = load_checkpoint(weights_path)  # safetensors, or a pickled .bin read without running code
    if not isinstance(state, Mapping):
        raise ValueError(f"{weights_path} holds no state dict (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return cfg, diffusers_to_vqtok_keys(tensors, levels=len(cfg.ch_mult))


def from_diffusers(
    path_or_repo: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Tokenizer:
    """Load a diffusers ``VQModel`` (local folder or Hub repo) into a :class:`~vqtok.Tokenizer`.

    The folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (a pickled
    ``.bin`` is read with the restricted unpickler). For a pipeline repo pass
    ``subfolder="vqvae"`` (a local pipeline folder's ``vqvae/`` is found by itself).
    diffusers need not be installed.
    """
    path = Path(path_or_repo)
    if path.is_dir() and not subfolder and not (path / DIFFUSERS_CONFIG_NAME).is_file() and (path / "vqvae" / DIFFUSERS_CONFIG_NAME).is_file():
        subfolder = "vqvae"  # a whole pipeline folder: its VQModel lives in vqvae/
        logger.info("using the pipeline's vqvae/ subfolder of %s", path)
    weights = (DIFFUSERS_WEIGHTS_NAME, _DIFFUSERS_BIN_NAME)
    folder = resolve_folder(
        path_or_repo,
        files=(DIFFUSERS_CONFIG_NAME, weights),
        subfolder=subfolder,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        what=f"a diffusers VQModel folder holds {DIFFUSERS_CONFIG_NAME} and {DIFFUSERS_WEIGHTS_NAME}",
    )
    weights_path = next(folder / n for n in weights if (folder / n).is_file())
    return convert_files("diffusers", [folder / DIFFUSERS_CONFIG_NAME, weights_path], source=str(weights_path))[1]


def to_diffusers(model: Tokenizer | VQGAN, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a diffusers ``VQModel`` folder (``diffusers.VQModel.from_pretrained(directory)``).

    In diffusers: ids = ``vq.quantize(vq.encode(x).latents)[2][2]`` (flat, row-major over h×w);
    images from ids = ``vq.decode(vq.quantize.get_codebook_entry(ids, (B, h, w, D)),
    force_not_quantize=True).sample``; pixels in [-1, 1] as in vqtok.
    """
    vq = model.model if isinstance(model, Tokenizer) else model
    if not isinstance(vq, VQGAN):
        raise TypeError(f"to_diffusers takes a Tokenizer or VQGAN, got {type(model).__name__}")
    config = vqtok_config_to_diffusers(vq.config)
    state = vqtok_to_diffusers_keys(vq.state_dict(), levels=len(vq.config.ch_mult))
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    out = Path(directory)
    with atomic_write(out / DIFFUSERS_CONFIG_NAME) as tmp_config:  # renamed last, after the weights
        tmp_config.write_text(json.dumps(config, indent=2) + "\n")
        with atomic_write(out / DIFFUSERS_WEIGHTS_NAME) as tmp_weights:
            save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    logger.info("exported %s as a diffusers VQModel to %s", vq.config, out)
    return out


