"""The pieces of sampling token grids from a prior; the loop is :meth:`vqtok.prior.gpt.GPT.generate`.

This module knows nothing of the model: logits -> token (top-k / top-p filtering, inverse-CDF
draws) and the grid geometry (which window of the grid is the context of a token).

One loop serves every grid. Token ``(i, j)`` is sampled from a window of shape ``(wh, ww)``
placed around it; for grids that fit the model the window is the whole grid (so the context is
the raster-order prefix), larger grids (e.g. 32×32 tokens from a 16×16 model) use a window
of the trained shape: ``top = clamp(i - wh//2, 0, H - wh)``, ``left = clamp(j - ww//2, 0, W - ww)``
(centred, clamped at the borders; taming-transformers' rule). The context is the class token
plus the window flattened row-major up to the token's position in the window, so it never
exceeds ``block_size`` and always contains the token's causal neighbours (the row above from
``j - ww//2`` to ``j + ww//2 - 1`` and the tokens to its left).

While the window stays put (always, for a whole-grid window; near the left/right borders of a
larger grid, where it is clamped) the KV cache is extended by one token per step; when it
moves, the cache is refilled with the new context in one forward pass. ``use_cache=False``
re-runs the model on the whole context at every step, as taming-transformers samples: the
reference for tests and the benchmark. With the same generator both give the same tokens:
they draw exactly one uniform number per sample per step and invert the same CDF.

Classifier-free guidance: with ``cfg_scale = s ≠ 1`` each step runs the model on the
batch twice (with the labels and with the null class) and samples from
``l_uncond + s · (l_cond − l_uncond)`` (logits). ``s = 1`` is plain conditional sampling
(and skips the second pass); ``s = 0`` is unconditional sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["filter_logits", "sample_logits", "Window", "window_for", "window_context", "resolve_grid", "resolve_window"]


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Mask (set to -inf) all but the ``top_k`` largest logits / the smallest nucleus of mass ``top_p``.

    logits: (B, V) -> (B, V). At least one token always survives.
    """
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # remove a token if the mass of strictly more likely tokens already reaches top_p
        remove_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        remove_sorted[:, 0] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row. logits: (B, V) -> (B,) long.

    Inverse-CDF sampling with exactly one uniform draw per row (so two code paths with
    the same generator stay in lockstep). ``temperature == 0`` is greedy (argmax).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.double()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V)
    # one uniform in [0, 1) per row, drawn on the generator's device
    u = torch.rand(logits.shape[0], generator=generator, device=generator.device if generator is not None else logits.device,
                   dtype=torch.float64).to(logits.device)[:, None] * cdf[:, -1:]  # (B, 1)
    idx = torch.searchsorted(cdf, u, right=True)[:, 0]
    return idx.clamp_(max=logits.shape[-1] - 1)


@dataclass(frozen=True)
class Window:
    """Where the sampling window sits for one grid position."""

    top: int  # first grid row of the window
    left: int  # first grid column of the window
    local_i: int  # row of the token inside the window
    local_j: int  # column of the token inside the window

    def context_length(self, window_w: int) -> int:
        """Image tokens before the token in the window's raster order."""
        return self.local_i * window_w + self.local_j


def window_for(grid: tuple[int, int], window: tuple[int, int], i: int, j: int) -> Window:
    """Window of shape ``window`` around position (i, j) of ``grid`` (centred, clamped to the grid)."""
    (H, W), (wh, ww) = grid, window
    top = min(max(i - wh // 2, 0), H - wh)
    left = min(max(j - ww // 2, 0), W - ww)
    return Window(top=top, left=left, local_i=i - top, local_j=j - left)


def window_context(ids: Tensor, window: tuple[int, int], i: int, j: int) -> Tensor:
    """Context tokens for position (i, j): the window flattened row-major up to (i, j).

    ids: (n, H, W) grid (only positions before (i, j) in raster order are read) -> (n, L)
    with ``L = local_i * ww + local_j <= wh * ww``.
    """
    H, W = ids.shape[1:]
    win = window_for((H, W), window, i, j)
    wh, ww = window
    patch = ids[:, win.top : win.top + wh, win.left : win.left + ww].reshape(ids.shape[0], wh * ww)
    return patch[:, : win.context_length(ww)]


def resolve_grid(grid: tuple[int, int] | None, *, block_size: int, train_grid: tuple[int, int] | None) -> tuple[int, int]:
    """The (h, w) grid to sample: ``grid``, else the model's trained grid, else a square ``block_size``."""
    if grid is not None:
        return int(grid[0]), int(grid[1])
    if train_grid is not None:
        return train_grid
    side = math.isqrt(block_size)
    if side * side != block_size:
        raise ValueError("the model config has no train_grid and block_size is not square: pass grid=(h, w)")
    return side, side


def resolve_window(
    grid: tuple[int, int], window: tuple[int, int] | None, *, block_size: int, train_grid: tuple[int, int] | None
) -> tuple[int, int]:
    """The sampling window's shape: the whole grid when it fits the model, else the sliding-window shape."""
    H, W = grid
    train = window if window is not None else train_grid
    if train is None:
        if H * W <= block_size:
            return H, W
        raise ValueError(
            f"grid {H}x{W} has more than block_size={block_size} tokens and the model has no train_grid: pass window=(h, w)"
        )
    wh, ww = int(train[0]), int(train[1])
    if wh * ww > block_size:
        raise ValueError(f"window {wh}x{ww} has more than block_size={block_size} tokens")
    if W == ww and H <= wh and window is None:
        return H, W  # the top H rows of a trained-shape grid: the window is the whole grid
    if H < wh or W < ww:
        raise ValueError(
            f"grid {H}x{W} is smaller than the window {wh}x{ww} in one dimension; 1-D positions encode "
            f"the trained row width {ww}, so sample grids of width {ww} or at least {wh}x{ww}"
        )
    return wh, ww
