"""Import NVIDIA Cosmos discrete image tokenizers (``nvidia/Cosmos-0.1-Tokenizer-DI8x8``, ``-DI16x16``).

The weights are published as two TorchScript archives: ``encoder.jit`` (a ``Sequential`` of
``encoder``, ``quant_conv``, ``quantizer``) and ``decoder.jit`` (``inv_quant``,
``post_quant_conv``, ``decoder``). A TorchScript archive is a zip file::

    <name>/data.pkl        the module tree: one pickled object per module, its attributes in a dict
    <name>/data/<n>        raw little-endian bytes of storage n, referenced from data.pkl by persistent id
    <name>/code/...        the TorchScript source of every module's methods (what torch.jit.load compiles)
    <name>/constants.pkl   tensor constants used by that code
    <name>/version, <name>/byteorder, ...

:func:`~vqtok.convert.safe_pickle.read_torchscript_tensors` reads ``data.pkl`` with vqtok's
restricted unpickler (:mod:`vqtok.convert.safe_pickle`): module classes (``__torch__.…``) become
inert placeholders, tensors are rebuilt from the ``data/<n>`` bytes, and the only functions the
file may call are torch's tensor rebuilders and TorchScript's list builders
(``torch.jit._pickle.build_intlist`` and friends, re-implemented there as plain ``list``).
``code/`` and ``constants.pkl`` are never read, compiled or run; ``torch.jit.load`` is never called.

What that means for trust: the archive's own forward code is ignored. The converted model is
vqtok's re-implementation of the published architecture (:mod:`vqtok.models.cosmos`), built
from the tensor names and shapes found in the archive and loaded strictly — every tensor the
model needs must be there with the right shape, and every tensor in the archive must be one the
model uses or one of the fixed buffers checked below. If NVIDIA's archives computed something
other than the published ``cosmos_tokenizer`` source, the converted model would silently compute
the published thing instead; nothing in the archive can make vqtok run other code.

Fixed buffers are verified, not ignored: the wavelet taps of ``encoder.patcher`` /
``decoder.unpatcher`` (Haar 1/√2 or rearrange 1) give ``patch_method``; the FSQ ``_levels``
give the levels; ``_basis`` and (when present) ``implicit_codebook`` — Cosmos's own
id → code table — must equal vqtok's FSQ numbering exactly, so a file whose ids mean other codes
is refused.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch

from vqtok._errors import listing
from vqtok.convert._shapes import encoder_shape
from vqtok.convert.safe_pickle import read_torchscript_tensors
from vqtok.convert._build import convert_files
from vqtok.models.cosmos import CosmosConfig
from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["convert_cosmos", "from_cosmos", "read_torchscript_tensors", "infer_cosmos_config", "cosmos_state_dict"]


_ENC_BUFFERS = ("encoder.patcher.wavelets", "encoder.patcher._arange")
_DEC_BUFFERS = ("decoder.unpatcher.wavelets", "decoder.unpatcher._arange")
_ENC_FSQ = "quantizer."  # encoder.jit: Sequential(encoder, quant_conv, quantizer)
_DEC_FSQ = "inv_quant.quantizer."  # decoder.jit: Sequential(inv_quant(quantizer), post_quant_conv, decoder)
_FSQ_BUFFERS = ("_levels", "_basis", "implicit_codebook")


def _check_fsq_buffers(tensors: dict[str, torch.Tensor], prefix: str, levels: tuple[int, ...], source: str) -> None:
    """The archive's FSQ bookkeeping must number codes as vqtok's FSQ does."""
    from vqtok.models.fsq import FSQ

    fsq = FSQ(levels)
    basis = tensors.get(prefix + "_basis")
    if basis is not None and basis.long().flatten().tolist() != fsq._basis.tolist():
        raise ValueError(f"{source}: FSQ _basis {basis.tolist()} is not channel-0-least-significant {fsq._basis.tolist()}")
    table = tensors.get(prefix + "implicit_codebook")
    if table is not None:
        if tuple(table.shape) != (fsq.codebook_size, len(levels)):  # checked first: the levels come from the file
            raise ValueError(f"{source}: FSQ implicit_codebook has shape {tuple(table.shape)}, expected "
                             f"{(fsq.codebook_size, len(levels))} for levels {list(levels)}")
        want = fsq.codes(torch.arange(fsq.codebook_size).view(1, -1, 1))[0, :, :, 0].t()  # (K, D)
        if not torch.equal(table.float(), want):
            raise ValueError(f"{source}: FSQ implicit_codebook (id -> code table) differs from vqtok's FSQ numbering")


def _levels_of(tensors: dict[str, torch.Tensor], prefix: str) -> tuple[int, ...] | None:
    t = tensors.get(prefix + "_levels")
    return None if t is None else tuple(int(v) for v in t.flatten().tolist())


def _patch_method(tensors: dict[str, torch.Tensor], key: str, source: str) -> str | None:
    taps = tensors.get(key)
    if taps is None:
        return None
    taps = taps.float()
    if taps.shape == (2,) and torch.allclose(taps, torch.full_like(taps, 1 / math.sqrt(2)), atol=4e-3):  # bf16: 0.70703125
        return "haar"
    if taps.shape == (2,) and torch.equal(taps, torch.ones_like(taps)):
        return "rearrange"
    raise ValueError(f"{source}: {key} = {taps.tolist()} is neither the Haar nor the rearrange filter")


def infer_cosmos_config(
    state: dict[str, torch.Tensor],
    *,
    levels: Sequence[int] = (8, 8, 8, 5, 5, 5),
    patch_method: str = "haar",
    resolution: int = 1024,
    attn_resolutions: Sequence[int] = (32,),
) -> CosmosConfig:
    """The architecture of a Cosmos DI state dict (``encoder.*``, ``quant_conv.*``, ``post_quant_conv.*``, ``decoder.*``).

    Widths, depths, patch size and spatial compression are read off the tensor shapes;
    ``resolution`` / ``attn_resolutions`` only place attention (published: 1024 / [32], i.e. the
    mid blocks only) and are checked against the keys by the strict load.
    """
    for key in ("quant_conv.weight", "decoder.conv_out.weight"):
        if key not in state:
            raise ValueError(f"not a Cosmos discrete image tokenizer: no {key}")
    arch = encoder_shape(state, what="a Cosmos discrete image tokenizer", check_decoder=False)
    in_patched = arch.in_channels
    out_patched = int(state["decoder.conv_out.weight"].shape[0])
    if in_patched % 3 or out_patched % 3:
        raise ValueError(f"encoder.conv_in takes {in_patched} and decoder.conv_out gives {out_patched} channels: not 3·p² (RGB)")
    patch_size = math.isqrt(in_patched // 3)
    if patch_size * patch_size * 3 != in_patched or patch_size & (patch_size - 1):
        raise ValueError(f"encoder.conv_in takes {in_patched} channels, not 3·p² for a power-of-2 patch size p")
    resamples = sum(f"encoder.down.{i}.downsample.conv.weight" in state for i in range(len(arch.ch_mult)))
    return CosmosConfig(
        channels=arch.ch,
        channels_mult=arch.ch_mult,
        num_res_blocks=arch.num_res_blocks,
        attn_resolutions=tuple(attn_resolutions),
        resolution=resolution,
        patch_size=patch_size,
        patch_method=patch_method,
        z_channels=arch.z_channels,
        embedding_dim=int(state["quant_conv.weight"].shape[0]),
        levels=tuple(levels),
        spatial_compression=patch_size * 2**resamples,
    )


def cosmos_state_dict(
    encoder_tensors: dict[str, torch.Tensor], decoder_tensors: dict[str, torch.Tensor], *, source: str = "Cosmos archives"
) -> tuple[dict[str, torch.Tensor], tuple[int, ...], str]:
    """Merge the tensors of ``encoder.jit`` and ``decoder.jit`` into one vqtok state dict (float32).

    Returns (state, FSQ levels, patch method). The fixed buffers (wavelets, FSQ tables) are
    checked and dropped; any other tensor outside ``encoder.`` / ``quant_conv.`` (encoder archive)
    or ``post_quant_conv.`` / ``decoder.`` (decoder archive) is an error.
    """
    if "encoder.conv_in.weight" not in encoder_tensors:
        hint = " (it looks like decoder.jit: pass encoder.jit first)" if "decoder.conv_in.weight" in encoder_tensors else ""
        raise ValueError(f"{source}: the encoder archive has no encoder.conv_in.weight{hint}")
    if "decoder.conv_in.weight" not in decoder_tensors:
        hint = " (it looks like encoder.jit: pass decoder.jit second)" if "encoder.conv_in.weight" in decoder_tensors else ""
        raise ValueError(f"{source}: the decoder archive has no decoder.conv_in.weight{hint}")
    enc_levels, dec_levels = _levels_of(encoder_tensors, _ENC_FSQ), _levels_of(decoder_tensors, _DEC_FSQ)
    if enc_levels and dec_levels and enc_levels != dec_levels:
        raise ValueError(f"{source}: encoder FSQ levels {list(enc_levels)} differ from decoder's {list(dec_levels)}")
    levels = enc_levels or dec_levels
    if levels is None:
        levels = (8, 8, 8, 5, 5, 5)
        logger.warning("%s: no FSQ _levels buffer in either archive; assuming the published %s", source, list(levels))
    _check_fsq_buffers(encoder_tensors, _ENC_FSQ, levels, source)
    _check_fsq_buffers(decoder_tensors, _DEC_FSQ, levels, source)
    methods = {m for m in (_patch_method(encoder_tensors, _ENC_BUFFERS[0], source), _patch_method(decoder_tensors, _DEC_BUFFERS[0], source)) if m}
    if len(methods) > 1:
        raise ValueError(f"{source}: the encoder patches with {sorted(methods)[0]} but the decoder with {sorted(methods)[1]}")
    method = methods.pop() if methods else "haar"

    state: dict[str, torch.Tensor] = {}
    for tensors, keep, fixed, fsq, which in (
        (encoder_tensors, ("encoder.", "quant_conv."), _ENC_BUFFERS, _ENC_FSQ, "encoder"),
        (decoder_tensors, ("post_quant_conv.", "decoder."), _DEC_BUFFERS, _DEC_FSQ, "decoder"),
    ):
        stray = []
        for key, value in tensors.items():
            if key in fixed or (key.startswith(fsq) and key[len(fsq) :] in _FSQ_BUFFERS):
                continue
            if not key.startswith(keep):
                stray.append(key)
                continue
            if not value.is_floating_point():
                raise ValueError(f"{source}: {which} tensor {key} has dtype {value.dtype}, expected floating point weights")
            state[key] = value.to(torch.float32)
        if stray:
            raise ValueError(f"{source}: unexpected tensors in the {which} archive: {listing(sorted(stray))}")
    dtypes = sorted({str(v.dtype) for t in (encoder_tensors, decoder_tensors) for k, v in t.items() if v.is_floating_point()})
    if dtypes != ["torch.float32"]:
        logger.info("%s: weights stored as %s, converted to float32", source, ", ".join(dtypes))
    return state, tuple(levels), method


def convert_cosmos(
    paths: list[Path], *, resolution: int = 1024, attn_resolutions: Sequence[int] = (32,)
) -> tuple[CosmosConfig, dict[str, torch.Tensor]]:
    """Cosmos ``[encoder.jit, decoder.jit]`` -> (CosmosConfig, state dict), tensors read and no code run.

    resolution / attn_resolutions: where the checkpoint's attention blocks sit, as in Cosmos's
    config (published: 1024 / [32] = mid blocks only); a mismatch is reported by the strict load.
    """
    if len(paths) != 2:
        raise ValueError(f"a Cosmos tokenizer is two files, encoder.jit and decoder.jit; got {len(paths)}")
    encoder_jit, decoder_jit = paths
    state, levels, method = cosmos_state_dict(
        read_torchscript_tensors(encoder_jit), read_torchscript_tensors(decoder_jit), source=f"{encoder_jit} + {decoder_jit}"
    )
    cfg = infer_cosmos_config(state, levels=levels, patch_method=method, resolution=resolution, attn_resolutions=attn_resolutions)
    return cfg, state


def from_cosmos(
    encoder_jit: str | os.PathLike[str],
    decoder_jit: str | os.PathLike[str],
    *,
    resolution: int = 1024,
    attn_resolutions: Sequence[int] = (32,),
) -> Tokenizer:
    """Load Cosmos ``encoder.jit`` + ``decoder.jit`` (DI8x8, DI16x16) into a :class:`~vqtok.Tokenizer`, without running them.

    resolution / attn_resolutions: see :func:`convert_cosmos`.
    """
    paths = [Path(encoder_jit), Path(decoder_jit)]
    source = f"{encoder_jit} + {decoder_jit}"
    return convert_files("cosmos", paths, source=source, resolution=resolution, attn_resolutions=attn_resolutions)[1]
