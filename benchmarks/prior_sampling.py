"""Sampling speed of the GPT prior: KV cache vs full recomputation vs sliding window.

Full recomputation re-runs the transformer on the whole prefix for every new token (how
taming-transformers samples); the KV cache feeds one position per step. Both use the same
randomly initialised model and the same seed, and the script checks they return the same
tokens. The sliding-window row samples a larger grid (default 32×32) from the 16×16 model.

    python benchmarks/prior_sampling.py                     # defaults below
    python benchmarks/prior_sampling.py --threads 2 --n 8   # other settings

Prints a Markdown table (tokens/s = sampled tokens per second, all samples together).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vqtok.prior import GPT, GPTConfig


def timed(fn: object) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="samples per run")
    ap.add_argument("--grid", type=int, default=16, help="trained grid side (block_size = grid²)")
    ap.add_argument("--big", type=int, default=32, help="sliding-window grid side (0 = skip)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = args.grid
    cfg = GPTConfig(
        vocab_size=args.vocab,
        block_size=g * g,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.embd,
        n_classes=args.classes,
        train_grid=(g, g),
    )
    model = GPT(cfg).eval()
    labels = torch.arange(args.n) % args.classes

    def run(grid: int, **kw: object) -> torch.Tensor:
        return model.generate(
            args.n, labels=labels, grid=(grid, grid), generator=torch.Generator().manual_seed(0), **kw
        )

    model.generate(1, labels=0, grid=(2, g))  # warm-up
    rows = []
    t_cache, ids_cache = timed(lambda: run(g))
    rows.append(("KV cache", f"{g}x{g}", t_cache, args.n * g * g))
    t_full, ids_full = timed(lambda: run(g, use_cache=False))
    rows.append(("full recomputation (taming)", f"{g}x{g}", t_full, args.n * g * g))
    if args.big:
        t_win, ids_win = timed(lambda: run(args.big))
        assert ids_win.shape == (args.n, args.big, args.big)
        rows.append((f"sliding window {g}x{g}", f"{args.big}x{args.big}", t_win, args.n * args.big**2))

    print(
        f"model: {args.layers} layers, {args.embd} wide, {args.heads} heads, vocab {args.vocab}, "
        f"{model.num_parameters() / 1e6:.2f}M params; n={args.n}; torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}"
    )
    print(f"same tokens with and without cache: {torch.equal(ids_cache, ids_full)}")
    print()
    print("| path | grid | seconds | tokens/s |")
    print("|---|---|---:|---:|")
    for name, grid, sec, toks in rows:
        print(f"| {name} | {grid} | {sec:.2f} | {toks / sec:,.0f} |")
    print(f"\nKV cache speed-up over full recomputation: {t_full / t_cache:.1f}x")
    if args.json:
        print(
            json.dumps(
                {name: {"grid": grid, "seconds": sec, "tokens_per_s": toks / sec} for name, grid, sec, toks in rows}
            )
        )


if __name__ == "__main__":
    main()
