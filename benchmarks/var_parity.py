"""VAR parity at the released width: our VARVQVAE against FoundationVision/VAR's own VQVAE on real photos.

Random weights (the released ones are not needed: the architecture and the math are what is
compared) at VAR's default width (ch 160, vocab 4096, z 32, ch_mult 1,1,2,2,4, 10 scales, 256 px),
built by VAR's code from a seed, written as a plain ``.pth`` and converted with
:func:`vqtok.models.var.convert_var`. The codebook is redrawn as N(0, σ²) with σ the std of the
first photo's features, so that the random encoder's residuals spread over many codes. Reports
the share of ids equal to VAR's ``cat(img_to_idxBl(x), 1)`` and the RMS (in /255) of our
``decode_ids`` against VAR's ``idxBl_to_img(same_shape=True, last_one=True)`` of the same ids.

    python benchmarks/var_parity.py --var-repo /work/ref/VAR [--images 8] [--ch 160] [--decode 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from tests.make_var_golden import EVAL_PHOTOS, build_reference, load_photos, load_reference, to_input
from vqtok.models.var import VARVQVAE, convert_var

log = logging.getLogger("var_parity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--var-repo", required=True, help="a FoundationVision/VAR checkout")
    parser.add_argument("--images", type=int, default=8, help="eval photos (sorted names), center-cropped to 256")
    parser.add_argument("--decode", type=int, default=4, help="how many of them to decode as well")
    parser.add_argument("--ch", type=int, default=160, help="base width (VAR: 160)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    ref = load_reference(args.var_repo)
    vae = build_reference(ref, {"vocab_size": 4096, "z_channels": 32, "ch": args.ch, "v_patch_nums": [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]})
    names = tuple(sorted(p.name for p in EVAL_PHOTOS.glob("*.jpg"))[: args.images])
    x = to_input(load_photos(names))
    with torch.no_grad():
        sigma = float(vae.quant_conv(vae.encoder(x[:1])).std())
        vae.quantize.embedding.weight.normal_(0.0, sigma)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(vae.state_dict(), Path(tmp) / "vae_random.pth")
        cfg, state = convert_var([Path(tmp) / "vae_random.pth"])
    model = VARVQVAE(cfg).eval()
    model.load_state_dict(state)
    equal = total = 0
    sq, n_px, worst, distinct = 0.0, 0, 0.0, []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(len(names)):
            xi = x[i : i + 1]
            ref_ids = torch.cat(vae.img_to_idxBl(xi), 1)
            ids = model.encode_ids(xi)
            equal += int((ids == ref_ids).sum())
            total += ids.numel()
            distinct.append(len(torch.unique(ref_ids)))
            if i < args.decode:
                ref_px = vae.idxBl_to_img(list(torch.split(ref_ids, [p * p for p in cfg.patch_nums], 1)), same_shape=True, last_one=True)
                px = model.decode_ids(ref_ids)
                sq += float(((px - ref_px) * 127.5).square().sum())
                worst = max(worst, float((px - ref_px).abs().max() * 127.5))
                n_px += px.numel()
            log.info("%s: ids equal %d/%d", names[i], int((ids == ref_ids).sum()), ids.numel())
    log.info("ch %d, vocab 4096, z 32, σ %.3f: ids equal %.4f %% (%d/%d) on %d photos (distinct ids per photo %s); "
             "decode RMS %.2e/255 (max %.2e/255) on %d photos; %.0f s", args.ch, sigma, 100 * equal / total, equal, total, len(names), distinct,
             (sq / max(n_px, 1)) ** 0.5, worst, min(args.decode, len(names)), time.perf_counter() - start)


if __name__ == "__main__":
    main()
