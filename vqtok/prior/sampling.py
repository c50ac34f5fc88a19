"""Sampling token grids from a :class:`~vqtok.prior.gpt.GPT` prior.

Three code paths produce the same distribution:

* **KV cache** (default): one new position per step; keys/values of earlier positions are
  kept, so a step costs O(t) attention instead of a full forward pass.
* **full recomputation** (``use_cache=False``): every step re-runs the model on the whole
  prefix, which is how taming-transformers samples. Kept as the reference for tests and
  the benchmark. With the same generator both paths give the same tokens: they draw
  exactly one uniform number per sample per step and invert the same CDF.
* **sliding window**: for grids larger than the trained grid (e.g. 32×32 tokens from a
  16×16 model). Token ``(i, j)`` is sampled from a window of the trained shape ``(wh, ww)``
  placed around it: ``top = clamp(i - wh//2, 0, H - wh)``, ``left = clamp(j - ww//2, 0, W - ww)``
  (centred, clamped at the borders; taming-transformers' rule). The context is the
  class token plus the window flattened row-major up to the token's position in the window,
  so it never exceeds ``block_size`` and always contains the token's causal neighbours
  (the row above from ``j - ww//2`` to ``j + ww//2 - 1`` and the tokens to its left).
  While the window stays put (near the left/right borders, where it is clamped) the KV
  cache is extended by one token per step; when it moves, the cache is refilled with the
  new context in one forward pass (``use_cache=False`` recomputes every step).

Classifier-free guidance: with ``cfg_scale = s ≠ 1`` each step runs the model on the
batch twice (with the labels and with the null class) and samples from
``l_uncond + s · (l_cond − l_uncond)`` (logits). ``s = 1`` is plain conditional sampling
(and skips the second pass); ``s = 0`` is unconditional sampling.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from vqtok.prior.gpt import GPT

logger = logging.getLogger(__name__)

__all__ = ["generate", "filter_logits", "sample_logits", "Window", "window_for", "window_context"]


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


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(n,) float64 in [0, 1), drawn on the generator's device, returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).to(device)


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
    u = _uniform(logits.shape[0], generator, logits.device)[:, None] * cdf[:, -1:]  # (B, 1)
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


def _resolve_grid(model: GPT, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        return int(grid[0]), int(grid[1])
    if model.config.train_grid is not None:
        return model.config.train_grid
    side = math.isqrt(model.config.block_size)
    if side * side != model.config.block_size:
        raise ValueError("the model config has no train_grid and block_size is not square: pass grid=(h, w)")
    return side, side


def _resolve_window(model: GPT, grid: tuple[int, int], window: tuple[int, int] | None) -> tuple[int, int] | None:
    """None = sample the grid directly; else the sliding-window shape."""
    H, W = grid
    block = model.config.block_size
    train = window if window is not None else model.config.train_grid
    if train is None:
        if H * W <= block:
            return None
        raise ValueError(
            f"grid {H}x{W} has more than block_size={block} tokens and the model has no train_grid: pass window=(h, w)"
        )
    wh, ww = int(train[0]), int(train[1])
    if wh * ww > block:
        raise ValueError(f"window {wh}x{ww} has more than block_size={block} tokens")
    if W == ww and H <= wh and window is None:
        return None  # the top H rows of a trained-shape grid: plain raster sampling
    if H < wh or W < ww:
        raise ValueError(
            f"grid {H}x{W} is smaller than the window {wh}x{ww} in one dimension; 1-D positions encode "
            f"the trained row width {ww}, so sample grids of width {ww} or at least {wh}x{ww}"
        )
    return wh, ww


@torch.no_grad()
def generate(
    model: GPT,
    n: int,
    *,
    labels: Tensor | int | list[int] | None = None,
    grid: tuple[int, int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    window: tuple[int, int] | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> Tensor:
    """Sample ``n`` token grids -> ids (n, h, w) long on the model's device.

    labels: None (unconditional / null class), an int for all samples, or (n,) ids (-1 = none).
    grid: (h, w); defaults to the trained grid. Grids larger than the trained grid use the
    sliding window (shape ``window``, default ``model.config.train_grid``).
    cfg_scale: classifier-free guidance scale (needs labels; 1 = off).
    use_cache: False re-runs the full prefix every step (reference path; same tokens).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    H, W = _resolve_grid(model, grid)
    win = _resolve_window(model, (H, W), window)
    if win is None and H * W > model.config.block_size:
        raise ValueError(f"grid {H}x{W} exceeds block_size={model.config.block_size}")
    device = model.device
    cond = model._labels(torch.as_tensor(labels) if labels is not None else None, n)  # (n,)
    guided = cfg_scale != 1.0
    if guided:
        if labels is None or model.config.n_classes == 0:
            raise ValueError("cfg_scale != 1 needs a class-conditional model and labels")
        null = torch.full_like(cond, model.config.null_class)
        lab = torch.cat([cond, null])  # (2n,)
    else:
        lab = cond

    def pick(logits: Tensor) -> Tensor:  # logits (n or 2n, V) -> (n,)
        logits = logits.float()
        if guided:
            lc, lu = logits[:n], logits[n:]
            logits = lu + cfg_scale * (lc - lu)
        return sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    def dup(x: Tensor) -> Tensor:  # batch for the (maybe doubled) model input
        return torch.cat([x, x]) if guided else x

    was_training = model.training
    model.eval()
    out = torch.zeros(n, H, W, dtype=torch.long, device=device)
    flat = out.view(n, H * W)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=H * W, desc="sampling", unit="tok", leave=False, file=sys.stderr)
    try:
        if win is None and use_cache:
            cache = model.new_cache(lab.shape[0])
            prev: Tensor | None = None
            for t in range(H * W):
                flat[:, t] = pick(model.step(prev, lab, cache))
                prev = dup(flat[:, t])
                if bar is not None:
                    bar.update()
        elif win is None:
            for t in range(H * W):
                flat[:, t] = pick(model.next_logits(dup(flat[:, :t]), lab))
                if bar is not None:
                    bar.update()
        else:
            logger.debug("sliding-window sampling of a %dx%d grid with a %dx%d window", H, W, *win)
            cache = model.new_cache(lab.shape[0]) if use_cache else None
            cached_at: tuple[int, int] | None = None  # window origin the cache was filled for
            for i in range(H):
                for j in range(W):
                    ctx = window_context(out, win, i, j)  # (n, L)
                    if cache is None:
                        logits = model.next_logits(dup(ctx), lab)
                    else:
                        w = window_for((H, W), win, i, j)
                        if cached_at == (w.top, w.left) and cache.length == ctx.shape[1]:
                            # same window as the last step: feed only the token sampled last
                            logits = model.step(dup(ctx[:, -1]), lab, cache)
                        else:  # the window moved: refill the cache with the new context
                            logits = model.prefill(dup(ctx), lab, cache)
                            cached_at = (w.top, w.left)
                    out[:, i, j] = pick(logits)
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return out
