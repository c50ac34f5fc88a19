"""Thread-count invariance of fp32 encoding on CPU: which ops depend on the thread count, and the cost.

Three parts, on the shipped default tokenizer and/or taming's f16 architecture (random weights),
real photos (../shared/data/eval-photos), channels_last input under inference_mode as the
Tokenizer runs it, batch-invariant mode (one image at a time, the default in eval on CPU):

1. ``ops``: every aten op of one encode at 1 thread is re-run on copies of the same inputs at
   each of ``--threads`` and compared bit for bit (PyTorch's own ops, as before the fix:
   vqtok.models.thread_invariance.ThreadInvariantOps switched off). Lists the ops whose output
   changed, with their shapes and the largest difference.
2. ``modules``: the output of every module (each conv, norm, ResNet block, ...) and the ids, at
   each thread count against 1 thread, before (ThreadInvariantOps off) and now.
3. ``speed``: images/s of the batch-invariant encode before and now (repetitions interleaved,
   median), at each of ``--speed-threads``.
4. ``opspeed`` (not in the default set): the two replaced ops alone, PyTorch's form against the
   thread-invariant one, on the shapes of taming's f16 and the default model.

    python benchmarks/thread_invariance.py --models default --threads 2 3 5 6
    python benchmarks/thread_invariance.py --parts speed --speed-threads 1 2 --reps 5
    python benchmarks/thread_invariance.py --parts opspeed --speed-threads 1 2

Prints a markdown report to stdout.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from batch_invariance import photos  # the same eval photos, prepared the same way
from batch_invariance import speed_models as models  # taming f16 (random weights) and the shipped default
from batch_invariance import model_input as channels_last_input

from vqtok.models import vqgan as vqgan_module


@contextlib.contextmanager
def before_fix() -> Iterator[None]:
    """The batch-invariant encode as before the fix: PyTorch's own SiLU and 1x1 convolutions."""
    saved = vqgan_module.ThreadInvariantOps
    vqgan_module.ThreadInvariantOps = contextlib.nullcontext  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        vqgan_module.ThreadInvariantOps = saved  # type: ignore[misc]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def model_input(n: int, size: int) -> torch.Tensor:
    """n eval photos at size×size -> (n, 3, S, S) model input, channels_last."""
    return channels_last_input(photos(n, size))


def _copy(t: Any) -> Any:
    if not isinstance(t, torch.Tensor) or (t.numel() > 1 and 0 in t.stride()):
        return t  # not a tensor, or an expanded view (never written to)
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t)


class ReRunAtThreads(TorchDispatchMode):
    """Runs each aten op at 1 thread, re-runs it on copies of its inputs at other thread counts, compares."""

    def __init__(self, counts: list[int]) -> None:
        super().__init__()
        self.counts = counts
        self.stats: dict[str, dict[str, Any]] = collections.OrderedDict()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        others = {}
        for n in self.counts:
            with threads(n):
                others[n] = func(*tree_map(_copy, args), **tree_map(_copy, kwargs))
        out = func(*args, **kwargs)
        s = self.stats.setdefault(str(func), {"calls": 0, "differ": collections.Counter(), "max": 0.0, "shapes": set()})
        s["calls"] += 1
        if isinstance(out, torch.Tensor) and "empty" not in str(func):  # empty*: uninitialised memory
            for n, other in others.items():
                if not torch.equal(other, out):
                    s["differ"][n] += 1
                    s["max"] = max(s["max"], float((other.double() - out.double()).abs().max()))
                    shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
                    s["shapes"].add(shapes)
        return out


def ops(args: argparse.Namespace) -> None:
    print(f"## Ops whose output changes with the thread count ({args.size} px, PyTorch's ops, before the fix)\n")
    print("| model | op | calls | calls that differ at " + ", ".join(map(str, args.threads)) + " threads | max abs diff | input shapes |")
    print("|---|---|---:|---|---:|---|")
    for label, model in models(args.models):
        x = model_input(1, args.size)
        mode = ReRunAtThreads(args.threads)
        with threads(1), before_fix(), torch.inference_mode(), mode:
            model.encode(x)
        for name, s in mode.stats.items():
            if s["differ"]:
                differ = ", ".join(str(s["differ"][n]) for n in args.threads)
                shapes = "; ".join(str(sh) for sh in sorted(s["shapes"])[:3])
                print(f"| {label} | `{name}` | {s['calls']} | {differ} | {s['max']:.2g} | {shapes} |", flush=True)
    print()


def modules(args: argparse.Namespace) -> None:
    print(f"## Module outputs and ids vs 1 thread ({args.photos} photo(s), {args.size} px)\n")
    print("| model | code | threads | modules that differ | first | max abs diff (features) | ids differ |")
    print("|---|---|---:|---:|---|---:|---:|")
    for label, model in models(args.models):
        x = model_input(args.photos, args.size)
        outputs: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        hooks = [
            m.register_forward_hook(lambda mod, i, o, name=name: outputs[name].append(o.clone()))
            for name, m in model.named_modules()
            if name and name != "quantize"
        ]
        try:
            for code, ctx in (("before", before_fix), ("now", contextlib.nullcontext)):
                runs = {}
                for n in [1, *args.threads]:
                    outputs.clear()
                    with threads(n), ctx(), torch.inference_mode():
                        ids = model.encode(x).ids
                    runs[n] = (ids, {k: torch.cat(v) for k, v in outputs.items()})
                ids1, out1 = runs[1]
                for n in args.threads:
                    ids, out = runs[n]
                    bad = [k for k in out1 if not torch.equal(out[k], out1[k])]
                    diff = float((out["quant_conv"] - out1["quant_conv"]).abs().max())
                    first = f"`{bad[0]}`" if bad else "-"
                    print(f"| {label} | {code} | {n} | {len(bad)} of {len(out1)} | {first} | {diff:.2g} | {int((ids != ids1).sum())} of {ids.numel()} |", flush=True)
        finally:
            for h in hooks:
                h.remove()
    print()


def speed(args: argparse.Namespace) -> None:
    print(f"## Speed: batch-invariant encode, {args.batch} photos at {args.size} px, median of {args.reps}\n")
    print("| model | threads | before (img/s) | now (img/s) | now / before | ids equal |")
    print("|---|---:|---:|---:|---:|---|")
    for label, model in models(args.models):
        x = model_input(args.batch, args.size)
        for n in args.speed_threads:
            times: dict[str, list[float]] = {"before": [], "now": []}
            ids: dict[str, torch.Tensor] = {}
            with threads(n), torch.inference_mode():
                model.encode(x[:1])  # warm-up (oneDNN primitives)
                for _ in range(args.reps):
                    for code, ctx in (("before", before_fix), ("now", contextlib.nullcontext)):
                        with ctx():
                            t0 = time.perf_counter()
                            ids[code] = model.encode(x).ids
                            times[code].append(time.perf_counter() - t0)
            ips = {code: args.batch / statistics.median(t) for code, t in times.items()}
            same = "yes" if torch.equal(ids["before"], ids["now"]) else "no"
            print(f"| {label} | {n} | {ips['before']:.3f} | {ips['now']:.3f} | {ips['now'] / ips['before']:.2f}x | {same} |", flush=True)
    print()


def opspeed(args: argparse.Namespace) -> None:
    """The two replaced ops alone: PyTorch's vs the thread-invariant form, on the f16 / default shapes."""
    import torch.nn.functional as F

    from vqtok.models import thread_invariance as ti

    print(f"## Speed of the replaced ops alone, median of {args.reps * 10}\n")
    print("| op | input (channels_last) | threads | PyTorch (ms) | thread-invariant (ms) | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    cases: list[tuple[str, tuple[int, ...], Any, Any]] = []
    for shape in [(1, 128, 256, 256), (1, 32, 256, 256), (1, 256, 64, 64)]:
        cases.append(("SiLU", shape, F.silu, ti.silu))
    for c_in, c_out, hw in [(512, 512, 16), (256, 512, 16), (64, 8, 32)]:
        w, b = torch.randn(c_out, c_in, 1, 1, generator=g) / c_in, torch.randn(c_out, generator=g)
        cases.append((f"1x1 conv {c_in}->{c_out}", (1, c_in, hw, hw),
                      lambda x, w=w, b=b: F.conv2d(x, w, b), lambda x, w=w, b=b: ti.conv2d(x, w, b)))
    for name, shape, ref, inv in cases:
        x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
        for n in args.speed_threads:
            times: dict[str, list[float]] = {"ref": [], "inv": []}
            with threads(n), torch.inference_mode():
                ref(x), inv(x)  # warm-up
                for _ in range(args.reps * 10):
                    for key, fn in (("ref", ref), ("inv", inv)):
                        t0 = time.perf_counter()
                        fn(x)
                        times[key].append(time.perf_counter() - t0)
            a, b = (1e3 * statistics.median(times[k]) for k in ("ref", "inv"))
            print(f"| {name} | {shape} | {n} | {a:.3f} | {b:.3f} | {b / a:.2f}x |", flush=True)
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["ops", "modules", "speed"], choices=["ops", "modules", "speed", "opspeed"])
    p.add_argument("--models", nargs="+", default=["default", "f16"], choices=["default", "f16"])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 3, 5, 6], help="compared with 1 thread")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--photos", type=int, default=2, help="modules part")
    p.add_argument("--batch", type=int, default=4, help="speed part: photos per encode")
    p.add_argument("--speed-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    for part in args.parts:
        globals()[part](args)


if __name__ == "__main__":
    main()
