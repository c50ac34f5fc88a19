"""Held-out scores of tokenizers next to classical codecs at the same bytes (the model card's table).

Every row is scored the same way on 256×256 center crops of ``../shared/data/eval-photos`` (never
trained on; shorter side resized to 256 with the tokenizer's own resize, then center-cropped):
PSNR / SSIM on uint8 reconstructions, rFID (n small: indicative only; compare rows, not papers),
the mean colour offset per channel (reconstruction − original, in 1/255 units: signed mean over all
pixels of all images, and the mean over images of its absolute value), and "green kept": of the
pixels whose original is clearly green (G exceeds R and B by 16/255), the fraction still green-
dominant (G > R and G > B) after reconstruction.

A second table, flat colours, shows each tokenizer's colour axes: a 64×64 patch of one colour (plus the
same ±10 grey noise for all), encoded and decoded, its centre 32×32 averaged. A model that keeps only
one chroma axis returns green and magenta as grey.

Codec rows get the same budget as the first tokenizer's ids (12 bits per token of an f8 4096-code
model = 1536 bytes per 256×256 image): each image at the best quality whose whole file fits.

    python benchmarks/default_tokenizer_eval.py                       # shipped default (newest) vs codecs
    python benchmarks/default_tokenizer_eval.py --model default@v1 --model default --model runs/x/final
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

Codec = Callable[[np.ndarray], np.ndarray]  # uint8 (H, W, 3) -> uint8 (H, W, 3)


def codecs(budget: int) -> dict[str, Codec]:
    """JPEG / WebP / AVIF at ``budget`` bytes per image (vqtok.metrics.codecs, as ``vqtok eval --codec``), and bicubic 32x32."""
    import torch

    from vqtok.metrics.codecs import CodecReconstructor

    def run(c: CodecReconstructor) -> Codec:
        def apply(a: np.ndarray) -> np.ndarray:
            _, rec = c.reconstruct_batch(torch.from_numpy(np.ascontiguousarray(a).copy()).permute(2, 0, 1)[None])
            return (rec[0] * 255).round().byte().permute(1, 2, 0).numpy()

        apply.codec = c  # type: ignore[attr-defined]
        return apply

    out: dict[str, Codec] = {}
    for name in ("jpeg", "webp", "avif"):
        c = CodecReconstructor(name, budget)
        out[c.name] = run(c)
    out["bicubic 32x32 RGB (3072 B)"] = lambda a: np.asarray(
        Image.fromarray(a).resize((32, 32), Image.BICUBIC).resize(a.shape[1::-1], Image.BICUBIC), dtype=np.uint8
    )
    return out


def score(originals: np.ndarray, recons: np.ndarray, inception: object | None) -> dict[str, object]:
    """originals, recons: uint8 (N, H, W, 3) -> the table's numbers."""
    import torch

    from vqtok.metrics import psnr, ssim
    from vqtok.metrics.fid import fid_from_features

    o = torch.from_numpy(originals).permute(0, 3, 1, 2).double() / 255  # (N, 3, H, W)
    r = torch.from_numpy(recons).permute(0, 3, 1, 2).double() / 255
    per_image = (r - o).mean(dim=(2, 3)) * 255  # (N, 3) signed offsets in 1/255
    g = originals.astype(np.int16)
    green = (g[..., 1] - g[..., 0] > 16) & (g[..., 1] - g[..., 2] > 16)
    rr = recons.astype(np.int16)
    kept = (rr[..., 1] > rr[..., 0]) & (rr[..., 1] > rr[..., 2])
    out: dict[str, object] = {
        "psnr": round(float(psnr(o, r).mean()), 3),
        "ssim": round(float(ssim(o, r).mean()), 4),
        "rfid": None,
        "offset_rgb": [round(float(v), 2) for v in per_image.mean(0)],
        "abs_offset_rgb": [round(float(v), 2) for v in per_image.abs().mean(0)],
        "green_kept": round(float(kept[green].mean()), 4) if green.any() else None,
    }
    if inception is not None:
        with torch.no_grad():
            fo = torch.cat([inception(o[i : i + 16].float()) for i in range(0, len(o), 16)])
            fr = torch.cat([inception(r[i : i + 16].float()) for i in range(0, len(r), 16)])
        out["rfid"] = round(fid_from_features(fo, fr), 1)
    return out


FLAT_COLOURS = {"green": (80, 140, 60), "light green": (150, 200, 120), "magenta": (160, 60, 160),
                "red": (180, 60, 50), "cyan": (60, 160, 170), "orange": (200, 130, 60), "blue": (60, 90, 170)}


def flat_colours(tok: object) -> dict[str, tuple[int, ...]]:
    """What ``tok`` makes of each of FLAT_COLOURS: the mean RGB of the centre of its reconstruction."""
    noise = np.random.default_rng(0).integers(-10, 10, (64, 64, 1))  # grey: the same in R, G and B
    out = {}
    for name, rgb in FLAT_COLOURS.items():
        patch = (np.asarray(rgb)[None, None, :] + noise).clip(0, 255).astype(np.uint8)  # (64, 64, 3)
        rec = tok.decode(tok.encode(patch), output="np").reshape(64, 64, 3)  # type: ignore[attr-defined]
        out[name] = tuple(int(round(v)) for v in rec[16:48, 16:48].reshape(-1, 3).mean(0))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None, help="tokenizer folder, Hub id, 'default' or 'default@v1' (repeatable; default: 'default', the newest shipped one)")
    p.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "eval-photos"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--no-codecs", action="store_true", help="tokenizer rows only")
    p.add_argument("--no-fid", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()

    import torch

    from vqtok import Tokenizer
    from vqtok.tokenizer import model_id
    from vqtok.images import load_image, pil_to_rgb, resize_center_crop

    torch.set_num_threads(1)
    files = sorted(f for f in Path(args.images).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    originals = np.stack([np.asarray(resize_center_crop(pil_to_rgb(load_image(f)), args.size)) for f in files])
    inception = None
    if not args.no_fid:
        try:
            from vqtok.metrics import load_fid_inception

            inception, _ = load_fid_inception(allow_download=False)
        except (FileNotFoundError, ValueError) as err:
            print(f"no rFID: {err}", file=sys.stderr)

    rows: list[dict[str, object]] = []
    flat: dict[str, dict[str, tuple[int, ...]]] = {}
    budget = None
    for folder in [model_id(m) for m in args.model or ["default"]]:  # "default" -> "default@v1": rows say which
        tok = Tokenizer.from_pretrained(folder)
        x = torch.from_numpy(originals).permute(0, 3, 1, 2)
        ids = tok.encode(x)  # (N, h, w)
        recons = tok.decode(ids, output="np")  # (N, H, W, 3) uint8
        bits = math.log2(tok.codebook_size) * ids[0].numel()
        budget = budget or int(bits // 8)
        from vqtok.metrics import codebook_usage

        usage = codebook_usage(ids.reshape(-1), tok.codebook_size)
        rows.append({"method": f"tokenizer {folder}", "bytes": int(bits // 8), **score(originals, recons, inception),
                     "usage": round(usage.used_fraction, 4)})
        print(json.dumps(rows[-1]), file=sys.stderr)
        flat[folder] = flat_colours(tok)
    if not args.no_codecs:
        for name, codec in codecs(budget or 1536).items():
            recons = np.stack([codec(a) for a in originals])
            over = getattr(getattr(codec, "codec", None), "over_budget", 0)
            label = name + (f" ({over} images over budget at the lowest quality)" if over else "")
            rows.append({"method": label, "bytes": None, **score(originals, recons, inception), "usage": None})
            print(json.dumps(rows[-1]), file=sys.stderr)

    print(f"{len(files)} photos from {args.images} at {args.size}x{args.size}")
    print("| method | PSNR (dB) | SSIM | rFID | mean offset R/G/B (1/255) | mean abs offset R/G/B | green kept | usage |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        off = " / ".join(f"{v:+.1f}" for v in r["offset_rgb"])  # type: ignore[attr-defined]
        aoff = " / ".join(f"{v:.1f}" for v in r["abs_offset_rgb"])  # type: ignore[attr-defined]
        usage = "" if r["usage"] is None else f"{100 * r['usage']:.1f} %"  # type: ignore[operator]
        print(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['rfid'] if r['rfid'] is not None else 'n/a'} | "
              f"{off} | {aoff} | {r['green_kept']} | {usage} |")
    print("\nFlat colours (64x64 + grey noise, centre mean) -> reconstruction")
    print("| model | " + " | ".join(f"{n} {c}" for n, c in FLAT_COLOURS.items()) + " |")
    print("|---|" + "---|" * len(FLAT_COLOURS))
    for folder, got in flat.items():
        print(f"| {folder} | " + " | ".join(str(got[n]) for n in FLAT_COLOURS) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
