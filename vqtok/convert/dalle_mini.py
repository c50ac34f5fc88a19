"""Import the dalle-mini VQGAN (``dalle-mini/vqgan_imagenet_f16_16384``): Flax ``flax_model.msgpack`` + ``config.json``.

That model is the taming-transformers f16-16384 VQGAN ported to Flax by ``vqgan-jax``
(``patil-suraj/vqgan-jax``) and saved with ``transformers``' ``FlaxPreTrainedModel.save_pretrained``,
i.e. ``flax.serialization.to_bytes(params)``: a MessagePack map of nested maps whose leaves are
MessagePack extension objects (type 1 = ndarray, payload = msgpack ``(shape, dtype name, C-order
bytes)``; arrays over ~1 GiB are split into ``{"__msgpack_chunked_array__", "shape", "chunks"}``).
It is read here with the ``msgpack`` package alone (``pip install vqtok[flax]``): no JAX, no Flax,
no code from the file.

The Flax parameter tree mirrors taming's module tree, with Flax's naming:

* list members are ``name_i`` (``encoder/down_0/block_1``, ``decoder/up_2/attn_0``) where taming
  has ``name.i``; the mid block keeps its own ``block_1`` / ``attn_1`` / ``block_2`` names;
* ``nn.Conv`` stores ``kernel`` as (kh, kw, in, out) (HWIO) where torch has ``weight`` (out, in,
  kh, kw); ``nn.GroupNorm`` stores ``scale`` for ``weight``; ``nn.Embed`` stores
  ``quantize/embedding/embedding`` (n_embed, embed_dim) for ``quantize.embedding.weight``.

The computation is taming's (same padding of the stride-2 convolution, nearest 2x upsampling,
GroupNorm(32, eps 1e-6), single-head attention, nearest code by squared distance), so the
converted model runs in :class:`~vqtok.models.vqgan.VQGAN` unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from vqtok.convert._build import convert_files
from vqtok.hub import read_config_json, resolve_folder
from vqtok.models.vqgan import VQGANConfig
from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["convert_dalle_mini", "from_dalle_mini", "read_flax_msgpack", "flax_to_vqtok_keys", "dalle_mini_config", "FLAX_WEIGHTS_NAME"]

FLAX_WEIGHTS_NAME = "flax_model.msgpack"
_EXT_NDARRAY = 1  # flax.serialization._MsgpackExtType.ndarray
_EXT_NPSCALAR = 3  # flax.serialization._MsgpackExtType.npscalar
_CHUNKED = "__msgpack_chunked_array__"
_LIST_MEMBER = re.compile(r"(down|up|block|attn)_(\d+)")
_INSTALL = "reading Flax .msgpack weights needs the msgpack package: pip install 'vqtok[flax]' (or pip install msgpack)"


def _ndarray(data: bytes) -> np.ndarray:
    import msgpack

    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    name = dtype_name.decode() if isinstance(dtype_name, bytes) else str(dtype_name)
    if name == "bfloat16":
        raw = np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16  # bf16 = the top half of an fp32
        return raw.view(np.float32).reshape(shape)
    try:
        dtype = np.dtype(name)
    except TypeError as err:
        raise ValueError(f"Flax array of unsupported dtype {name!r}") from err
    if dtype.hasobject:
        raise ValueError(f"Flax array of object dtype {name!r} refused")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order="C")


def read_flax_msgpack(path: str | os.PathLike[str]) -> dict[tuple[str, ...], np.ndarray]:
    """The arrays of a ``flax.serialization.to_bytes`` file, flattened to ``{("encoder", "conv_in", "kernel"): array}``."""
    try:
        import msgpack
    except ImportError as err:
        raise ImportError(_INSTALL) from err

    def ext_hook(code: int, data: bytes) -> Any:
        if code == _EXT_NDARRAY:
            return _ndarray(data)
        if code == _EXT_NPSCALAR:
            return _ndarray(data)[()]
        raise ValueError(f"{path}: MessagePack extension type {code} is not a Flax array")

    raw = Path(path).read_bytes()
    try:
        tree = msgpack.unpackb(raw, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError) as err:
        raise ValueError(f"{path} is not a Flax MessagePack file: {err}") from err
    if not isinstance(tree, dict):
        raise ValueError(f"{path} holds a {type(tree).__name__}, not a Flax parameter tree")
    flat: dict[tuple[str, ...], np.ndarray] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, dict) and node.get(_CHUNKED):  # one array stored as numbered chunks
            shape = tuple(int(node["shape"][str(i)]) for i in range(len(node["shape"])))
            node = np.concatenate([np.asarray(node["chunks"][str(i)]).reshape(-1) for i in range(len(node["chunks"]))]).reshape(shape)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, prefix + (str(k),))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise ValueError(f"{path}: {'/'.join(prefix)} is a {type(node).__name__}, not an array")

    walk(tree, ())
    return flat


def flax_to_vqtok_keys(flat: Mapping[tuple[str, ...], np.ndarray]) -> dict[str, torch.Tensor]:
    """Map vqgan-jax's parameter tree onto taming's (= vqtok's VQGAN) state-dict names and layouts."""
    if flat and all(k[0] in ("params", "model") for k in flat):  # a wrapped tree
        flat = {k[1:]: v for k, v in flat.items()}
    out: dict[str, torch.Tensor] = {}
    for path, array in flat.items():
        parts: list[str] = []
        for i, part in enumerate(path[:-1]):
            m = _LIST_MEMBER.fullmatch(part)
            in_mid = i > 0 and path[i - 1] == "mid"
            parts.extend([m.group(1), m.group(2)] if m and not in_mid else [part])
        leaf = path[-1]
        value = torch.from_numpy(np.array(array, copy=True))
        if path[-3:] == ("quantize", "embedding", "embedding"):
            name = "quantize.embedding.weight"
        elif leaf in ("kernel", "scale", "bias"):
            name = ".".join(parts + ["bias" if leaf == "bias" else "weight"])
            if leaf == "kernel":
                if value.ndim != 4:
                    raise ValueError(f"{'/'.join(path)}: a {value.ndim}-d kernel; the VQGAN has only convolutions (4-d HWIO)")
                value = value.permute(3, 2, 0, 1).contiguous()  # (kh, kw, in, out) -> (out, in, kh, kw)
        else:
            raise ValueError(f"{'/'.join(path)}: unknown Flax parameter {leaf!r} (expected kernel, bias, scale, embedding)")
        out[name] = value.float() if value.is_floating_point() else value
    return out


_CONFIG_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "n_embed",
                  "resolution", "in_channels", "out_ch", "dropout")


def dalle_mini_config(raw: Mapping[str, Any], *, defaults: VQGANConfig | None = None) -> VQGANConfig:
    """A VQGANConfig from vqgan-jax's ``config.json`` (``transformers`` bookkeeping keys are ignored).

    Fields the file lacks come from ``defaults`` (the architecture read off the weights), else
    from VQGANConfig's defaults.
    """
    if raw.get("double_z"):
        raise ValueError("config.json has double_z: true (a KL autoencoder), not a VQGAN")
    if raw.get("resamp_with_conv") is False:
        raise ValueError("config.json has resamp_with_conv: false (pooling / conv-less resampling); vqtok's VQGAN resamples with convolutions")
    if raw.get("give_pre_end"):
        raise ValueError("config.json has give_pre_end: true (a decoder without its output layers)")
    base = defaults.to_dict() if defaults is not None else {}
    values: dict[str, Any] = {k: raw[k] if k in raw else base[k] for k in _CONFIG_FIELDS if k in raw or k in base}
    for k in ("ch_mult", "attn_resolutions"):
        if k in values:
            values[k] = tuple(int(v) for v in values[k])
    try:
        return VQGANConfig(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.json does not describe a VQGAN vqtok can build: {err}") from err


def convert_dalle_mini(paths: list[Path]) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
    """``[config.json,] flax_model.msgpack`` -> (VQGANConfig, state dict): the ``dalle-mini`` format's converter.

    Without a config.json the architecture is read off the tensor shapes, with resolution 256.
    """
    weights = Path(paths[-1])
    state = flax_to_vqtok_keys(read_flax_msgpack(weights))
    if "encoder.conv_in.weight" not in state or "quantize.embedding.weight" not in state:
        raise ValueError(f"{weights} is not a VQGAN parameter tree (no encoder/conv_in or quantize/embedding)")
    configs = [Path(p) for p in paths[:-1] if Path(p).name == "config.json"]
    raw: dict[str, Any] = read_config_json(configs[0]) if configs else {}
    if not configs:
        logger.info("no config.json beside %s: architecture read off the weights (resolution 256)", weights.name)
    from vqtok.convert.taming import infer_taming_config

    inferred = infer_taming_config(state, resolution=int(raw.get("resolution", 256)))
    return dalle_mini_config(raw, defaults=inferred), state


def from_dalle_mini(
    path_or_repo: str | os.PathLike[str] = "dalle-mini/vqgan_imagenet_f16_16384",
    *,
    weights: str = FLAX_WEIGHTS_NAME,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Tokenizer:
    """Load the dalle-mini / vqgan-jax VQGAN (a folder or Hub repo with ``config.json`` + ``flax_model.msgpack``).

    ``path_or_repo`` may also be the ``.msgpack`` file itself (its ``config.json`` beside it is used
    when present; else the architecture is read off the tensor shapes, with resolution 256).
    """
    path = Path(path_or_repo)
    if path.is_file():
        folder, weights = path.parent, path.name
    elif path.is_dir():
        folder = resolve_folder(path, files=(weights,), what=f"a dalle-mini VQGAN folder holds {weights} and config.json")
    else:
        folder = resolve_folder(
            path_or_repo, files=("config.json", weights), revision=revision, cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
    paths = [p for p in (folder / "config.json", folder / weights) if p.is_file() or p.name == weights]
    return convert_files("dalle-mini", paths, source=str(folder / weights))[1]
