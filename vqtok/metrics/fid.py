"""Streaming feature statistics, Fréchet distance (FID) and kernel inception distance (KID)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "FIDStats",
    "KIDResult",
    "RunningStats",
    "fid_from_features",
    "fid_to_stats",
    "frechet_distance",
    "kernel_inception_distance",
    "matrix_sqrt_trace",
]


@dataclass(frozen=True)
class FIDStats:
    """Mean (D,) and unbiased covariance (D, D) of ``n`` feature vectors, float64."""

    n: int
    mean: torch.Tensor  # (D,) float64
    cov: torch.Tensor  # (D, D) float64, normalised by n - 1 (as numpy.cov)

    def save(self, path: str | BinaryIO, **extra: np.ndarray) -> None:
        """Write ``mu``, ``sigma`` (pytorch-fid's keys), ``n`` and any ``extra`` arrays as an ``.npz``."""
        np.savez(path, mu=self.mean.numpy(), sigma=self.cov.numpy(), n=np.int64(self.n), **extra)

    @classmethod
    def load(cls, path: str) -> FIDStats:
        """Read an ``.npz`` with ``mu`` and ``sigma`` (pytorch-fid's format; ``n`` optional)."""
        with np.load(path) as data:
            mu, sigma = data["mu"], data["sigma"]
            n = int(data["n"]) if "n" in data else -1
        return cls(n=n, mean=torch.from_numpy(mu).to(torch.float64), cov=torch.from_numpy(sigma).to(torch.float64))


class RunningStats:
    """Running mean and scatter matrix of feature vectors in float64 (Chan et al.'s merge).

    Memory is O(D²) however many vectors are added; the result does not depend on how the
    stream is cut into batches (beyond float64 rounding).
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self._mean = torch.zeros(dim, dtype=torch.float64)  # (D,)
        self._m2 = torch.zeros(dim, dim, dtype=torch.float64)  # (D, D) sum of centred outer products

    def update(self, features: torch.Tensor) -> None:
        """Add a batch (B, D)."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features (B, {self.dim}), got shape {tuple(features.shape)}")
        b = features.shape[0]
        if b == 0:
            return
        f = features.detach().to("cpu", torch.float64)
        batch_mean = f.mean(0)  # (D,)
        centred = f - batch_mean
        batch_m2 = centred.T @ centred  # (D, D)
        total = self.n + b
        delta = batch_mean - self._mean
        self._m2 += batch_m2 + torch.outer(delta, delta) * (self.n * b / total)
        self._mean += delta * (b / total)
        self.n = total

    def stats(self) -> FIDStats:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        return FIDStats(n=self.n, mean=self._mean.clone(), cov=self._m2 / (self.n - 1))


def matrix_sqrt_trace(s1: torch.Tensor, s2: torch.Tensor) -> float:
    """tr(sqrtm(S1 S2)) for symmetric PSD S1, S2 (float64).

    S1 S2 is similar to the symmetric PSD matrix sqrt(S1) S2 sqrt(S1), so the trace is the sum of
    the square roots of the latter's eigenvalues — stable even when S1 or S2 is singular (fewer
    samples than dimensions), where a general sqrtm of S1 S2 needs an eps fudge.
    """
    a = s1.to(torch.float64)
    w, v = torch.linalg.eigh((a + a.T) / 2)
    r = (v * w.clamp(min=0).sqrt()) @ v.T  # sqrt(S1) (D, D); tiny negative eigenvalues -> 0
    m = r @ s2.to(torch.float64) @ r
    ev = torch.linalg.eigvalsh((m + m.T) / 2)
    return float(ev.clamp(min=0).sqrt().sum())


def frechet_distance(a: FIDStats, b: FIDStats) -> float:
    """||mu_a - mu_b||² + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)), in float64."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
    diff = a.mean.to(torch.float64) - b.mean.to(torch.float64)
    tr_covmean = matrix_sqrt_trace(a.cov, b.cov)
    # may be a rounding-sized negative for (near-)identical statistics
    return float(diff @ diff) + float(torch.trace(a.cov)) + float(torch.trace(b.cov)) - 2.0 * tr_covmean


@dataclass(frozen=True)
class KIDResult:
    """Unbiased MMD² with the polynomial kernel (x·y/D + 1)³, over random subsets."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_inception_distance(
    features_a: torch.Tensor | np.ndarray,
    features_b: torch.Tensor | np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 2020,
) -> KIDResult:
    """KID as torch-fidelity computes it (same kernel, estimator, subset sampling and seed).

    ``features_*`` are (N, D). ``subset_size`` is lowered to ``min(N_a, N_b)`` when either set
    is smaller (torch-fidelity refuses instead; with the same subset size the numbers agree).
    """
    fa, fb = (np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f, dtype=np.float64) for f in (features_a, features_b))
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"expected features (N, D) with equal D, got {fa.shape} and {fb.shape}")
    m = min(subset_size, fa.shape[0], fb.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if m < subset_size:
        logger.info("KID subset size lowered from %d to %d (number of images)", subset_size, m)
    g = 1.0 / fa.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = fa[rng.choice(fa.shape[0], m, replace=False)]
        y = fb[rng.choice(fb.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T * g + coef0) ** degree for a, b in ((x, x), (y, y), (x, y)))  # (m, m) each
        sum_xx = kxx.sum() - np.trace(kxx)
        sum_yy = kyy.sum() - np.trace(kyy)
        mmds[i] = (sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m)
    # Subsets of all n images are all the same set: the spread is exactly 0 (np.std gives rounding noise).
    std = 0.0 if m == min(fa.shape[0], fb.shape[0]) == max(fa.shape[0], fb.shape[0]) else float(mmds.std())
    return KIDResult(mean=float(mmds.mean()), std=std, subsets=subsets, subset_size=m)


def fid_from_features(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID of two feature sets (N, D) held in memory, in float64.

    With at most D vectors per set it uses the exact low-rank form: for centred, scaled
    features A (N_a, D) and B (N_b, D), S_a = AᵀA, S_b = BᵀB and tr sqrt(S_a S_b) is the nuclear
    norm of A Bᵀ (N_a, N_b) — no D x D eigendecomposition. Otherwise it goes through
    :class:`RunningStats` and :func:`frechet_distance`.
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"expected features (N, D) with equal D, got {tuple(features_a.shape)} and {tuple(features_b.shape)}")
    na, nb, d = features_a.shape[0], features_b.shape[0], features_a.shape[1]
    if na < 2 or nb < 2:
        raise ValueError("FID needs at least 2 feature vectors per set")
    if na > d or nb > d:
        sa, sb = RunningStats(d), RunningStats(d)
        sa.update(features_a)
        sb.update(features_b)
        return frechet_distance(sa.stats(), sb.stats())
    fa, fb = features_a.to(torch.float64), features_b.to(torch.float64)
    ma, mb = fa.mean(0), fb.mean(0)
    a = (fa - ma) / (na - 1) ** 0.5  # (N_a, D)
    b = (fb - mb) / (nb - 1) ** 0.5  # (N_b, D)
    diff = ma - mb
    nuclear = float(torch.linalg.svdvals(a @ b.T).sum())
    return float(diff @ diff) + float((a * a).sum()) + float((b * b).sum()) - 2.0 * nuclear


def fid_to_stats(reference: FIDStats, features: torch.Tensor) -> float:
    """FID of feature vectors (N, D) against saved statistics, in float64.

    With at most D vectors it uses the exact low-rank form: for the centred, scaled features
    B (N, D), S = BᵀB and tr sqrt(S_ref S) is the sum of the square roots of the eigenvalues of
    B S_ref Bᵀ (N, N), so no D x D eigendecomposition (whose rounding-level eigenvalues of a singular
    covariance would add up under the square root). Otherwise :func:`frechet_distance`.
    """
    if features.ndim != 2 or features.shape[1] != reference.mean.shape[0]:
        raise ValueError(f"expected features (N, {reference.mean.shape[0]}), got {tuple(features.shape)}")
    n, d = features.shape
    if n < 2:
        raise ValueError("FID needs at least 2 feature vectors")
    if n > d:
        rs = RunningStats(d)
        rs.update(features)
        return frechet_distance(reference, rs.stats())
    f = features.to(torch.float64)
    m = f.mean(0)
    b = (f - m) / (n - 1) ** 0.5  # (N, D)
    s_ref = reference.cov.to(torch.float64)
    inner = b @ s_ref @ b.T  # (N, N)
    tr_covmean = float(torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum())
    diff = reference.mean.to(torch.float64) - m
    return float(diff @ diff) + float(torch.trace(s_ref)) + float((b * b).sum()) - 2.0 * tr_covmean
