"""Whether one image of a given size fits in memory: the ``--size`` check of ``encode`` and ``pretokenize``."""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

__all__ = ["check_image_size", "memory_bytes"]


class SizedModel(Protocol):
    """What the check reads of a tokenizer."""

    config: Any
    device: torch.device
    downsample_factor: int


def memory_bytes(device: torch.device) -> int | None:
    """The total memory of ``device`` (a GPU's, else this machine's RAM), None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_image_size(tok: SizedModel, size: int | None, option: str = "--size") -> None:
    """A ``--size`` the model can take: a positive multiple of its downsample factor whose activations
    fit in this machine's memory (ValueError naming ``option`` otherwise)."""
    if size is None:
        return
    f = tok.downsample_factor
    if size <= 0 or size % f:
        raise ValueError(f"{option} must be a positive multiple of {f} (the model's downsample factor), got {size}")
    # a rough peak of the encoder/decoder activations for one size x size image, in bytes (fp32): three
    # full-resolution feature maps of ``ch`` channels (a ResNet block's input, hidden and output)
    need, have = 3 * int(getattr(tok.config, "ch", 128)) * size * size * 4, memory_bytes(tok.device)
    if have is not None and need > have:
        raise ValueError(
            f"{option} {size} needs about {need / 2**30:.0f} GiB of activations per image, more than the "
            f"{have / 2**30:.0f} GiB of this {tok.device.type.upper()}; use a smaller {option}"
        )
