"""``vqtok pretokenize``: the command line face of :func:`vqtok.pipeline.pretokenize`."""

from __future__ import annotations

import argparse
import sys

from vqtok.commands import add_model_arguments, add_out_argument, device_from_args, number_in
from vqtok.tokens import DEFAULT_KEEP

__all__ = ["add_commands"]


def _size(text: str) -> int | None:
    return number_in(int, 0)(text) or None  # 0 = keep the image size


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "pretokenize",
        help="tokenize WebDataset image shards into token shards (one output shard per input shard)",
        description=(
            "Tokenize WebDataset tar shards of images into token shards: OUT/<name>.tar with "
            "<key>.ids.npy (+ kept fields) and OUT/<name>.json with counts, failures and the code "
            "histogram, plus OUT/manifest.json. Finished shards are skipped on re-runs. Under torchrun "
            "(RANK/WORLD_SIZE set) rank r handles input shards i with i % WORLD_SIZE == r."
        ),
    )
    add_model_arguments(p)
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATTERN",
        help=(
            "input shards: brace pattern 'data/train-{000000..000999}.tar', glob, paths, URLs or "
            "'pipe:CMD' (e.g. 'pipe:aws s3 cp s3://b/train-{000..099}.tar -'); quote patterns"
        ),
    )
    add_out_argument(p, "output folder (one model per folder)")
    p.add_argument("--size", type=_size, default=256, help="resize shorter side + center crop to SIZE (0: keep size; default 256)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: CPUs - 1, at most 4)")
    p.add_argument(
        "--keep",
        default=",".join(DEFAULT_KEEP),
        help=f"comma-separated fields copied from input samples when present (default {','.join(DEFAULT_KEEP)}; '' for none)",
    )
    p.add_argument(
        "--max-error-rate",
        type=number_in(float, 0.0, 1.0),
        default=0.01,
        help="exit with status 1 at the end when more than this fraction of samples failed (default 0.01)",
    )
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of processes (default $WORLD_SIZE or 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vqtok.pipeline.driver import ErrorRateExceeded, ShardsNotFetched, pretokenize

    keep = tuple(k for k in (s.strip() for s in args.keep.split(",")) if k)
    device = device_from_args(args)
    try:
        result = pretokenize(
            args.input[0] if len(args.input) == 1 else args.input,
            args.out,
            model=args.model,
            size=args.size,
            batch_size=args.batch_size,
            workers=args.workers,
            device=str(device),
            precision=args.precision,
            keep=keep,
            max_error_rate=args.max_error_rate,
            rank=args.rank,
            world_size=args.world_size,
            progress=not args.no_progress,
        )
    except ShardsNotFetched as err:
        print(err.result.summary())
        print(f"vqtok pretokenize: error: {err}", file=sys.stderr)
        for shard, reason in err.result.fetch_failures[:10]:
            print(f"  {shard}: {reason}", file=sys.stderr)
        return 1
    except ErrorRateExceeded as err:
        r = err.result
        print(r.summary())
        print(
            f"vqtok pretokenize: error: {r.samples_failed} of {r.samples_total} samples failed "
            f"({100 * r.error_rate:.2f}% > --max-error-rate {100 * err.max_error_rate:.2f}%)",
            file=sys.stderr,
        )
        for shard, key, reason in err.result.failures[:10]:
            print(f"  {shard}: {key}: {reason}", file=sys.stderr)
        if len(err.result.failures) > 10:
            print(f"  ... {len(err.result.failures) - 10} more in the shards' .json files", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
