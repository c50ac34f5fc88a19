"""fp32 encoder ops whose bits do not depend on the intra-op thread count (CPU).

Measured on torch 2.13 CPU (OpenMP, oneDNN, MKL; benchmarks/thread_invariance.py): re-running every
aten op of a VQGAN encode on the same inputs at 1 and 2-6 threads, two kinds of op change their
output with ``torch.set_num_threads``; every other one (3×3 convolutions, vqtok's GroupNorm,
``scaled_dot_product_attention``, the nearest-code GEMM, ``F.normalize``) gives the same bits.

* **SiLU** (and any elementwise op with a transcendental function). ATen's elementwise loop runs
  SIMD vectors over a range and the scalar function over its last ``n mod 32`` elements (AVX512
  float32: two 16-lane vectors per step), and the two ``exp`` round differently (4 % of random
  inputs). ``at::parallel_for`` cuts ``numel`` into one range of ``ceil(numel / T)`` elements per
  thread, so at T = 3, 5, 6, ... ranges end off the vector boundary and other elements go through
  the scalar tail. :func:`silu` calls the same kernel on ranges cut so that every thread's range
  is a whole number of vectors (a prefix of ``T · 64 · k`` elements) and runs the rest in pieces
  below ``GRAIN_SIZE`` (one thread): every element gets the same path as with one thread.
* **1×1 convolutions at batch < 16.** PyTorch runs them with its own GEMM (``thnn_conv2d``)
  when single-threaded and with oneDNN otherwise (``ConvParams::use_mkldnn``: "for 1x1 filters,
  MKLDNN is faster than THNN when multi-threaded"); the two round differently (up to 4.5e-6 per
  layer). :func:`conv2d` calls ``thnn_conv2d`` at every thread count, whose GEMM splits no
  reduction across threads.

:class:`ThreadInvariantOps` swaps both in for ``F.silu`` and ``F.conv2d`` while it is active
(``VQGAN.encode`` in batch-invariant mode, fp32 on CPU). With one thread they are the very
calls PyTorch makes, so single-threaded results are unchanged bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["ThreadInvariantOps", "silu", "conv2d", "GRAIN_SIZE", "ALIGN"]

GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: elementwise ops on fewer elements run on one thread
# Elements per thread range are multiples of this: a multiple of every SIMD width x unroll of ATen's
# vectorised loops (2 x 16 float32 lanes on AVX512, 2 x 8 on AVX2, half that for float64).
ALIGN = 64


def _parallel_prefix(n: int, threads: int) -> int:
    """Longest prefix of ``n`` elements that ``at::parallel_for(0, m, GRAIN_SIZE)`` on ``threads``
    threads cuts into equal ranges that are multiples of ALIGN; 0 when it would run one thread.

    ATen (OpenMP and native backends) uses ``t = min(threads, ceil(m / GRAIN_SIZE))`` ranges of
    ``ceil(m / t)`` elements; ``m`` a multiple of ``t · ALIGN`` makes them whole vector steps.
    """
    t = min(threads, -(-n // GRAIN_SIZE))
    while t > 1:
        m = n // (t * ALIGN) * (t * ALIGN)
        used = min(threads, -(-m // GRAIN_SIZE))
        if used == t:
            return m
        t = used  # the shorter prefix gets fewer ranges: cut again for that many
    return 0


def _flat(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] | None:
    """x -> (1-D view of its memory in order, map from such a 1-D tensor back to x's shape and layout)."""
    if x.is_contiguous():
        return x.view(-1), lambda f: f.view(x.shape)
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(-1), lambda f: f.view(b, h, w, c).permute(0, 3, 1, 2)
    return None


def silu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``F.silu(x)`` with the bits of one thread at any thread count (dense x; same shape and layout).

    One call with one thread; otherwise PyTorch's kernel on a prefix whose per-thread ranges are
    whole SIMD steps, then the rest in one-thread pieces (see the module docstring). Differentiable
    (the pieces are concatenated when x needs a gradient).
    """
    threads = torch.get_num_threads()
    if threads == 1 or x.numel() <= GRAIN_SIZE:
        return F.silu(x, inplace=inplace)
    flat = _flat(x)
    if flat is None:  # strided (not dense): PyTorch's own order, no guarantee
        return F.silu(x, inplace=inplace)
    xf, unflat = flat
    n = xf.numel()
    m = _parallel_prefix(n, threads)
    bounds = ([(0, m)] if m else []) + [(s, min(n, s + GRAIN_SIZE)) for s in range(m, n, GRAIN_SIZE)]
    if torch.is_grad_enabled() and x.requires_grad:  # autograd: out= kernels record no graph
        y = unflat(torch.cat([F.silu(xf[a:b]) for a, b in bounds]))
        return x.copy_(y) if inplace else y
    out = x if inplace else torch.empty_like(x)
    of = xf if inplace else _flat(out)[0]  # type: ignore[index]  # empty_like keeps the dense layout
    for a, b in bounds:
        torch._C._nn.silu(xf[a:b], out=of[a:b])
    return out


def _pair(v: int | Sequence[int] | str) -> tuple[int, int] | None:
    if isinstance(v, str):
        return None
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def conv2d(
    input: torch.Tensor,  # noqa: A002 (F.conv2d's name, for keyword calls)
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d``, with 1×1 stride-1 unpadded convolutions of batches < 16 through PyTorch's
    single-thread choice (``thnn_conv2d``) at every thread count. input (B, C_in, H, W) -> (B, C_out, H, W)."""
    x = input
    if (
        x.ndim == 4
        and x.shape[0] < 16  # PyTorch itself takes oneDNN from 16 images on, at any thread count
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and tuple(weight.shape[-2:]) == (1, 1)
        and groups == 1
        and _pair(stride) == (1, 1)
        and _pair(padding) == (0, 0)
        and _pair(dilation) == (1, 1)
        and _get_current_dispatch_mode() is None  # FlopCounterMode etc. see aten.convolution, as without us
    ):
        return torch._C._nn.thnn_conv2d(x, weight, (1, 1), bias, (1, 1), (0, 0))
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class ThreadInvariantOps(TorchFunctionMode):
    """While active, ``F.silu`` is :func:`silu` and ``F.conv2d`` is :func:`conv2d` (CPU fp32/fp64, no autocast).

    ``with ThreadInvariantOps(): ...`` -- the models call ``F.silu`` / ``nn.Conv2d`` as usual.
    """

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.silu or func is F.conv2d:
            x = args[0] if args else kwargs.get("input")
            if (
                isinstance(x, torch.Tensor)
                and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu")
            ):
                return (silu if func is F.silu else conv2d)(*args, **kwargs)
        return func(*args, **kwargs)
