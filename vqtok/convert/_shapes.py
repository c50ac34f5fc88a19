"""Reading a taming-style encoder's architecture off its tensor shapes.

The taming, IBQ, dalle-mini, Open-MAGVIT2 and Cosmos layouts all name their encoder
``encoder.conv_in`` / ``encoder.down.<level>.block.<i>.conv1`` / ``encoder.conv_out``; their importers
read widths and depths from these keys with :func:`encoder_shape`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from vqtok.models.vqgan import VQGANConfig

__all__ = ["EncoderShape", "attn_levels", "count_indices", "encoder_shape"]


def count_indices(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over the keys of ``state``."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


@dataclass(frozen=True)
class EncoderShape:
    """What the encoder's tensor shapes say about the architecture."""

    ch: int  # output channels of encoder.conv_in
    in_channels: int  # input channels of encoder.conv_in
    ch_mult: tuple[int, ...]  # width of each encoder.down level / ch
    num_res_blocks: int  # ResNet blocks per encoder level
    z_channels: int  # output channels of encoder.conv_out


def encoder_shape(state: Mapping[str, torch.Tensor], *, what: str, check_decoder: bool = True) -> EncoderShape:
    """The :class:`EncoderShape` of a taming-style state dict; ``what`` names the layout in errors.

    With ``check_decoder``, ``decoder.conv_in`` must take the ``z_channels`` the encoder gives (a
    ``double_z`` KL autoencoder gives twice as many).
    """
    for key in ("encoder.conv_in.weight", "encoder.conv_out.weight"):
        if key not in state:
            raise ValueError(f"not {what}: no {key}")
    conv_in = state["encoder.conv_in.weight"]  # (ch, in_channels, 3, 3)
    ch = int(conv_in.shape[0])
    levels = count_indices(state, r"encoder\.down\.(\d+)\.")
    if levels == 0:
        raise ValueError(f"not {what}: no encoder.down.* levels")
    ch_mult = []
    for i in range(levels):
        width = state.get(f"encoder.down.{i}.block.0.conv1.weight")
        if width is None or int(width.shape[0]) % ch:
            raise ValueError(f"encoder.down.{i}.block.0.conv1.weight is missing or not a multiple of {ch} channels")
        ch_mult.append(int(width.shape[0]) // ch)
    z_channels = int(state["encoder.conv_out.weight"].shape[0])
    if check_decoder and int(state["decoder.conv_in.weight"].shape[1]) != z_channels:
        raise ValueError(
            f"encoder.conv_out gives {z_channels} channels but decoder.conv_in takes "
            f"{state['decoder.conv_in.weight'].shape[1]} (a double_z KL model is not a VQ tokenizer)"
        )
    return EncoderShape(
        ch=ch,
        in_channels=int(conv_in.shape[1]),
        ch_mult=tuple(ch_mult),
        num_res_blocks=count_indices(state, r"encoder\.down\.0\.block\.(\d+)\."),
        z_channels=z_channels,
    )


def attn_levels(cfg: VQGANConfig) -> list[int]:
    """The levels of a taming-style config that carry attention (level i has side ``resolution // 2**i``)."""
    return [i for i in range(len(cfg.ch_mult)) if cfg.resolution // 2**i in cfg.attn_resolutions]
