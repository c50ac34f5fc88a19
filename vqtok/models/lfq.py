"""Lookup-free quantization (LFQ; Yu et al. 2023, "Language Model Beats Diffusion — Tokenizer is Key", MAGVIT-v2).

Each of the D channels of ẑ is quantized to its sign, so the implicit codebook is {−1, +1}^D
(2^D codes, no parameters) and the id of a position is its D bits::

    q_d  = +1 if ẑ_d > 0 else −1                # 0 maps to −1, as in both references
    id   = Σ_d [q_d > 0] · 2^d                  # bit_order="little": channel 0 is the lowest bit
    id   = Σ_d [q_d > 0] · 2^(D−1−d)            # bit_order="big":    channel 0 is the highest bit

Open-MAGVIT2 numbers its codes little-endian; ``vector-quantize-pytorch`` (≥ 1.14) big-endian.

Training loss (MAGVIT-v2's entropy penalty plus a commitment term; Open-MAGVIT2's formula)::

    logits   = 2 ẑ·cᵀ / T                     # (N, K) over every code c; = −‖ẑ − c‖²/T + const
    p        = softmax(logits)                 # per token
    H_sample = mean_n H(p_n)                   # minimised: each token confidently one code
    H_book   = H(mean_n p_n)                   # maximised: all codes used
    entropy  = w_s · H_sample − w_b · H_book
    loss     = entropy_weight · entropy + commitment_weight · mean‖ẑ − sg[q]‖²

The entropy term materialises (N, K) probabilities, so it is for codebooks up to 2^20 codes
(Open-MAGVIT2 trains its 2^18 this way). Gradients pass the sign with the straight-through estimator.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqtok.models.quantizer import QuantizerOutput

__all__ = ["LFQ", "entropy_loss"]

BitOrder = Literal["little", "big"]
_MAX_BITS = 31  # ids must fit in int32 token shards


def entropy_loss(
    logits: torch.Tensor,
    *,
    temperature: float = 0.01,
    sample_weight: float = 1.0,
    batch_weight: float = 1.0,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAGVIT-v2 entropy penalty of code affinities ``logits`` (..., K).

    Returns ``(per_sample_entropy, codebook_entropy, loss)`` with
    ``loss = sample_weight · per_sample_entropy − batch_weight · codebook_entropy`` (nats).
    """
    scaled = logits / temperature
    probs = F.softmax(scaled, dim=-1)  # (..., K)
    log_probs = F.log_softmax(scaled, dim=-1)
    avg_probs = probs.reshape(-1, probs.shape[-1]).mean(dim=0)  # (K,)
    codebook_entropy = -torch.sum(avg_probs * torch.log(avg_probs + eps))
    per_sample_entropy = -torch.sum(probs * log_probs, dim=-1).mean()
    return per_sample_entropy, codebook_entropy, sample_weight * per_sample_entropy - batch_weight * codebook_entropy


class LFQ(nn.Module):
    """Sign quantizer over ``embed_dim`` channels: 2^embed_dim codes, ids (B, h, w) = the sign bits.

    Args:
        embed_dim: channels D = bits per token (1..31).
        bit_order: ``"little"`` (channel 0 is bit 0; Open-MAGVIT2) or ``"big"`` (channel 0 is the
            highest bit; vector-quantize-pytorch).
        entropy_weight: weight of the entropy penalty in the training loss (Open-MAGVIT2: 0.1).
        commitment_weight: weight of ‖ẑ − sg[q]‖² in the training loss (Open-MAGVIT2: 0.25).
        temperature: softmax temperature T of the entropy penalty (0.01).
        sample_weight, batch_weight: w_s and w_b of the entropy penalty (1.0 and 1.0).
    """

    max_entropy_bits = 20  # the entropy loss holds (N, 2^bits) probabilities: train at most this many bits with it

    def __init__(
        self,
        embed_dim: int,
        *,
        bit_order: BitOrder = "little",
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        temperature: float = 0.01,
        sample_weight: float = 1.0,
        batch_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not 1 <= embed_dim <= _MAX_BITS:
            raise ValueError(f"LFQ embed_dim (bits per token) must be in [1, {_MAX_BITS}], got {embed_dim}")
        if bit_order not in ("little", "big"):
            raise ValueError(f"bit_order must be 'little' or 'big', got {bit_order!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.embed_dim = embed_dim
        self.codebook_size = 2**embed_dim
        self.bit_order: BitOrder = bit_order
        self.entropy_weight = entropy_weight
        self.commitment_weight = commitment_weight
        self.temperature = temperature
        self.sample_weight = sample_weight
        self.batch_weight = batch_weight
        shifts = torch.arange(embed_dim) if bit_order == "little" else torch.arange(embed_dim - 1, -1, -1)
        # (D,) bit position of each channel; derived from the config, so not saved
        self.register_buffer("_shifts", shifts.long(), persistent=False)

    @property
    def n_embed(self) -> int:
        """Same as :attr:`codebook_size` (the name VectorQuantizer and VQGANConfig use)."""
        return self.codebook_size

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"LFQ with {self.embed_dim} bits expects z (B, {self.embed_dim}, h, w), got {tuple(z.shape)}")

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Ids of the signs: z (B, D, h, w) -> (B, h, w) long."""
        self._check(z)
        with torch.no_grad():
            bits = (z > 0).long()  # (B, D, h, w)
            return (bits << self._shifts.view(1, -1, 1, 1)).sum(dim=1)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`lookup`: ids (B, h, w) -> codes (B, D, h, w) float32 in {−1, +1}."""
        if ids.is_floating_point():
            raise ValueError(f"LFQ ids must be integers, got dtype {ids.dtype}")
        bits = (ids.long().unsqueeze(1) >> self._shifts.view(1, -1, 1, 1)) & 1  # (B, D, h, w)
        return bits.float() * 2.0 - 1.0

    def codebook(self) -> torch.Tensor:
        """Every code, in id order: (K, D) float32 of ±1 (K = 2^D; for the entropy loss and analysis)."""
        ids = torch.arange(self.codebook_size, device=self._shifts.device)
        return self.codes(ids.view(-1, 1, 1)).flatten(1)  # (K, D, 1, 1) -> (K, D)

    def losses(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training terms for features z (B, D, h, w): per_sample_entropy, codebook_entropy, entropy, commitment."""
        self._check(z)
        if self.embed_dim > self.max_entropy_bits:
            raise ValueError(
                f"the LFQ entropy loss materialises (tokens, 2^{self.embed_dim}) probabilities; "
                f"use at most {self.max_entropy_bits} bits to train with it"
            )
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.embed_dim).float()  # (N, D)
        logits = 2.0 * flat @ self.codebook().t()  # (N, K)
        per_sample, book, entropy = entropy_loss(
            logits, temperature=self.temperature, sample_weight=self.sample_weight, batch_weight=self.batch_weight
        )
        q = torch.where(flat > 0, 1.0, -1.0)
        commitment = F.mse_loss(flat, q)
        return {"per_sample_entropy": per_sample, "codebook_entropy": book, "entropy": entropy, "commitment": commitment}

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        ids = self.lookup(z)  # (B, h, w)
        one = torch.ones((), dtype=z.dtype, device=z.device)
        q = torch.where(z > 0, one, -one)  # (B, D, h, w)
        if not self.training:
            return QuantizerOutput(z_q=q, ids=ids, loss=z.new_zeros(()))
        terms = self.losses(z)
        loss = self.entropy_weight * terms["entropy"] + self.commitment_weight * terms["commitment"]
        z_q = z + (q - z).detach()  # straight-through estimator
        return QuantizerOutput(z_q=z_q, ids=ids, loss=loss.to(z.dtype))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, codebook_size={self.codebook_size}, bit_order={self.bit_order!r}"
