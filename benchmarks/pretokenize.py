"""Images/s of ``vqtok.pipeline.pretokenize`` vs a plain loop calling ``Tokenizer.encode`` per image.

Builds WebDataset shards from a folder of JPEGs (default: ../shared/data/eval-photos), then times

* baseline: read each tar with ``tarfile``, ``load_image`` + ``tok.encode(img, size=S)`` one image at a time;
* pipeline: ``pretokenize(..., workers=W, batch_size=B)`` (JPEG decode + resize in DataLoader
  workers, overlapped with batched model calls in the main process).

Both produce the same ids (checked). One run each, after one warm-up image.

    python benchmarks/pretokenize.py --images 64 --size 128 --model-preset small --workers 1
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vqtok.images import load_image
from vqtok.models.vqgan import VQGANConfig
from vqtok.pipeline import pretokenize
from vqtok.tokenizer import Tokenizer

PRESETS = {
    # the test model: f=4, 512 codes, ~0.1 M parameters
    "tiny": {"ch": 32, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (), "z_channels": 16, "embed_dim": 8, "n_embed": 512},
    # a small f=8 model, ~3 M parameters in the encoder
    "small": {"ch": 64, "ch_mult": (1, 1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (), "z_channels": 64, "embed_dim": 64, "n_embed": 1024},
}


def make_shards(photos: list[str], n_images: int, n_shards: int, folder: Path) -> list[Path]:
    paths = []
    per = -(-n_images // n_shards)
    for s in range(n_shards):
        path = folder / f"bench-{s:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(s * per, min(n_images, (s + 1) * per)):
                data = Path(photos[i % len(photos)]).read_bytes()
                for ext, payload in (("jpg", data), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"img{i:06d}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def baseline(shards: list[Path], tok: Tokenizer, size: int) -> dict[str, np.ndarray]:
    out = {}
    for shard in shards:
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    img = load_image(tf.extractfile(m).read())  # type: ignore[union-attr]
                    out[m.name[:-4]] = tok.encode(img, size=size).numpy()
    return out


def read_ids(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".ids.npy"):
                    out[m.name[: -len(".ids.npy")]] = np.load(io.BytesIO(tf.extractfile(m).read()))  # type: ignore[union-attr]
    return out


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=str(here.parent.parent / "shared" / "data" / "eval-photos"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", default=None, help="model folder (default: a random model of --model-preset)")
    ap.add_argument("--model-preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    photos = sorted(glob.glob(os.path.join(args.photos, "*.jpg")))
    if not photos:
        print(f"no JPEGs in {args.photos}", file=sys.stderr)
        return 2
    if args.model:
        tok = Tokenizer.from_pretrained(args.model, batch_size=args.batch_size)
        model_name = args.model
    else:
        torch.manual_seed(0)
        tok = Tokenizer.from_config(VQGANConfig(resolution=args.size, **PRESETS[args.model_preset]), batch_size=args.batch_size)
        model_name = f"random {args.model_preset}"
    n_params = sum(p.numel() for p in tok.model.parameters()) / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(photos, args.images, args.shards, Path(tmp))
        tok.encode(load_image(photos[0]), size=args.size)  # warm-up

        t0 = time.perf_counter()
        ref = baseline(shards, tok, args.size)
        t_base = time.perf_counter() - t0

        t0 = time.perf_counter()
        pretokenize([str(p) for p in shards], Path(tmp) / "tokens", model=tok, size=args.size,
                    batch_size=args.batch_size, workers=args.workers, progress=False)
        t_pipe = time.perf_counter() - t0

        got = read_ids(Path(tmp) / "tokens")
        same = got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)

    n = args.images
    print(f"model: {model_name} ({n_params:.2f} M params, f={tok.downsample_factor}, {tok.codebook_size} codes); "
          f"{n} photos (189-778 px) in {args.shards} shards at {args.size} px; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, workers {args.workers}")
    print("| method | seconds | images/s |")
    print("|---|---:|---:|")
    print(f"| loop: `Tokenizer.encode` one image at a time | {t_base:.2f} | {n / t_base:.1f} |")
    print(f"| `pretokenize` (workers={args.workers}, batch={args.batch_size}) | {t_pipe:.2f} | {n / t_pipe:.1f} |")
    print(f"speed-up: {t_base / t_pipe:.2f}x; identical ids: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
