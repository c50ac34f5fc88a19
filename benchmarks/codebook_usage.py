"""Codebook usage: taming's vanilla VQ, vqtok's default VQ, FSQ and LFQ; same data, steps and seed.

Trains the same encoder/decoder once per variant with ``vqtok.training``:

* **vanilla** (taming): code dimension = z_channels, Euclidean lookup, uniform(−1/K, 1/K) init,
  codebook gradient, β on the codebook term (``legacy_loss``), no restarts;
* **default** (vqtok): 8-d factorised lookup (``embed_dim=8``), l2-normalised (cosine) codes,
  k-means initialisation from the first batches, dead-code restart;
* **default+ema**: the default with EMA codebook updates;
* **fsq**: finite scalar quantization with ``--fsq-levels`` (8,8,8,8 = 4096 codes, 12 bits);
* **lfq**: lookup-free quantization with ``--lfq-bits`` (12 = 4096 codes) and the MAGVIT-v2
  entropy penalty (LossConfig's entropy weights, Open-MAGVIT2's values).

VQ variants have ``--n-embed`` codes; compare at the same bits per token (log2 of the codebook size).

then encodes held-out photographs (default ``../shared/data/eval-photos``, never trained on) at
256×256 center crops with each exported model (``Tokenizer.from_pretrained``) and prints codebook
usage (fraction of the K codes used on the held-out set), perplexity and reconstruction PSNR.

    python benchmarks/codebook_usage.py --train /work/data/corpus --bf16      # 600 steps, ~10 min CPU each
    python benchmarks/codebook_usage.py --train /work/data/corpus --variants default,fsq,lfq   # VQ vs FSQ vs LFQ, 12 bits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from vqtok import Tokenizer
from vqtok.images import from_model_output, to_model_input
from vqtok.metrics import codebook_usage, psnr
from vqtok.training import CodebookConfig, TrainConfig, train, vanilla_codebook
from vqtok.training.config import DataConfig, LossConfig, default_model_config
from vqtok.training.data import load_validation_images

REPO = Path(__file__).resolve().parents[1]


def configs(args: argparse.Namespace) -> dict[str, TrainConfig]:
    arch = dataclasses.replace(default_model_config(), n_embed=args.n_embed, resolution=args.crop)
    common = {
        "loss": LossConfig(perceptual_weight=0.0, disc_weight=0.0, rec_loss="l1+l2"),
        "data": DataConfig(crop_size=args.crop, max_zoom_out=args.max_zoom_out, num_workers=1, cache_images=True),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": min(100, args.steps // 5),
        "precision": "bf16" if args.bf16 else "fp32", "seed": args.seed, "threads": args.threads,
        "log_every": 50, "val_every": 10**9, "checkpoint_every": 10**9, "image_every": 10**9,
    }
    vanilla_arch = dataclasses.replace(arch, embed_dim=arch.z_channels, l2_norm_codes=False, legacy_loss=True)
    default_cb = CodebookConfig(kmeans_init=True, kmeans_batches=8, dead_after=args.dead_after, restart_every=10)
    fsq_arch = dataclasses.replace(arch, quantizer="fsq", fsq_levels=tuple(args.fsq_levels))
    lfq_arch = dataclasses.replace(arch, quantizer="lfq", lfq_bits=args.lfq_bits)
    implicit_cb = CodebookConfig(kmeans_init=False, dead_after=args.dead_after)  # FSQ / LFQ: nothing to initialise
    every = {
        "vanilla": ("vanilla (taming)", TrainConfig(model=vanilla_arch, codebook=vanilla_codebook(), **common)),  # type: ignore[arg-type]
        "default": ("default (vqtok)", TrainConfig(model=arch, codebook=default_cb, **common)),  # type: ignore[arg-type]
        "default+ema": (
            "default + EMA codebook",
            TrainConfig(model=arch, codebook=dataclasses.replace(default_cb, ema=True), **common),  # type: ignore[arg-type]
        ),
        "fsq": (f"FSQ levels {list(args.fsq_levels)}", TrainConfig(model=fsq_arch, codebook=implicit_cb, **common)),  # type: ignore[arg-type]
        "lfq": (f"LFQ {args.lfq_bits} bits + entropy loss", TrainConfig(model=lfq_arch, codebook=implicit_cb, **common)),  # type: ignore[arg-type]
    }
    unknown = sorted(set(args.variants) - set(every))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(every)}")
    return dict(every[v] for v in args.variants)


@torch.no_grad()
def evaluate(tok: Tokenizer, images: torch.Tensor) -> dict[str, float]:
    model = tok.model.eval()
    scores, ids = [], []
    for start in range(0, images.shape[0], 8):
        batch = images[start : start + 8]
        q = model.encode(to_model_input(batch))
        rec = from_model_output(model.decode(q.z_q))
        scores.append(psnr(rec.double(), batch.double() / 255))
        ids.append(q.ids.reshape(-1))
    usage = codebook_usage(torch.cat(ids), tok.codebook_size)
    return {
        "usage": usage.used_fraction,
        "used_codes": usage.used_codes,
        "perplexity": usage.perplexity,
        "psnr": float(torch.cat(scores).mean()),
        "tokens": usage.total_tokens,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training image folder (or shards)")
    p.add_argument("--heldout", default=str(REPO.parent / "shared" / "data" / "eval-photos"), help="held-out images")
    p.add_argument("--out", default="runs/bench-codebook-usage", help="run folders + results.json")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--n-embed", type=int, default=4096)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--dead-after", type=int, default=150)
    p.add_argument("--max-zoom-out", type=float, default=16.0, help="training crops cover up to crop × this source pixels")
    p.add_argument("--variants", type=lambda s: s.split(","), default=["vanilla", "default"],
                   help="comma-separated: vanilla, default, default+ema, fsq, lfq (default: vanilla,default)")
    p.add_argument("--fsq-levels", type=lambda s: [int(v) for v in s.split(",")], default=[8, 8, 8, 8],
                   help="FSQ levels per channel, comma-separated (default 8,8,8,8 = 4096 codes)")
    p.add_argument("--lfq-bits", type=int, default=12, help="LFQ bits per token (default 12 = 4096 codes)")
    p.add_argument("--size", type=int, default=256, help="held-out center-crop side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with AVX512-BF16 / AMX)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    images = load_validation_images(args.heldout, size=args.size, limit=10**6)
    out = Path(args.out)
    rows = {}
    for name, cfg in configs(args).items():
        t0 = time.time()
        run = out / name.split()[0].lower().replace("+", "-") / ("ema" if cfg.codebook.ema else "")
        shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (resume=False refuses an existing one)
        result = train(cfg, args.train, run, progress=False, resume=False)
        tok = Tokenizer.from_pretrained(result.final)
        rows[name] = {**evaluate(tok, images), "train_s": round(time.time() - t0, 1), "embed_dim": cfg.model.embed_dim,
                      "codebook_size": tok.codebook_size}
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))
    print(f"\n{args.steps} steps, batch {args.batch_size}, {args.crop}px crops, seed {args.seed}; "
          f"held-out: {images.shape[0]} images at {args.size}px ({rows[next(iter(rows))]['tokens']} tokens)\n")
    print("| quantizer | codes | bits/token | code dim | usage (held-out) | used codes | perplexity | PSNR (dB) | train time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['codebook_size']} | {math.log2(r['codebook_size']):.2f} | {r['embed_dim']} | {100 * r['usage']:.1f}% "
              f"| {r['used_codes']} | {r['perplexity']:.0f} | {r['psnr']:.2f} | {r['train_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
