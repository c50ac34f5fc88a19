"""Images/s of the full ``vqtok pretokenize`` pipeline vs encode-only on tensors already in memory.

Builds WebDataset tar shards from real JPEGs (default: ../shared/data/eval-photos,
repeated to ``--images``), then, in one process, with the same model, batch size and torch
intra-op thread count:

* **encode-only** (the ceiling): every image decoded, converted and resized *beforehand*
  (``load_image`` -> ``pil_to_rgb`` -> ``resize_center_crop``, exactly what the pipeline's workers
  do), held in memory as uint8 arrays, then ``Tokenizer.encode`` on batches of ``--batch-size``;
  timed once before and once after the pipeline runs (the machine is shared, load drifts) and
  the mean is the baseline;
* **pipeline**: ``pretokenize(shards, out, workers=W, batch_size=B)`` for each ``--workers`` value —
  tar indexing, JPEG decode + resize in W DataLoader processes (in the main process for W=0),
  batching, encode, tar + stats writing, manifest; everything from the call to its return.

* with ``--remote``, also **pipeline on remote inputs**: the same shards given as ``pipe:cat
  SHARD`` (the remote-input path: each shard copied to ``.incoming/`` one ahead, then tokenized
  one shard per DataLoader), with the last ``--workers`` value.

Ratio = pipeline images/s / encode-only images/s (≥ 0.9 is the target). Every run's ids are checked against
encode-only's (and two images against ``Tokenizer.encode(PIL image, size=S)``).

    python benchmarks/pretokenize.py                      # f8 ch64 random model, 256 px, batch 16, workers 0 1 2
    python benchmarks/pretokenize.py --threads 2 --workers 0
    python benchmarks/pretokenize.py --workers 1 --remote    # local vs pipe:cat inputs
    python benchmarks/pretokenize.py --ray                   # + engine=ray rows (local Ray, pip install 'vqtok[ray]')
    python benchmarks/pretokenize.py --input-side --input-photos /work/data/train-images   # decode exact vs fast

* with ``--ray``, **engine ray**: ``pretokenize_ray`` on a local Ray (one actor, ``--workers`` of
  its own DataLoader processes, the same model file), timed from the call to its return: actor start-up
  and model loading included, the local Ray itself started before (a cluster is already running).
* ``--input-side``: the CPU side alone, per worker: JPEG decode + RGB + resize/crop to ``--size`` of
  photos re-encoded at 500, 1000 and 2000 px (long side, JPEG q90), ``decode="exact"`` vs ``"fast"``
  (draft to >= 2x size), images/s on one core, and the share of ids equal between the two on the
  model. Divide the encoder's images/s (on its device) by a worker's images/s to size the CPU side.
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

from vqtok.images import load_image, pil_to_rgb, resize_center_crop
from vqtok.models.vqgan import VQGANConfig
from vqtok.pipeline import pretokenize
from vqtok.tokenizer import Tokenizer

PRESETS = {
    # the test model: f=4, 512 codes, ~0.1 M parameters — decode dominates, not a realistic ratio
    "tiny": {"ch": 32, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (), "z_channels": 16, "embed_dim": 8, "n_embed": 512},
    # f=8, ch 64: ~1.6 M encoder parameters, ~0.3 s per 256 px image on one CPU core
    "f8-ch64": {"ch": 64, "ch_mult": (1, 1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (), "z_channels": 64, "embed_dim": 64, "n_embed": 1024},
    # f=8, ch 128: ~17 M encoder parameters, ~1.1 s per 256 px image on one CPU core
    "f8-ch128": {"ch": 128, "ch_mult": (1, 1, 2, 4), "num_res_blocks": 1, "attn_resolutions": (), "z_channels": 64, "embed_dim": 64, "n_embed": 1024},
}


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def make_shards(photos: list[str], n_images: int, n_shards: int, folder: Path) -> tuple[list[Path], list[tuple[str, bytes]]]:
    """WebDataset tars of ``<key>.jpg`` + ``<key>.cls``; returns the shards and (key, jpeg bytes) in order."""
    paths, samples = [], []
    per = -(-n_images // n_shards)
    for s in range(n_shards):
        path = folder / f"bench-{s:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(s * per, min(n_images, (s + 1) * per)):
                key, data = f"img{i:06d}", Path(photos[i % len(photos)]).read_bytes()
                samples.append((key, data))
                for ext, payload in (("jpg", data), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths, samples


def prepare(data: bytes, size: int) -> np.ndarray:
    """What a pipeline worker does to one image (and what ``Tokenizer.encode(img, size=size)`` does)."""
    return np.asarray(resize_center_crop(pil_to_rgb(load_image(data)), size), dtype=np.uint8)


def encode_only(tok: Tokenizer, pixels: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    ids = [tok.encode(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return time.perf_counter() - t0, torch.cat(ids).numpy()


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
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", default=None, help="model folder (default: a random model of --model-preset)")
    ap.add_argument("--model-preset", choices=sorted(PRESETS), default="f8-ch64")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, for encode-only and the pipeline (default 1)")
    ap.add_argument("--remote", action="store_true", help="also run on the shards as 'pipe:cat SHARD' inputs")
    ap.add_argument("--ray", action="store_true", help="also run engine=ray (local Ray, 1 actor, the last --workers value)")
    ap.add_argument("--input-side", action="store_true", help="also print the decode table (exact vs fast)")
    ap.add_argument("--input-photos", default=None, help="large JPEGs for --input-side (default: --photos)")
    args = ap.parse_args()
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
    n_params = sum(p.numel() for p in tok.model.encoder.parameters()) / 1e6
    n = args.images
    load_before = os.getloadavg()[0]

    rows: list[tuple[str, float, float, dict[str, np.ndarray]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        shards, samples = make_shards(photos, n, args.shards, Path(tmp))
        t0 = time.perf_counter()
        pixels = np.stack([prepare(data, args.size) for _, data in samples])  # (N, S, S, 3) uint8
        t_prep = time.perf_counter() - t0
        tok.encode(pixels[: args.batch_size])  # warm-up

        # encode-only before and after every pipeline run: each run is compared with the mean of
        # the two encode-only runs around it, which cancels most of the load drift of a shared machine.
        t_enc, ref = encode_only(tok, pixels, args.batch_size)
        base_times, ok = [t_enc], True
        runs = [(f"workers={w}", [str(p) for p in shards], w) for w in args.workers]
        if args.remote:
            runs.append((f"workers={args.workers[-1]}, `pipe:cat` inputs", [f"pipe:cat {p}" for p in shards], args.workers[-1]))
        if args.ray:
            runs.append((f"engine=ray, 1 actor, workers={args.workers[-1]}", [str(p) for p in shards], -1 - args.workers[-1]))
        model_dir = Path(tmp) / "model"
        tok.save_pretrained(model_dir)
        for i, (label, inputs, w) in enumerate(runs):
            out = Path(tmp) / f"tokens-{i}"
            if w < 0:  # a running cluster is the normal case: start the local Ray outside the timer
                import ray

                if not ray.is_initialized():
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            t0 = time.perf_counter()
            if w < 0:  # the Ray row (actor start-up and model loading inside the timer)
                from vqtok.pipeline.ray import RayOptions, pretokenize_ray

                pretokenize_ray(inputs, out, model=str(model_dir), size=args.size, batch_size=args.batch_size, workers=-1 - w,
                                progress=False, ray_options=RayOptions(num_actors=1, threads=args.threads))
            else:
                pretokenize(inputs, out, model=tok, size=args.size, batch_size=args.batch_size, workers=w, progress=False)
            secs = time.perf_counter() - t0
            assert torch.get_num_threads() == args.threads  # the pipeline restores the thread count
            t_enc, again = encode_only(tok, pixels, args.batch_size)
            ok = ok and np.array_equal(ref, again)
            rows.append((label, secs, (base_times[-1] + t_enc) / 2, read_ids(out)))
            base_times.append(t_enc)

    ok = ok and all(
        np.array_equal(tok.encode(load_image(data), size=args.size).numpy(), ref[i]) for i, (_, data) in enumerate(samples[:2])
    )
    keys = [k for k, _ in samples]
    sides = [side for p in photos for side in _image_size(p)]
    print(f"model: {model_name} (encoder {n_params:.1f} M params, f={tok.downsample_factor}, {tok.codebook_size} codes); "
          f"{n} photos ({len(photos)} distinct, {min(sides)}-{max(sides)} px JPEG) in {args.shards} shards -> {args.size} px; "
          f"batch {args.batch_size}; torch threads {args.threads}; {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    print(f"decode + convert + resize alone, one process: {t_prep:.2f} s ({1000 * t_prep / n:.1f} ms/image)")
    print(f"encode-only runs (s): {', '.join(f'{t:.1f}' for t in base_times)}")
    print()
    print("| run | seconds | images/s | encode-only around it: s, images/s | ratio | ids identical |")
    print("|---|---:|---:|---:|---:|---|")
    for label, secs, base, got in rows:
        same = list(got) == keys and all(np.array_equal(got[k], ref[i]) for i, k in enumerate(keys))
        ok = ok and same
        print(f"| `pretokenize`, {label} | {secs:.2f} | {n / secs:.2f} | {base:.2f} s, {n / base:.2f} | **{base / secs:.2f}** | {same} |")
    print(f"all ids identical to encode-only (and to Tokenizer.encode(PIL image, size={args.size})): {ok}")
    if args.input_side:
        input_side(tok, sorted(glob.glob(os.path.join(args.input_photos or args.photos, "*.jp*g"))), args.size, n=24)
    return 0 if ok else 1


def input_side(tok: Tokenizer, photos: list[str], size: int, *, n: int) -> None:
    """Per-worker decode throughput, exact vs fast, at typical web-image sizes; id agreement of the two."""
    from PIL import Image

    from vqtok.images import prepare_image

    print()
    print(f"input side, one core: {n} photos per row re-encoded as JPEG q90, -> {size} px")
    print("| long side | exact ms/image | exact images/s | fast ms/image | fast images/s | speed-up | ids equal (fast vs exact) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for side in (500, 1000, 2000):
        datas = []
        for p in photos[:n]:
            im = Image.open(p).convert("RGB")
            r = side / max(im.size)
            buf = io.BytesIO()
            im.resize((max(1, round(im.width * r)), max(1, round(im.height * r))), Image.BICUBIC).save(buf, "JPEG", quality=90)
            datas.append(buf.getvalue())
        times, arrays = {}, {}
        for mode in ("exact", "fast"):
            t0 = time.perf_counter()
            arrays[mode] = np.stack([prepare_image(d, size=size, decode=mode) for d in datas])
            times[mode] = (time.perf_counter() - t0) / len(datas)
        same = (tok.encode(arrays["exact"]) == tok.encode(arrays["fast"])).float().mean().item()
        e, f = times["exact"], times["fast"]
        print(f"| {side} | {1000 * e:.1f} | {1 / e:.1f} | {1000 * f:.1f} | {1 / f:.1f} | {e / f:.2f}x | {100 * same:.2f} % |")


if __name__ == "__main__":
    sys.exit(main())
