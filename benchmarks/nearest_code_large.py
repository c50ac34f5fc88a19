"""Time and peak memory of the nearest-code search at IBQ's size: a 262 144 × 256 codebook.

``vqtok.models.quantizer.nearest_code`` is chunked over the N query rows so that the (N, K)
distance matrix never exists whole (about 64 MiB of buffers whatever N and K). This measures,
for N = tokens of 1, 4, ... images of 16×16 tokens:

* wall time of the exact (taming-order) search and of the fused ``exact=False`` one;
* peak extra resident memory during the search (``ru_maxrss`` of a fresh process, minus the
  high-water mark after the codebook and queries exist), against the 1 GiB / image that a
  whole (256, 262 144) float32 distance matrix would take.

Each measurement runs in its own subprocess so the peaks do not mix::

    OMP_NUM_THREADS=1 python benchmarks/nearest_code_large.py [--images 1 4] [--threads 1] [--k 262144] [--d 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
import torch
from vqtok.models.quantizer import nearest_code
n, k, d, exact, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
codebook = torch.randn(k, d, generator=g)
z = torch.randn(n, d, generator=g)
nearest_code(z[:1], codebook[:8], exact=exact)  # warm up kernels on a tiny problem
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
t0 = time.perf_counter()
ids = nearest_code(z, codebook, exact=exact)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
check = int(torch.cdist(z[:4], codebook).argmin(1).eq(ids[:4]).sum())
print(json.dumps({"seconds": dt, "extra_peak_mib": (peak - base) / 1024, "process_peak_mib": peak / 1024,
                  "first4_agree_with_cdist": check}))
"""


def measure(child: str, n: int, k: int, d: int, exact: bool, threads: int) -> dict[str, float]:
    """Run the ``child`` script (argv: n k d exact threads) in a fresh process; its last stdout line is JSON."""
    out = subprocess.run(
        [sys.executable, "-c", child, str(n), str(k), str(d), "1" if exact else "0", str(threads)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(doc: str | None) -> argparse.Namespace:
    """The options of this benchmark and of ``ibq_lookup.py``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[1, 4], help="images of 16x16 tokens per search")
    ap.add_argument("--k", type=int, default=262144, help="codebook size K")
    ap.add_argument("--d", type=int, default=256, help="code dimension D")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    return ap.parse_args()


def main() -> None:
    args = parse_args(__doc__)
    codebook_mib = args.k * args.d * 4 / 2**20
    print(f"codebook {args.k} x {args.d} float32 = {codebook_mib:.0f} MiB; threads {args.threads}")
    print(f"{'images':>6} {'tokens':>7} {'search':>14} {'seconds':>8} {'ms/token':>9} {'extra peak MiB':>15} {'whole (N,K) MiB':>16}")
    for images in args.images:
        n = images * 256
        for exact in (True, False):
            r = measure(_CHILD, n, args.k, args.d, exact, args.threads)
            whole = n * args.k * 4 / 2**20
            name = "exact" if exact else "fused addmm"
            print(f"{images:>6} {n:>7} {name:>14} {r['seconds']:>8.2f} {1000 * r['seconds'] / n:>9.2f} "
                  f"{r['extra_peak_mib']:>15.0f} {whole:>16.0f}   (cdist check {r['first4_agree_with_cdist']}/4)")


if __name__ == "__main__":
    main()
