"""Batch invariance of fp32 encoding on CPU: how often ids flip, and what invariance costs.

Two parts, each comparing the encoding before this change ("batched": the whole batch through
the encoder at once, PyTorch's NHWC GroupNorm kernel on channels_last activations) with the
default now ("invariant": one image at a time through the encoder, GroupNorm statistics by
two-pass sums in NHWC (vqtok.models.vqgan.group_norm_channels_last; Welford before 2026-11-29), the nearest-code search in
fixed-shape row blocks):

1. Flips. A taming-f16-layout model at reduced width (ch=32) whose codebook is dense around real
   latents, built two ways from the encoder outputs of real photos (../shared/data/eval-photos):
   ``noisy``: K latents of the photos plus noise of 1e-3 of their spread; ``pairs``: for every
   latent of the probed photo, two codes mirrored around it (distance 1e-3 of its norm), so its
   id is decided by rounding -- the worst case of a dense codebook. The probed photo is encoded
   alone, then at random positions of batches of 2..17 random companions (other photos and
   noise images); reported: batches in which any of its ids differ from alone, and ids flipped.
2. Speed. taming's full-size f16 architecture (ch=128, 1024 codes, random weights) and the
   shipped default tokenizer (f8, ch=32) at 256 px, real photos, channels_last input under
   inference_mode as the Tokenizer runs it; batch sizes 1 and 8; repetitions interleaved across
   the three modes ("batched", "GroupNorm fix only" = batched with the new GroupNorm,
   "invariant"), median images/s and the ratio to "batched".

    python benchmarks/batch_invariance.py                       # both parts (docs/performance.md)
    python benchmarks/batch_invariance.py --skip-speed --threads 1

Prints a markdown report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqtok import VQGAN, VQGANConfig
from vqtok.images import load_image, to_model_input, to_uint8_batch
from vqtok.models import vqgan as vqgan_module

# ../shared beside the checkout (or beside the folder of worktrees holding it)
PHOTOS = next(
    (d for d in (r / "shared" / "data" / "eval-photos" for r in ROOT.parents[:2]) if d.is_dir()),
    ROOT.parent / "shared" / "data" / "eval-photos",
)
SMALL_F16 = VQGANConfig(
    ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=64,
    embed_dim=64, n_embed=4096, resolution=256,
)
MODES = ("batched", "GroupNorm fix only", "invariant")


@contextlib.contextmanager
def stock_groupnorm() -> Iterator[None]:
    """PyTorch's own GroupNorm forward (NHWC kernel on channels_last input), as before the fix."""
    saved = vqgan_module.GroupNorm.forward
    vqgan_module.GroupNorm.forward = nn.GroupNorm.forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        vqgan_module.GroupNorm.forward = saved  # type: ignore[method-assign]


def encode_ids(model: VQGAN, x: torch.Tensor, mode: str) -> torch.Tensor:
    """x (B, 3, H, W) channels_last -> ids (B, h, w) in one of MODES."""
    with torch.inference_mode():
        if mode == "batched":
            with stock_groupnorm():
                return model.encode(x, batch_invariant=False).ids
        return model.encode(x, batch_invariant=mode == "invariant").ids


def photos(n: int, size: int) -> torch.Tensor:
    paths = sorted(PHOTOS.glob("*.jpg"))[:n]
    if len(paths) < n:
        raise SystemExit(f"need {n} photos in {PHOTOS}, found {len(paths)}")
    return to_uint8_batch([load_image(p) for p in paths], size=size).pixels  # (n, 3, S, S) uint8


def model_input(pixels: torch.Tensor) -> torch.Tensor:
    return to_model_input(pixels).contiguous(memory_format=torch.channels_last)


def dense_codebook(model: VQGAN, pixels: torch.Tensor, kind: str, g: torch.Generator) -> None:
    """Replace the codebook by one dense around the latents of ``pixels`` (pixels[0] is probed)."""
    k, d = model.config.n_embed, model.config.embed_dim
    with torch.inference_mode():
        z = model.quant_conv(model.encoder(model_input(pixels)))  # (n, D, h, w)
    lat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (n*h*w, D), the probed photo's rows first
    if kind == "noisy":
        rows = lat[torch.randperm(lat.shape[0], generator=g)[:k]]
        codes = rows + 1e-3 * lat.std() * torch.randn(rows.shape, generator=g)
        codes = torch.cat([codes, lat.std() * torch.randn(k - rows.shape[0], d, generator=g)])
    else:  # "pairs": two codes mirrored around each latent of the probed photo
        own = lat[: min(z.shape[2] * z.shape[3], k // 2)]
        u = torch.nn.functional.normalize(torch.randn(own.shape, generator=g), dim=1)
        step = 1e-3 * own.norm(dim=1, keepdim=True) * u
        codes = 3 * lat.std() * torch.randn(k, d, generator=g)
        codes[0 : 2 * own.shape[0] : 2] = own + step
        codes[1 : 2 * own.shape[0] : 2] = own - step
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(codes)


def flips(args: argparse.Namespace) -> None:
    print(f"## Flips: image alone vs in batches of 2-17 (small f16 layout, {args.flip_size} px, {torch.get_num_threads()} thread(s))\n")
    print("| codebook | mode | batches with a flip | ids flipped | ids per image |")
    print("|---|---|---:|---:|---:|")
    pix = photos(args.photos, args.flip_size)
    for kind in ("noisy", "pairs"):
        torch.manual_seed(0)
        model = VQGAN(SMALL_F16).eval()
        g = torch.Generator().manual_seed(0)
        dense_codebook(model, pix, kind, g)
        target = pix[:1]
        for mode in ("batched", "invariant"):
            g = torch.Generator().manual_seed(1)
            alone = encode_ids(model, model_input(target), mode)[0]
            bad = flipped = 0
            for bs in range(2, 18):
                for _ in range(args.positions):
                    pos = int(torch.randint(0, bs, (1,), generator=g))
                    comp = torch.randint(0, 256, (bs - 1, 3, args.flip_size, args.flip_size), dtype=torch.uint8, generator=g)
                    real = torch.randint(1, pix.shape[0], ((bs - 1) // 2,), generator=g)
                    comp[: real.numel()] = pix[real]
                    batch = torch.cat([comp[:pos], target, comp[pos:]])
                    n = int((encode_ids(model, model_input(batch), mode)[pos] != alone).sum())
                    bad += n > 0
                    flipped += n
            print(f"| {kind} | {mode} | {bad} of {16 * args.positions} | {flipped} | {alone.numel()} |", flush=True)
    print()


def speed_models(names: list[str]) -> Iterator[tuple[str, VQGAN]]:
    for name in names:
        if name == "f16":
            torch.manual_seed(0)
            yield "taming f16 (ch=128, random weights)", VQGAN(VQGANConfig()).eval()
        else:
            from vqtok import Tokenizer

            tok = Tokenizer.default()
            yield f"shipped default (f{tok.downsample_factor}, ch={tok.config.ch})", tok.model.eval()


def speed(args: argparse.Namespace) -> None:
    print(f"## Speed: encode at {args.size} px, {torch.get_num_threads()} thread(s), median of {args.reps}\n")
    print("| model | batch | mode | images/s | vs batched | ids equal to batched |")
    print("|---|---:|---|---:|---:|---:|")
    for label, model in speed_models(args.models):
        for bs in args.batch_sizes:
            x = model_input(photos(bs, args.size))
            encode_ids(model, x[:1], "invariant")  # warm-up (oneDNN primitive creation)
            times: dict[str, list[float]] = {m: [] for m in MODES}
            ids: dict[str, torch.Tensor] = {}
            for _ in range(args.reps):
                for mode in MODES:
                    t0 = time.perf_counter()
                    ids[mode] = encode_ids(model, x, mode)
                    times[mode].append(time.perf_counter() - t0)
            base = bs / statistics.median(times["batched"])
            for mode in MODES:
                ips = bs / statistics.median(times[mode])
                agree = (ids[mode] == ids["batched"]).float().mean().item()
                print(f"| {label} | {bs} | {mode} | {ips:.3f} | {ips / base:.2f}x | {100 * agree:.2f}% |", flush=True)
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--photos", type=int, default=16, help="photos for the codebook and companions")
    p.add_argument("--flip-size", type=int, default=128)
    p.add_argument("--positions", type=int, default=2, help="random positions per batch size")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["f16", "default"], choices=["f16", "default"],
                   help="speed part: taming's f16 architecture and/or the shipped default tokenizer")
    p.add_argument("--skip-flips", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    if not args.skip_flips:
        flips(args)
    if not args.skip_speed:
        speed(args)


if __name__ == "__main__":
    main()
