"""fp32 vs bf16 on a trained tokenizer: id agreement and speed, side by side in one run.

Random-weight models (benchmarks/encode_decode.py) say little about how often bf16 flips an id on
real data; this script measures it with real weights (default: the shipped tokenizer) on real photos.

    python benchmarks/precision_agreement.py [--model DIR_OR_REPO] [--images 65] [--size 256]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from vqtok import Tokenizer
from vqtok.images import load_image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-photos"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="tokenizer folder or Hub repo (default: built-in)")
    ap.add_argument("--photos", default=str(PHOTOS), help="folder of .jpg photos")
    ap.add_argument("--images", type=int, default=65)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    paths = sorted(Path(args.photos).glob("*.jpg"))[: args.images]
    if not paths:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    images = [load_image(p) for p in paths]
    tok = Tokenizer.default() if args.model is None else Tokenizer.from_pretrained(args.model)
    tok.batch_size = args.batch_size
    ids, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        tok.precision = precision
        tok.encode(images[: args.batch_size], size=args.size)  # warm-up
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ids[precision] = tok.encode(images, size=args.size)
            times.append(time.perf_counter() - t0)
        seconds[precision] = statistics.median(times)
    agree = (ids["fp32"] == ids["bf16"]).float().mean().item()
    per_image = (ids["fp32"] == ids["bf16"]).flatten(1).float().mean(1)
    n = len(images)
    print(f"model: {args.model or 'default'} ({tok!r}), {n} photos at {args.size} px, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.reps}")
    print()
    print("| precision | images/s | speed vs fp32 | ids equal to fp32 | worst image |")
    print("|---|---:|---:|---:|---:|")
    print(f"| fp32 | {n / seconds['fp32']:.2f} | 1.00x | 100% | 100% |")
    print(f"| bf16 | {n / seconds['bf16']:.2f} | {seconds['fp32'] / seconds['bf16']:.2f}x | "
          f"{100 * agree:.2f}% | {100 * per_image.min().item():.2f}% |")


if __name__ == "__main__":
    main()
