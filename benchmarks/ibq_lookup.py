"""Time and peak memory of IBQ's code search (largest inner product) at 262 144 × 256.

:func:`vqtok.models.ibq.max_inner_product` is chunked over the N query rows: one (rows, K) logit
buffer of about 64 MiB, plus the softmax's output of the same size in the exact mode, whatever N.
IBQ's own ``IndexPropagationQuantize`` builds the whole (B, K, h, w) logits and softmax: 512 MiB
per 16×16-token image at K = 262 144 (its one-hot tensors add as much again). Each measurement runs in a fresh subprocess; "extra peak"
is ``ru_maxrss`` after the search minus before it (codebook and queries already allocated)::

    OMP_NUM_THREADS=1 python benchmarks/ibq_lookup.py [--images 1 4] [--k 262144] [--d 256] [--threads 1]
"""

from __future__ import annotations

from nearest_code_large import measure, parse_args  # the sibling benchmark (this folder is sys.path[0])

_CHILD = r"""
import json, resource, sys, time
import torch
from vqtok.models.ibq import max_inner_product
n, k, d, exact, threads = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
codebook, z = torch.randn(k, d, generator=g), torch.randn(n, d, generator=g)
max_inner_product(z[:1], codebook[:8])  # warm-up on a tiny problem
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
t0 = time.perf_counter()
ids = max_inner_product(z, codebook, exact=bool(exact))
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
agree = int((z[:8] @ codebook.t()).argmax(1).eq(ids[:8]).sum())
print(json.dumps({"seconds": seconds, "extra_peak_mib": (after - before) / 1024, "agree8": agree}))
"""


def main() -> None:
    args = parse_args(__doc__)
    print(f"codebook {args.k} x {args.d} float32 = {args.k * args.d * 4 / 2**20:.0f} MiB; threads {args.threads}")
    print(f"{'images':>6} {'tokens':>7} {'mode':>8} {'seconds':>8} {'ms/token':>9} {'extra peak MiB':>15} {'IBQ whole logits+softmax MiB':>29}")
    for images in args.images:
        n = images * 256
        for exact in (True, False):
            r = measure(_CHILD, n, args.k, args.d, exact, args.threads)
            print(f"{images:>6} {n:>7} {'softmax' if exact else 'logits':>8} {r['seconds']:>8.2f} {1000 * r['seconds'] / n:>9.2f} "
                  f"{r['extra_peak_mib']:>15.0f} {2 * n * args.k * 4 / 2**20:>29.0f}   (argmax check {r['agree8']}/8)")


if __name__ == "__main__":
    main()
