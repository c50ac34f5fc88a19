"""Held-out scores of a tokenizer folder (default: the shipped one) for the model card.

PSNR / SSIM (uint8-rounded reconstructions), codebook usage, and rFID (n small: indicative only)
when the FID Inception weights are available, on 256×256 center crops of
``../shared/data/eval-photos`` (never trained on).

    python benchmarks/default_tokenizer_eval.py [--model vqtok/weights/default] [--out runs/default-eval]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "vqtok" / "weights" / "default"))
    p.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "eval-photos"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", default="runs/default-eval")
    p.add_argument("--no-fid", action="store_true")
    args = p.parse_args()

    import torch

    from vqtok import Tokenizer
    from vqtok.metrics.evaluate import evaluate_reconstruction, find_images

    torch.set_num_threads(1)
    tok = Tokenizer.from_pretrained(args.model)
    inception = None
    if not args.no_fid:
        try:
            from vqtok.metrics import load_fid_inception

            inception, _ = load_fid_inception(allow_download=False)
        except (FileNotFoundError, ValueError) as err:
            print(f"no rFID: {err}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_reconstruction(
        tok, find_images([args.images]), size=args.size, inception=inception, grid_path=out / "grid.png", progress=False,
        kid_subset_size=50, kid_subsets=20,
    )
    d = result.to_dict()
    (out / "eval.json").write_text(json.dumps(d, indent=1, default=str))
    usage = result.usage
    print(json.dumps({
        "n": result.n, "size": args.size, "psnr": round(result.psnr, 3), "ssim": round(result.ssim, 4), "rfid": result.rfid,
        "usage": usage.used_fraction if usage else None, "used_codes": usage.used_codes if usage else None,
        "perplexity": usage.perplexity if usage else None, "params": sum(p.numel() for p in tok.model.parameters()),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
