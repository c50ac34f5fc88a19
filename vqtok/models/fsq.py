"""Finite scalar quantization (FSQ; Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Every channel d of ẑ is squashed into a bounded range and rounded to one of ``levels[d]``
values; the code of a position is the tuple of its per-channel levels, so the implicit
codebook has ∏ levels entries and needs no parameters, no lookup and no auxiliary loss::

    half_l  = (L − 1)(1 + ε) / 2                 # per channel, ε = 1e-3
    offset  = 0.5 if L is even else 0
    bounded = tanh(ẑ + atanh(offset / half_l)) · half_l − offset
    q       = round(bounded) ∈ {−⌊L/2⌋, …, L − 1 − ⌊L/2⌋}      # integer level
    code    = q / ⌊L/2⌋ ∈ [−1, 1]                                # what the decoder sees
    id      = Σ_d (q_d + ⌊L_d/2⌋) · ∏_{e<d} L_e                # mixed radix, channel 0 least significant

The bound (with (1 + ε), and atanh for the shift) and the id order are those of
``vector-quantize-pytorch``'s ``FSQ``; ids and codes agree with it exactly (tests/test_fsq_lfq.py).
Gradients pass the rounding with the straight-through estimator.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from vqtok.models.quantizer import QuantizerOutput

__all__ = ["FSQ"]


class FSQ(nn.Module):
    """Bounded per-channel rounding to ``levels``: ids (B, h, w) in [0, ∏ levels).

    Args:
        levels: number of levels of each channel (one entry per channel; each >= 2). A level
            of 2 gives codes {−1, 0} only (the bound is asymmetric for even L), as in the reference.
        eps: widening of the tanh bound (the ε above); 1e-3 as published.
    """

    def __init__(self, levels: Sequence[int], *, eps: float = 1e-3) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or any(v < 2 for v in levels):
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        size = math.prod(levels)
        if size > 2**31:
            raise ValueError(f"FSQ levels {levels} give {size} codes; ids must fit in int32 (at most 2**31)")
        self.levels = tuple(levels)
        self.eps = float(eps)
        self.codebook_size = size
        self.embed_dim = len(levels)
        basis = [math.prod(levels[:d]) for d in range(len(levels))]
        # (D,) buffers, not saved: they follow from ``levels``, which the config records
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    @property
    def n_embed(self) -> int:
        """Same as :attr:`codebook_size` (the name VectorQuantizer and VQGANConfig use)."""
        return self.codebook_size

    def _per_channel(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """(D,) -> (1, D, 1, ..., 1) broadcastable against a channel-first tensor of ``ndim`` dims."""
        return t.view(1, -1, *([1] * (ndim - 2)))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) -> bounded values (float32 at least) whose rounding is the integer level."""
        if z.ndim < 2 or z.shape[1] != self.embed_dim:
            raise ValueError(f"FSQ with {self.embed_dim} channels expects z (B, {self.embed_dim}, ...), got {tuple(z.shape)}")
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        levels = self._per_channel(self._levels, z.ndim).to(z.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def _ids(self, bounded: torch.Tensor) -> torch.Tensor:
        """Bounded values (B, D, h, w) -> ids (B, h, w) long: the level indices in [0, L) in mixed radix."""
        index = torch.round(bounded).long() + self._per_channel(self._levels // 2, bounded.ndim)  # (B, D, h, w)
        return (index * self._per_channel(self._basis, index.ndim)).sum(dim=1)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Ids of the quantized features: z (B, D, h, w) -> (B, h, w) long."""
        with torch.no_grad():
            return self._ids(self.bound(z))

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`lookup`: ids (B, h, w) -> codes (B, D, h, w) float32 in [−1, 1]."""
        if ids.is_floating_point():
            raise ValueError(f"FSQ ids must be integers, got dtype {ids.dtype}")
        ids = ids.long().unsqueeze(1)  # (B, 1, h, w)
        index = (ids // self._per_channel(self._basis, ids.ndim)) % self._per_channel(self._levels, ids.ndim)
        half_width = self._per_channel(self._levels // 2, ids.ndim)
        return (index - half_width).float() / half_width.float()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        bounded = self.bound(z)  # (B, D, h, w) float32+
        ids = self._ids(bounded.detach())  # (B, h, w)
        half_width = self._per_channel(self._levels // 2, z.ndim).to(bounded.dtype)
        rounded = torch.round(bounded)
        if self.training:  # straight-through rounding; in eval z_q is exactly codes(ids)
            rounded = bounded + (rounded - bounded).detach()
        z_q = (rounded / half_width).to(z.dtype)
        return QuantizerOutput(z_q=z_q, ids=ids, loss=z.new_zeros(()))

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, codebook_size={self.codebook_size}"
