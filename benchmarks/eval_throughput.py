"""Throughput of ``vqtok eval``: one process vs torchrun ranks vs Ray actors, on the same images, in one run.

Each row is the whole command as a user runs it (process start, model and Inception loading, scoring,
merging, the report), timed from outside; images/s = n / wall seconds. The rows score the same
images with the same work units, and the script checks that their reports agree (PSNR/SSIM to 1e-12
relative, rFID/KID to 1e-6). Threads: the single process gets ``--workers`` torch threads, each rank
or actor one, so every row uses the same cores.

    python benchmarks/eval_throughput.py                                   # default tokenizer, 24 eval photos
    python benchmarks/eval_throughput.py --model default@v1 --n 64 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "eval-photos"))
    p.add_argument("--n", type=int, default=24, help="images (the first N of the folder)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="ranks / Ray actors (and threads of the single process)")
    p.add_argument("--chunk-size", type=int, default=4)
    p.add_argument("--no-fid", action="store_true")
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vqtok-eval-bench-"))
    files = sorted(f for f in Path(args.images).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.n]
    data = tmp / "images"
    data.mkdir()
    for f in files:
        (data / f.name).symlink_to(f.resolve())
    base = ["eval", "--model", args.model, "--data", str(data), "--size", str(args.size), "--no-lpips", "--no-progress",
            "--offline", "--chunk-size", str(args.chunk_size)] + (["--no-fid"] if args.no_fid else [])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "MKL_NUM_THREADS": "1"}
    w = args.workers
    rows: list[tuple[str, float, Path]] = []

    out = tmp / "one.json"
    rows.append((f"one process ({w} threads)", _run([sys.executable, "-m", "vqtok.cli", *base, "--out", str(out)],
                                                    {**env, "OMP_NUM_THREADS": str(w)}), out))
    out = tmp / "ranks.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(w),
           "-m", "vqtok.cli", *base, "--state-dir", str(tmp / "state-ranks"), "--out", str(out)]
    rows.append((f"torchrun, {w} ranks (1 thread each)", _run(cmd, {**env, "OMP_NUM_THREADS": "1"}), out))
    if not args.no_ray:
        out = tmp / "ray.json"
        cmd = [sys.executable, "-m", "vqtok.cli", *base, "--engine", "ray", "--ray-actors", str(w), "--out", str(out)]
        rows.append((f"Ray, {w} actors (1 thread each)", _run(cmd, {**env, "OMP_NUM_THREADS": "1"}), out))

    reports = [json.loads(path.read_text()) for _, _, path in rows]
    first = reports[0]
    for (name, _, _), rep in zip(rows[1:], reports[1:]):
        for key, rel in (("psnr", 1e-12), ("ssim", 1e-12), ("rfid", 1e-6), ("kid_mean", 1e-6)):
            a, b = first[key], rep[key]
            if a is not None and abs(a - b) > rel * abs(a):
                print(f"warning: {name}: {key} {b} vs {a} (rel {abs(a - b) / abs(a):.2e})", file=sys.stderr)

    n = first["image_count"]
    cpu = os.cpu_count()
    print(f"{n} images at {args.size}x{args.size}, model {first['model']}, rFID {'off' if args.no_fid else 'on'}, "
          f"units of {args.chunk_size}, {cpu} CPU cores")
    print("| engine | wall (s) | images/s | vs one process |")
    print("|---|---|---|---|")
    for name, seconds, _ in rows:
        print(f"| {name} | {seconds:.1f} | {n / seconds:.2f} | {rows[0][1] / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
