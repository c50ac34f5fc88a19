"""Nearest-code vector quantization (van den Oord et al. 2017; as used by taming-transformers).

``VectorQuantizer`` maps encoder features ẑ to their nearest codebook entry,
z_q = argmin_k ‖ẑ − e_k‖², and back again with :meth:`VectorQuantizer.codes`
(the inverse, ``ids -> codes``). Parameter layout follows taming-transformers:
a single ``embedding`` (``nn.Embedding(n_embed, embed_dim)``), so its checkpoints
load with strict key matching.

Loss (training only)::

    codebook   = ‖sg[ẑ] − z_q‖²      # moves codes towards encoder outputs
    commitment = ‖ẑ − sg[z_q]‖²      # keeps the encoder close to its codes
    loss = codebook + β · commitment                      (legacy=False, the paper)
    loss = commitment + β · codebook                      (legacy=True, taming's default)

taming-transformers' ``VectorQuantizer``/``VectorQuantizer2(legacy=True)`` puts β on the
codebook term instead of the commitment term (a historical slip it keeps for
reproducibility); ``legacy=True`` reproduces that exactly, ``legacy=False`` is the paper's form.
Gradients reach the encoder through the straight-through estimator ẑ + sg[z_q − ẑ].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["Codebook", "VectorQuantizer", "QuantizerOutput", "Quantizer", "nearest_code", "block_rows"]

# Elements of (N, K) distance buffers alive at once: bounds the extra memory of the search to
# about 64 MiB of float32 whatever N (batch × grid) and K are.
_DISTANCE_BUDGET = 1 << 24
# Rows per block of the search when the budget allows it. Every block has exactly this many rows
# (the last one zero-padded): BLAS picks its kernel by matrix shape (a 1-row product is a GEMV
# that rounds differently from the GEMM), so a fixed shape gives a row the same distances, and so
# the same id, whatever N is and whichever rows share its block.
_ROW_BLOCK = 256


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (B, D, h, w) quantized features (straight-through in training)
    ids: torch.Tensor  # (B, h, w) long, index of the nearest code
    loss: torch.Tensor  # () codebook + commitment loss (0 when not training)


@runtime_checkable
class Quantizer(Protocol):
    """What every vqtok quantizer offers (VectorQuantizer, :class:`~vqtok.models.fsq.FSQ`, :class:`~vqtok.models.lfq.LFQ`).

    ``forward(z)`` gives a :class:`QuantizerOutput`; ``lookup`` is its ids alone (no gradient)
    and ``codes`` its inverse, so ``codes(lookup(z))`` is the ``z_q`` of eval mode.
    """

    codebook_size: int  # number of distinct ids K: ids lie in [0, K)
    embed_dim: int  # channels D of z and of the codes

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) -> ids (B, h, w) long."""
        ...

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> codes (B, D, h, w)."""
        ...

    def __call__(self, z: torch.Tensor) -> QuantizerOutput: ...


def block_rows(n_codes: int, *, exact: bool = True) -> int:
    """Rows per block of :func:`nearest_code` for a codebook of ``n_codes``: fixed per codebook."""
    return max(1, min(_ROW_BLOCK, _DISTANCE_BUDGET // (max(n_codes, 1) * (2 if exact else 1))))


def nearest_code(
    z: torch.Tensor, codebook: torch.Tensor, *, chunk_size: int | None = None, exact: bool = True
) -> torch.Tensor:
    """Index of the nearest codebook row for every row of ``z``.

    z: (N, D), codebook: (K, D) -> (N,) long. Computed in blocks of a fixed number of rows
    (``chunk_size``; default :func:`block_rows`: 256, fewer for codebooks so large that the
    (rows, K) buffers would pass about 64 MiB), the last block zero-padded to the same shape, so
    the (N, K) distance matrix never exists whole and a row's id does not depend on N or on the
    other rows (batch-invariant). Always computed in float32 at least, with autocast and autograd off.

    ``exact=True``: distances ‖z‖² + ‖e‖² − 2 z·eᵀ rounded in the same order as
    taming-transformers (so ties and rounding match its ids bit for bit), in two buffers.
    ``exact=False``: the fused ‖e‖² − 2 z·eᵀ in a single ``addmm`` (‖z‖² is the same for every
    code, so the argmin is the same up to rounding); one buffer, fewer passes over memory.
    """
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_code expects z (N, D) and codebook (K, D), got {tuple(z.shape)} and {tuple(codebook.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # ids carry no gradient; out= buffers need no_grad when z comes from a training graph
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        dtype = torch.promote_types(z.dtype, torch.float32)
        z = z.to(dtype)
        codebook = codebook.to(dtype)
        n, k = z.shape[0], codebook.shape[0]
        rows = chunk_size or block_rows(k, exact=exact)
        if n == 0:
            return torch.empty(0, dtype=torch.long, device=z.device)
        # (K,) ‖e‖², a block of codes at a time: codebook**2 whole would be a second codebook-sized
        # temporary (256 MiB at 262144 x 256). Each row's sum is reduced alone, so the bits do not change.
        e_sq = torch.empty(k, dtype=dtype, device=z.device)
        block = max(1, _DISTANCE_BUDGET // max(codebook.shape[1], 1))
        for start in range(0, k, block):
            torch.sum(codebook[start : start + block] ** 2, dim=1, out=e_sq[start : start + block])
        codebook_t = codebook.t()
        ids = torch.empty(n, dtype=torch.long, device=z.device)
        # reused across blocks: no allocator churn, no fresh page faults
        zc = z.new_zeros(rows, z.shape[1])  # (rows, D) the block, zero rows past N
        dist = z.new_empty(rows, k)  # (rows, K)
        prod = z.new_empty(rows, k) if exact else dist
        block_ids = torch.empty(rows, dtype=torch.long, device=z.device)
        for start in range(0, n, rows):
            m = min(rows, n - start)
            zc[:m] = z[start : start + m]
            zc[m:] = 0  # an empty slice but in the last block
            if exact:
                # taming: (‖z‖² + ‖e‖²) − 2·(z·eᵀ). add_(alpha=-2) gives the same bits: −2·m is exact.
                torch.add(torch.sum(zc**2, dim=1, keepdim=True), e_sq, out=dist)  # (rows, K)
                dist.add_(torch.mm(zc, codebook_t, out=prod), alpha=-2)
            else:
                torch.addmm(e_sq, zc, codebook_t, alpha=-2, out=dist)  # (rows, K)
            torch.argmin(dist, dim=1, out=block_ids)
            ids[start : start + m] = block_ids[:m]
    return ids


class Codebook(nn.Module):
    """A learned codebook ``embedding`` of ``n_embed`` × ``embed_dim`` (nn.Embedding's N(0, 1) init) and the β of a loss.

    The base of :class:`VectorQuantizer` and IBQ's :class:`~vqtok.models.ibq.IndexQuantizer`, with the
    ``codes`` (ids -> codes) they share.
    """

    def __init__(self, n_embed: int, embed_dim: int, *, beta: float = 0.25) -> None:
        super().__init__()
        if n_embed < 1 or embed_dim < 1:
            raise ValueError(f"n_embed and embed_dim must be positive, got {n_embed} and {embed_dim}")
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook_size(self) -> int:
        """Number of codes K (= ``n_embed``)."""
        return self.n_embed

    def codebook(self) -> torch.Tensor:
        """The codes as used for lookup: (K, D)."""
        return self.embedding.weight

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of ``lookup``: ids (B, h, w) -> codes (B, D, h, w)."""
        return rearrange(F.embedding(ids, self.codebook()), "b h w d -> b d h w").contiguous()


class VectorQuantizer(Codebook):
    """Codebook of ``n_embed`` vectors of size ``embed_dim`` with nearest-code lookup.

    Args:
        n_embed: number of codes K.
        embed_dim: code dimension D.
        beta: weight of the β term of the loss (see module docstring).
        legacy: taming's term order (β on the codebook term); ``False`` for the paper's.
        l2_norm: compare and return l2-normalised codes and features (cosine lookup,
            ViT-VQGAN / LlamaGen). Taming checkpoints use ``False``.
    """

    def __init__(
        self, n_embed: int, embed_dim: int, *, beta: float = 0.25, legacy: bool = True, l2_norm: bool = False
    ) -> None:
        super().__init__(n_embed, embed_dim, beta=beta)
        self.legacy = legacy
        self.l2_norm = l2_norm
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)  # taming's init

    def codebook(self) -> torch.Tensor:
        """The codes as used for lookup: (K, D), l2-normalised when ``l2_norm``."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.l2_norm else weight

    def lookup(self, z: torch.Tensor, *, exact: bool = True) -> torch.Tensor:
        """Ids of the nearest codes: z (B, D, h, w) -> (B, h, w) long (``exact``: see :func:`nearest_code`)."""
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"lookup expects features (B, {self.embed_dim}, h, w), got {tuple(z.shape)}")
        b, _, h, w = z.shape
        z_flat = rearrange(z, "b d h w -> (b h w) d")  # a view when z is channels_last
        if self.l2_norm:
            z_flat = F.normalize(z_flat, dim=1)
        ids = nearest_code(z_flat, self.codebook(), exact=exact)  # (B*h*w,)
        return rearrange(ids, "(b h w) -> b h w", b=b, h=h, w=w)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        ids = self.lookup(z)  # (B, h, w)
        z_q = self.codes(ids).to(z.dtype)  # (B, D, h, w)
        if self.l2_norm:
            z = F.normalize(z, dim=1)
        if not self.training:
            return QuantizerOutput(z_q=z_q, ids=ids, loss=z.new_zeros(()))
        codebook = torch.mean((z.detach() - z_q) ** 2)
        commitment = torch.mean((z - z_q.detach()) ** 2)
        if self.legacy:
            loss = commitment + self.beta * codebook
        else:
            loss = codebook + self.beta * commitment
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return QuantizerOutput(z_q=z_q, ids=ids, loss=loss)
