"""Encode/decode speed of vqtok vs taming-transformers' own modules, side by side in one run.

For taming's ImageNet f16 architecture (ch=128, ch_mult 1,1,2,2,4, attention at 16, 1024 codes)
and its OpenImages f8 one (ch_mult 1,2,2,4, attention at 32, 16384 codes of dim 4), the same
random weights are loaded into taming's Encoder/Decoder/VectorQuantizer (the registry package,
assembled like ``taming.models.vqgan.VQModel`` in tests/taming_reference.py) and into vqtok.
Input: real photos (../shared/data/eval-photos, resized + center-cropped to 256x256).

Timed per (architecture, batch size), repetitions interleaved across implementations so load
changes hit all of them alike; the median is reported:

* taming  fp32  — uint8 -> [-1, 1], then ``VQModel.encode`` (Encoder, quant_conv, VectorQuantizer) /
  ``decode(get_codebook_entry)``
* vqtok   fp32  — ``Tokenizer.encode(uint8 batch)`` / ``Tokenizer.decode(ids, output="pt")``: the path users
  take (image conversion, batching, channels_last, SDPA, exact-order chunked search, batch invariance)
* vqtok   fp32 model — ``model.encode_ids(x)`` / ``model.decode_ids(ids)`` on a ready [-1, 1] NHWC batch
* vqtok   bf16  — ``Tokenizer(precision="bf16")``: the user path + bf16 autocast over encoder/decoder

Images/s, ratio to taming, achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) as a
fraction of this machine's measured matmul peak (fp32 and bf16), peak extra resident memory
during the call (RSS sampled every 2 ms), and token agreement: vqtok fp32 vs taming (must be
100%), bf16 vs fp32 with (a) a spread N(0, 1) codebook (as the parity tests) and (b) a
data-fitted codebook (codes = encoder features of *other* photos, like a trained codebook, where
features sit near their codes). Then the nearest-code search for K = 16384 against the naive
``torch.cdist(...).argmin`` and taming's full-matrix expression.

    python benchmarks/encode_decode.py                      # full table (see docs/performance.md)
    python benchmarks/encode_decode.py --archs f16 --batch-sizes 1 --reps 3   # quick look

Prints a markdown report to stdout.
"""

# ruff: noqa: B023  (the lambdas that close over loop variables are called inside the loop)
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqtok import Tokenizer, VQGANConfig
from vqtok.images import load_image, to_model_input, to_uint8_batch
from vqtok.models.quantizer import nearest_code

ARCHS = {
    # taming-transformers configs/.../vqgan_imagenet_f16_1024 (the published ImageNet model)
    "f16": VQGANConfig(),
    # taming-transformers vqgan_openimages_f8_16384 (the VQ one, as used by latent diffusion)
    "f8": VQGANConfig(ch_mult=(1, 2, 2, 4), attn_resolutions=(32,), z_channels=4, embed_dim=4, n_embed=16384),
}
PHOTOS = ROOT.parent / "shared" / "data" / "eval-photos"


# ---------------------------------------------------------------------------- measuring
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident-set growth during a block, sampled every 2 ms by a thread (CPU only)."""

    def __enter__(self) -> PeakRSS:  # noqa: PYI034
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak extra MiB) of one call."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return dt, mem.mib


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 7) -> float:
    """Best GFLOP/s of an n×n×n matmul: the machine's practical compute ceiling for that dtype.

    Best, not median: other processes only ever slow it down. Measured at the start and the end
    of the run; the higher one is used."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        flags = fields.get("Flags", "")
        isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags.split())
        return f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, " \
               f"model {fields.get('Model', '?').strip()}), {fields.get('CPU(s)', '?').strip()} CPUs; {isa}"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "?"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------- models and data
def build(cfg: VQGANConfig, seed: int):
    """taming's modules with random weights and a spread N(0, 1) codebook; vqtok with the same weights."""
    import contextlib
    import io

    from tests.taming_reference import TamingVQModel

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # taming prints "Working with z of shape ..."
        ref = TamingVQModel(cfg).eval()
    with torch.no_grad():  # trained-like spread codebook instead of taming's ±1/K init
        ref.quantize.embedding.weight.normal_(0, 1.0)
    tok = Tokenizer.from_config(cfg, precision="fp32")
    tok.model.load_state_dict(ref.state_dict(), strict=True)
    return ref, tok


def photos_uint8(n: int, size: int, offset: int = 0) -> torch.Tensor:
    files = sorted(PHOTOS.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no photos in {PHOTOS}")
    imgs = [load_image(files[(offset + i) % len(files)]) for i in range(n)]
    return to_uint8_batch(imgs, size=size).pixels  # (n, 3, S, S) uint8


def photos(n: int, size: int, offset: int = 0) -> torch.Tensor:
    return to_model_input(photos_uint8(n, size, offset))  # (n, 3, S, S) float32 in [-1, 1]


def taming_encode(ref, x):
    return ref.encode(x)[1]


def taming_decode(ref, ids):
    b, h, w = ids.shape
    quant = ref.quantize.get_codebook_entry(ids.reshape(-1), (b, h, w, ref.quantize.e_dim))
    return ref.decode(quant)


def features(tok: Tokenizer, x: torch.Tensor, precision: str) -> torch.Tensor:
    """quant_conv output (B, D, h, w) in float32, as the given precision computes it."""
    amp = {"fp32": None, "bf16": torch.bfloat16}[precision]
    with torch.inference_mode():
        xx = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            h = tok.model.encoder(xx)
        return tok.model.quant_conv(h.float()).float()


def ids_for(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    d = z.shape[1]
    return nearest_code(z.permute(0, 2, 3, 1).reshape(-1, d), codebook)


# ---------------------------------------------------------------------------- benchmarks
def bench_arch(name: str, cfg: VQGANConfig, args, peaks: dict[str, float]) -> tuple[list[str], list[str], str]:
    ref, tok = build(cfg, seed=0)
    flops_enc = count_flops(lambda: tok.model.encode(photos(1, args.size)))
    with torch.inference_mode():
        z1 = tok.model.encode(photos(1, args.size)).z_q
        flops_dec = count_flops(lambda: tok.model.decode(z1))

    def model_encode(u8: torch.Tensor) -> torch.Tensor:
        return tok.model.encode_ids(to_model_input(u8).contiguous(memory_format=torch.channels_last))

    impls = {
        "taming fp32": ("fp32", lambda u8: taming_encode(ref, to_model_input(u8)), lambda ids: taming_decode(ref, ids)),
        "vqtok fp32": ("fp32", None, None),
        "vqtok fp32 model": ("fp32", model_encode, lambda ids: tok.model.decode_ids(ids, channels_last=True)),
        "vqtok bf16": ("bf16", None, None),
    }
    if args.ablation:  # the same without channels_last, to see what the memory format buys
        impls["vqtok fp32 NCHW"] = ("fp32", None, None)
        impls["vqtok bf16 NCHW"] = ("bf16", None, None)

    def run(impl: str, what: str, arg: torch.Tensor):
        prec, enc, dec = impls[impl]
        tok.precision = prec
        tok.channels_last = not impl.endswith("NCHW")
        if enc is None:  # the Tokenizer, as users call it
            enc, dec = tok.encode, lambda ids: tok.decode(ids, output="pt")
        with torch.inference_mode():
            return (enc if what == "encode" else dec)(arg)

    rows, agree_rows = [], []
    x_warm = photos_uint8(1, args.size)
    for impl in impls:  # warm-up: oneDNN primitive creation, allocator
        ids = run(impl, "encode", x_warm)
        run(impl, "decode", ids)
    for bs in args.batch_sizes:
        x = photos_uint8(bs, args.size)
        ids_ref = run("taming fp32", "encode", x)  # the ids every decoder gets
        times: dict[tuple[str, str], list[float]] = {}
        mems: dict[tuple[str, str], float] = {}
        outs: dict[str, torch.Tensor] = {}
        for _rep in range(args.reps):
            for impl in impls:
                dt, mib = timed(lambda: outs.__setitem__(impl, run(impl, "encode", x)))
                times.setdefault((impl, "encode"), []).append(dt)
                mems[(impl, "encode")] = max(mems.get((impl, "encode"), 0.0), mib)
                if not args.no_decode:
                    dt, mib = timed(lambda: run(impl, "decode", ids_ref))
                    times.setdefault((impl, "decode"), []).append(dt)
                    mems[(impl, "decode")] = max(mems.get((impl, "decode"), 0.0), mib)
            print(f"  [{name} B={bs} rep {_rep + 1}/{args.reps} done, load {load()}]", file=sys.stderr, flush=True)
        for what in ("encode", "decode"):
            if (("taming fp32", what)) not in times:
                continue
            base = bs / statistics.median(times[("taming fp32", what)])
            for impl, (prec, _, _) in impls.items():
                med = statistics.median(times[(impl, what)])
                ips = bs / med
                gflops = (flops_enc if what == "encode" else flops_dec) * bs / med / 1e9
                agree = ""
                if what == "encode":
                    agree = f"{(outs[impl] == ids_ref).float().mean().item() * 100:.2f}% vs taming"
                rows.append(
                    f"| {name} | {bs} | {what} | {impl} | {ips:.3f} | {ips / base:.2f}× | {gflops:.0f} "
                    f"| {{{prec}:{gflops}}} | {mems[(impl, what)]:.0f} | {agree} |"
                )  # {prec:gflops} is filled in with the fraction of the peak at the end
    # Token agreement bf16 vs fp32 on real photos (spread codebook), and the feature error behind it.
    n = args.agreement_photos
    x_eval = photos(n, args.size, offset=8)
    z32, z16 = features(tok, x_eval, "fp32"), features(tok, x_eval, "bf16")
    cb = tok.model.quantize.embedding.weight.detach().float()
    a = (ids_for(z32, cb) == ids_for(z16, cb)).float().mean().item()
    rel = ((z16 - z32).norm() / z32.norm()).item()
    agree_rows.append(f"| {name} | {n} photos × {z32.shape[2]}×{z32.shape[3]} | {a * 100:.2f}% | {rel:.2e} |")
    info = f"{name}: encode {flops_enc / 1e9:.1f} GFLOP/image, decode {flops_dec / 1e9:.1f} GFLOP/image"
    return rows, agree_rows, info


def bench_search(args) -> list[str]:
    rows = []
    g = torch.Generator().manual_seed(0)
    k = 16384
    for d, n in ((256, 2048), (4, 8192), (256, 8192)):
        codebook = torch.randn(k, d, generator=g)
        z = torch.randn(n, d, generator=g)

        def taming_full():
            dist = torch.sum(z**2, dim=1, keepdim=True) + torch.sum(codebook**2, dim=1) - 2 * torch.matmul(z, codebook.t())
            return torch.argmin(dist, dim=1)

        mib = n * k * 4 / 2**20
        buffers = {  # float32 (N, K)-sized temporaries alive at once, by construction
            "naive torch.cdist + argmin": f"{mib:.0f}+",
            "taming full matrix": f"{3 * mib:.0f}",
            "vqtok exact (chunked)": f"{min(mib * 2, 64):.0f}",
            "vqtok fused addmm (chunked)": f"{min(mib, 64):.0f}",
        }
        methods = {
            "naive torch.cdist + argmin": lambda: torch.cdist(z, codebook).argmin(dim=1),
            "taming full matrix": taming_full,
            "vqtok exact (chunked)": lambda: nearest_code(z, codebook),
            "vqtok fused addmm (chunked)": lambda: nearest_code(z, codebook, exact=False),
        }
        with torch.inference_mode():
            expected = taming_full()
            res: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
            out = {}
            for m, fn in methods.items():
                fn()
            for _ in range(args.reps):
                for m, fn in methods.items():
                    res[m].append(timed(lambda: out.__setitem__(m, fn())))
        for m in methods:
            t = statistics.median(r[0] for r in res[m])
            rss = max(r[1] for r in res[m])
            agree = (out[m] == expected).float().mean().item() * 100
            rows.append(f"| {k} | {d} | {n} | {m} | {t * 1000:.1f} | {buffers[m]} | {rss:.0f} | {agree:.3f}% |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--ablation", action="store_true", help="also time vqtok without channels_last")
    p.add_argument("--agreement-photos", type=int, default=4, help="photos for the bf16-vs-fp32 agreement")
    p.add_argument("--no-search", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.time()
    load0 = load()
    print("# vqtok encode/decode benchmark\n")
    print(f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip() + "")
    print(f"- CPU: {cpu_model()}")
    print(f"- torch {torch.__version__}, {torch.get_num_threads()} threads, oneDNN {torch.backends.mkldnn.is_available()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"- {args.size}×{args.size} photos, median of {args.reps} interleaved repetitions", flush=True)

    rows, agree, infos = [], [], []
    for name in args.archs:
        r, a, info = bench_arch(name, ARCHS[name], args, peaks)
        rows += r
        agree += a
        infos.append(info)
    peaks = {k: max(v, matmul_peak(torch.float32 if k == "fp32" else torch.bfloat16)) for k, v in peaks.items()}
    print(f"- measured matmul peak (2048³ mm, best of 7, start and end of run): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s\n")

    def of_peak(row: str) -> str:
        head, rest = row.split("| {", 1)
        field, tail = rest.split("} |", 1)
        prec, gflops = field.split(":")
        return f"{head}| {float(gflops) / peaks[prec] * 100:.0f}% of {prec} |{tail}"

    rows = [of_peak(r) for r in rows]
    print("## Encode / decode\n")
    print("FLOPs per image: " + "; ".join(infos) + ".\n")
    print("| arch | batch | op | implementation | images/s | vs taming | GFLOP/s | of peak | peak extra MiB | tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n## bf16 vs fp32 token agreement (real photos, spread N(0, 1) codebook)\n")
    print("| arch | tokens | identical ids | ‖z_bf16 − z_fp32‖ / ‖z_fp32‖ |")
    print("|---|---|---|---|")
    print("\n".join(agree))
    if not args.no_search:
        print("\n## Nearest-code search, K = 16384\n")
        print("| K | D | N | method | ms | distance buffers MiB | RSS growth MiB | ids = taming's |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(bench_search(args)))
    print(f"\nLoad average (1, 5, 15 min): {load0} at start, {load()} at end; {time.time() - start:.0f} s total.")


if __name__ == "__main__":
    main()
