"""fp32 vs bf16 vs fp16 on a trained tokenizer: id agreement and speed, side by side in one run.

Random-weight models (benchmarks/encode_decode.py) say little about how often a low precision
flips an id on real data; this script measures it with real weights (default: the shipped
tokenizer) on real photos. ``--sources`` also splits bf16's flips by where the rounding happens
(fp32 runs with only the conv weights, or only the conv inputs, rounded to bf16).

    python benchmarks/precision_agreement.py [--model DIR_OR_REPO] [--images 65] [--sources]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from vqtok import Tokenizer
from vqtok.images import load_image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-photos"


def _round_to_bf16(tok: Tokenizer, *, weights: bool, inputs: bool) -> Tokenizer:
    """A copy of `tok` (fp32) whose encoder convs see bf16-rounded weights and/or inputs."""
    model = copy.deepcopy(tok.model)
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            if weights:
                with torch.no_grad():
                    module.weight.copy_(module.weight.bfloat16().float())
            if inputs:
                module.register_forward_pre_hook(lambda _m, args: (args[0].bfloat16().float(),))
    return Tokenizer(model, batch_size=tok.batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="tokenizer folder or Hub repo (default: built-in)")
    ap.add_argument("--photos", default=str(PHOTOS), help="folder of .jpg photos")
    ap.add_argument("--images", type=int, default=65)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--sources", action="store_true", help="also split bf16's flips by rounding source")
    args = ap.parse_args()

    paths = sorted(Path(args.photos).glob("*.jpg"))[: args.images]
    if not paths:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    images = [load_image(p) for p in paths]
    tok = Tokenizer.load(args.model, batch_size=args.batch_size)
    c = tok.model.config
    described = f"f{tok.downsample_factor}, {c.n_embed} codes of dim {c.embed_dim}, ch={c.ch}, ch_mult={c.ch_mult}"
    precisions = ["fp32"] + [p for p in args.precisions if p != "fp32"]
    ids, seconds = {}, {}
    for _ in range(args.reps):  # repetitions interleave the precisions: a load change hits all alike
        for precision in precisions:
            tok.precision = precision
            if precision not in ids:
                tok.encode(images[: args.batch_size], size=args.size)  # warm-up
            t0 = time.perf_counter()
            ids[precision] = tok.encode(images, size=args.size)
            seconds.setdefault(precision, []).append(time.perf_counter() - t0)
    n = len(images)
    print(f"model: {args.model or 'default'} ({described}), {n} photos at {args.size} px, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.reps}")
    print()
    print("| precision | images/s | speed vs fp32 | ids equal to fp32 | worst image |")
    print("|---|---:|---:|---:|---:|")
    t32 = statistics.median(seconds["fp32"])
    for precision in precisions:
        t = statistics.median(seconds[precision])
        same = (ids[precision] == ids["fp32"]).flatten(1).float()
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported() if precision == "bf16" else torch.ops.mkldnn._is_mkldnn_fp16_supported()
        note = "" if precision == "fp32" or native else " (emulated on this CPU)"
        print(f"| {precision}{note} | {n / t:.2f} | {t32 / t:.2f}x | {100 * same.mean().item():.2f}% | "
              f"{100 * same.mean(1).min().item():.2f}% |")

    if args.sources:
        print()
        print("Where bf16's flips come from (fp32 runs with bf16 rounding in one place only):")
        print()
        print("| rounded to bf16 | ids equal to fp32 |")
        print("|---|---:|")
        for name, kw in (("conv weights only", {"weights": True, "inputs": False}),
                         ("conv inputs only", {"weights": False, "inputs": True}),
                         ("conv weights + inputs (fp32 outputs, norms, residuals)", {"weights": True, "inputs": True})):
            got = _round_to_bf16(tok, **kw).encode(images, size=args.size)
            print(f"| {name} | {100 * (got == ids['fp32']).float().mean().item():.2f}% |")
        if "bf16" in ids:
            print(f"| everything (bf16 autocast) | {100 * (ids['bf16'] == ids['fp32']).float().mean().item():.2f}% |")


if __name__ == "__main__":
    main()
