"""Codebook training tricks that keep most codes in use (training-time only).

:class:`CodebookTrainer` drives a model's :class:`~vqtok.models.quantizer.VectorQuantizer`
during training and adds, each selectable in :class:`~vqtok.training.config.CodebookConfig`:

* **k-means initialisation**: the codes start as k-means centroids (spherical k-means when
  the codes are l2-normalised) of the encoder outputs of the first ``kmeans_batches`` batches,
  instead of taming's uniform(−1/K, 1/K) init that leaves most codes far from every feature.
* **EMA updates** (VQ-VAE, van den Oord et al. 2017, appendix): each code moves to the
  exponential moving average of the encoder outputs assigned to it; the codebook term of
  the loss is dropped (only β·commitment remains).
* **dead-code restart**: codes not chosen for ``dead_after`` steps are re-seeded from recent
  encoder outputs (kept in a ring buffer), so no code stays dead.

Low-dimensional factorised lookup and cosine codes are model properties
(``VQGANConfig.embed_dim`` small, ``l2_norm_codes=True``), not trainer state.

All statistics (EMA sums, last-use steps, the ring buffer) are buffers of this module, saved
in the training checkpoint only: the exported model still has exactly
``quantize.embedding.weight``, so it loads in :class:`~vqtok.tokenizer.Tokenizer`.
Under DDP the statistics are all-reduced and re-seeding is decided on rank 0 and broadcast.

``frozen=True`` (``TrainConfig.decoder_only``) keeps the codes bitwise as they are: no k-means, no EMA,
no restarts, no quantizer loss; the wrapper only looks the codes up (exactly as
:class:`~vqtok.tokenizer.Tokenizer` does: ``quantizer.codes(quantizer.lookup(z))``) and records code use.

FSQ and LFQ have no codebook parameters, so none of these tricks applies to them:
:class:`ImplicitCodebookTrainer` is their training-time wrapper (the LFQ entropy penalty with the
weights of :class:`~vqtok.training.config.LossConfig`, and code-use tracking for the log).
:func:`quantizer_trainer` picks the wrapper for a model's quantizer.
"""

from __future__ import annotations

import abc
import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vqtok.models.fsq import FSQ
from vqtok.models.lfq import LFQ, entropy_loss
from vqtok.models.quantizer import QuantizerOutput, VectorQuantizer, nearest_code
from vqtok.training.config import CodebookConfig, LossConfig

logger = logging.getLogger(__name__)

__all__ = ["CodebookTrainer", "ImplicitCodebookTrainer", "kmeans", "quantizer_trainer"]

# Largest implicit codebook whose per-code last-use step is tracked (a (K,) int64 buffer, 32 MiB);
# above it the logged ``active`` fraction is that of the current step's batch.
_MAX_TRACKED_CODES = 1 << 22


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def kmeans(
    x: torch.Tensor, k: int, *, iters: int = 10, spherical: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lloyd's k-means: x (N, D) -> centroids (k, D). Empty clusters take a random point.

    ``spherical``: points and centroids are l2-normalised (cosine k-means). With N < k the
    missing centroids are random points plus small noise.
    """
    x = x.float()
    if spherical:
        x = F.normalize(x, dim=1)
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    centroids = x[torch.randperm(n, generator=generator)[:k]]  # (min(n, k), D)
    if n < k:  # random points plus noise
        extra = x[torch.randint(0, n, (k - n,), generator=generator)]
        centroids = torch.cat([centroids, extra + 0.01 * x.std() * torch.randn(k - n, x.shape[1], generator=generator)])
    for _ in range(iters):
        ids = nearest_code(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, ids, x)
        counts = torch.bincount(ids, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = sums / counts.clamp(min=1)[:, None]  # the empty clusters' rows are replaced below
        if empty.any():
            centroids[empty] = x[torch.randint(0, n, (int(empty.sum()),), generator=generator)]
        if spherical:
            centroids = F.normalize(centroids, dim=1)
    return centroids


class _QuantizerTrainer(nn.Module, abc.ABC):
    """What both training wrappers share: the inference and frozen paths of ``forward``."""

    quantizer: VectorQuantizer | FSQ | LFQ

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, D, h, w) pre-quantization features -> straight-through z_q, ids, loss."""
        if not self.training:
            return self.quantizer(z)
        if self.frozen:  # the exact codes of the ids (what Tokenizer.decode feeds the decoder), no loss
            with torch.no_grad():
                ids = self.quantizer.lookup(z.float())  # (B, h, w)
                z_q = self.quantizer.codes(ids).float()  # (B, D, h, w)
                self._track(ids.reshape(-1), z)
            return QuantizerOutput(z_q=z_q, ids=ids, loss=z.new_zeros((), dtype=torch.float32))
        return self._train_forward(z.float())

    @abc.abstractmethod
    def _train_forward(self, z: torch.Tensor) -> QuantizerOutput:
        """The training path: z (B, D, h, w) float32 -> straight-through z_q, ids, loss; records code use."""

    @abc.abstractmethod
    def _track(self, ids: torch.Tensor, z: torch.Tensor) -> None:
        """Record the use of ids (N,) chosen for features z (B, D, h, w)."""

    def active_fraction(self, window: int | None = None) -> float:
        """Fraction of codes chosen in the last ``window`` steps (default ``dead_after`` or 100)."""
        window = window or self.config.dead_after or 100
        return float(((self.step - self.last_used) <= window).float().mean())


class CodebookTrainer(_QuantizerTrainer):
    """Training-time wrapper of a quantizer. ``forward(z)`` replaces ``quantizer(z)`` while training.

    The quantizer is *not* a submodule (its weight belongs to the model's state dict, not to
    this module's), so ``state_dict()`` here holds only the training statistics.
    ``frozen``: the codes never change (see the module docstring); of ``config`` only ``dead_after`` (the
    window of :meth:`active_fraction`) is used.
    """

    def __init__(self, quantizer: VectorQuantizer, config: CodebookConfig, *, seed: int = 0, frozen: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "quantizer", quantizer)
        self.config = config
        self.frozen = frozen
        self.ema = config.ema and not frozen  # codes follow EMA statistics instead of a gradient
        k, d = quantizer.n_embed, quantizer.embed_dim
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(frozen or not config.kmeans_init))
        self.register_buffer("last_used", torch.zeros(k, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # total codes re-seeded
        self.register_buffer("ring", torch.zeros(max(1, config.buffer_size if not frozen else 1), d))
        self.register_buffer("ring_count", torch.zeros((), dtype=torch.long))  # vectors ever written
        if frozen:
            quantizer.embedding.weight.requires_grad_(False)
        elif config.ema:
            self.register_buffer("cluster_size", torch.ones(k))
            self.register_buffer("embed_sum", quantizer.embedding.weight.detach().clone().float())
            quantizer.embedding.weight.requires_grad_(False)
        self._kmeans_points: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed + 1234567)  # k-means, restarts; its state is checkpointed

    # -- helpers -------------------------------------------------------------------------
    def _features(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (N, D) float32, normalised when the codes are."""
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return F.normalize(flat, dim=1) if self.quantizer.l2_norm else flat

    @torch.no_grad()
    def _set_codes(self, rows: torch.Tensor | slice, values: torch.Tensor) -> None:
        """Set the codes at ``rows`` (an index tensor, or ``slice(None)`` for all) to ``values``, their EMA statistics with them."""
        weight = self.quantizer.embedding.weight
        weight[rows] = values.to(weight.dtype)
        if self.ema:
            self.embed_sum[rows] = values.float()
            self.cluster_size[rows] = 1.0

    def _broadcast_codes(self) -> None:
        if _distributed():
            dist.broadcast(self.quantizer.embedding.weight.data, src=0)
            if self.ema:
                dist.broadcast(self.embed_sum, src=0)
                dist.broadcast(self.cluster_size, src=0)

    @torch.no_grad()
    def _remember(self, flat: torch.Tensor) -> None:
        size = self.ring.shape[0]
        if flat.shape[0] > size:
            flat = flat[torch.randperm(flat.shape[0], generator=self.generator)[:size]]
        n = flat.shape[0]
        self.ring[(int(self.ring_count) + torch.arange(n, device=self.ring.device)) % size] = flat  # wraps around
        self.ring_count += n

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        self._kmeans_points.append(flat.cpu())
        if len(self._kmeans_points) < self.config.kmeans_batches:
            return
        points = torch.cat(self._kmeans_points)
        if _distributed():
            points = points.to(self.ring.device)  # NCCL gathers device tensors only
            gathered = [torch.empty_like(points) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, points)
            points = torch.cat([g.cpu() for g in gathered])
        q = self.quantizer
        centroids = kmeans(points, q.n_embed, iters=self.config.kmeans_iters, spherical=q.l2_norm, generator=self.generator)
        self._set_codes(slice(None), centroids.to(q.embedding.weight.device))
        self._broadcast_codes()
        self._kmeans_points.clear()
        self.initialised.fill_(True)
        self.last_used.fill_(int(self.step))
        logger.info("codebook initialised by k-means on %d encoder outputs", points.shape[0])

    # -- training ------------------------------------------------------------------------
    def _train_forward(self, z: torch.Tensor) -> QuantizerOutput:
        q = self.quantizer
        if not bool(self.initialised):
            self._kmeans_init(self._features(z))
        ids = q.lookup(z)
        z_q = q.codes(ids)
        with torch.no_grad():
            self._track(ids.reshape(-1), z)
        if q.l2_norm:
            z = F.normalize(z, dim=1)
        commitment = torch.mean((z - z_q.detach()) ** 2)
        if self.ema:
            loss = q.beta * commitment
        else:
            codebook = torch.mean((z.detach() - z_q) ** 2)
            loss = commitment + q.beta * codebook if q.legacy else codebook + q.beta * commitment
        z_q = z + (z_q - z).detach()
        return QuantizerOutput(z_q=z_q, ids=ids, loss=loss)

    @torch.no_grad()
    def _track(self, ids: torch.Tensor, z: torch.Tensor) -> None:
        k = self.quantizer.n_embed
        flat = self._features(z)
        counts = torch.bincount(ids, minlength=k).float()
        sums = torch.zeros(k, flat.shape[1], device=flat.device).index_add_(0, ids, flat) if self.ema else None
        if _distributed():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        self.last_used[counts > 0] = self.step
        if self.config.dead_after > 0 and not self.frozen:
            self._remember(flat)
        if sums is not None and bool(self.initialised):
            decay = self.config.ema_decay
            self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = self.cluster_size.sum()
            eps = 1e-5
            smoothed = (self.cluster_size + eps) / (n + k * eps) * n
            self.quantizer.embedding.weight.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def end_step(self) -> int:
        """Call after each optimizer step: advances the step and re-seeds dead codes. Returns how many."""
        self.step += 1
        cfg = self.config
        if self.frozen or cfg.dead_after <= 0 or not bool(self.initialised) or int(self.step) % max(1, cfg.restart_every):
            return 0
        dead = (self.step - self.last_used) > cfg.dead_after
        n_dead = int(dead.sum())
        available = min(int(self.ring_count), self.ring.shape[0])
        if n_dead == 0 or available == 0:
            return 0
        rows = dead.nonzero().squeeze(1)
        pick = torch.randint(0, available, (n_dead,), generator=self.generator)
        values = self.ring[pick.to(self.ring.device)]
        # noise scale: per-dimension spread of the stored features (0 when there is just one)
        scale = self.ring[:available].std(dim=0, keepdim=True) if available > 1 else torch.zeros_like(values[:1])
        values = values + cfg.restart_noise * scale * torch.randn(values.shape, generator=self.generator).to(values)
        if self.quantizer.l2_norm:
            values = F.normalize(values, dim=1)
        self._set_codes(rows, values)
        self._broadcast_codes()
        self.last_used[rows] = self.step
        self.restarts += n_dead
        return n_dead


class ImplicitCodebookTrainer(_QuantizerTrainer):
    """Training-time wrapper of an FSQ or LFQ quantizer (codes fixed by the quantizer, nothing to learn).

    ``forward(z)`` gives the straight-through ``z_q``, the ids and the loss: none for FSQ; for LFQ
    MAGVIT-v2's entropy penalty plus a commitment term (see :mod:`vqtok.models.lfq`)::

        loss = entropy_weight · (w_s · H_sample − w_b · H_book) + lfq_commitment_weight · mean‖ẑ − sign(ẑ)‖²

    with the weights and temperature of ``loss_config``. It also records when each code was last
    chosen, for the logged ``active`` fraction (same meaning as for :class:`CodebookTrainer`). Its
    ``state_dict`` (the step and last-use steps) goes in the training checkpoint only.
    """

    def __init__(self, quantizer: FSQ | LFQ, config: CodebookConfig, loss_config: LossConfig, *, frozen: bool = False) -> None:
        super().__init__()
        if not isinstance(quantizer, (FSQ, LFQ)):
            raise TypeError(f"ImplicitCodebookTrainer wraps FSQ or LFQ, got {type(quantizer).__name__}")
        object.__setattr__(self, "quantizer", quantizer)  # not a submodule: it belongs to the model
        self.config = config
        self.frozen = frozen  # the encoder is frozen: no loss (nothing upstream can move), codes looked up as in inference
        self.loss_config = loss_config
        k = quantizer.codebook_size
        self.track_codes = k <= _MAX_TRACKED_CODES
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.full((k if self.track_codes else 1,), -(1 << 40), dtype=torch.long))
        self._batch_fraction = 0.0  # codes used by the last batch / K (when K is too large to track)

    def _train_forward(self, z: torch.Tensor) -> QuantizerOutput:
        q = self.quantizer
        if isinstance(q, FSQ):
            out = q(z)  # bounded straight-through rounding, no loss
            loss = z.new_zeros(())
            ids, z_q = out.ids, out.z_q
        else:
            ids = q.lookup(z)  # (B, h, w)
            sign = torch.where(z > 0, 1.0, -1.0)  # (B, D, h, w)
            cfg = self.loss_config
            loss = cfg.lfq_commitment_weight * F.mse_loss(z, sign)
            if cfg.entropy_weight > 0:
                flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N, D)
                logits = 2.0 * flat @ q.codebook().t()  # (N, K): 2 ẑ·c = −‖ẑ − c‖² + const
                entropy = entropy_loss(logits, temperature=cfg.entropy_temperature, sample_weight=cfg.sample_entropy_weight,
                                       batch_weight=cfg.codebook_entropy_weight)[2]
                loss = loss + cfg.entropy_weight * entropy
            z_q = z + (sign - z).detach()  # straight-through estimator
        with torch.no_grad():
            self._track(ids.reshape(-1), z)
        return QuantizerOutput(z_q=z_q, ids=ids, loss=loss)

    @torch.no_grad()
    def _track(self, ids: torch.Tensor, z: torch.Tensor) -> None:  # z unused: no codes to re-seed
        k = self.quantizer.codebook_size
        if self.track_codes:
            counts = torch.bincount(ids, minlength=k)
            if _distributed():
                dist.all_reduce(counts)
            self.last_used[counts > 0] = self.step
        else:
            used = torch.unique(ids)
            if _distributed():  # the union over ranks: gather every rank's distinct ids
                sizes = [torch.zeros((), dtype=torch.long, device=ids.device) for _ in range(dist.get_world_size())]
                dist.all_gather(sizes, torch.tensor(used.numel(), device=ids.device))
                width = int(max(int(s) for s in sizes))
                padded = torch.full((width,), -1, dtype=used.dtype, device=used.device)
                padded[: used.numel()] = used
                gathered = [torch.empty_like(padded) for _ in sizes]
                dist.all_gather(gathered, padded)
                used = torch.unique(torch.cat(gathered))
                used = used[used >= 0]
            self._batch_fraction = used.numel() / k

    @torch.no_grad()
    def end_step(self) -> int:
        """Call after each optimizer step: advances the step. Returns 0 (no codes are ever re-seeded)."""
        self.step += 1
        return 0

    def active_fraction(self, window: int | None = None) -> float:
        """Fraction of codes chosen in the last ``window`` steps (default ``dead_after`` or 100).

        For codebooks above 2**22 codes: the fraction chosen by the last batch.
        """
        return super().active_fraction(window) if self.track_codes else self._batch_fraction


def quantizer_trainer(
    quantizer: VectorQuantizer | FSQ | LFQ, config: CodebookConfig, loss_config: LossConfig, *, seed: int = 0,
    frozen: bool = False,
) -> CodebookTrainer | ImplicitCodebookTrainer:
    """The training-time wrapper of a model's quantizer: :class:`CodebookTrainer` for nearest-code VQ
    (k-means init, EMA, dead-code restarts), :class:`ImplicitCodebookTrainer` for FSQ and LFQ.
    ``frozen``: the codes and ids stay as they are (``TrainConfig.decoder_only``)."""
    if isinstance(quantizer, VectorQuantizer):
        return CodebookTrainer(quantizer, config, seed=seed, frozen=frozen)
    if isinstance(quantizer, (FSQ, LFQ)):
        if (config.kmeans_init or config.ema) and not frozen:
            logger.info("codebook: k-means init, EMA and dead-code restarts are for VQ; %s has no codebook to train",
                        type(quantizer).__name__)
        return ImplicitCodebookTrainer(quantizer, config, loss_config, frozen=frozen)
    raise TypeError(f"no training wrapper for quantizer {type(quantizer).__name__} (VectorQuantizer, FSQ or LFQ)")
