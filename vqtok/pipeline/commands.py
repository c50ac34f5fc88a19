"""``vqtok pretokenize``: the command line face of :func:`vqtok.pipeline.pretokenize`."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from vqtok.commands import add_model_arguments, add_out_argument, add_progress_argument, device_from_args, number_in, positive_int
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
    p.add_argument("--input", required=True, nargs="+", metavar="PATTERN",
                   help="input shards: brace pattern 'data/train-{000000..000999}.tar', glob, paths, URLs or "
                        "'pipe:CMD' (e.g. 'pipe:aws s3 cp s3://b/train-{000..099}.tar -'); quote patterns")
    add_out_argument(p, "output folder (one model per folder)")
    p.add_argument("--size", type=_size, default=256, help="resize shorter side + center crop to SIZE (0: keep size; default 256)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: CPUs - 1, at most 4)")
    p.add_argument("--decode", choices=("exact", "fast"), default="exact",
                   help="exact (default): decode whole images; fast: JPEGs decoded at reduced scale (>= 2x --size) "
                        "first, ~2.3x faster on 2048 px photos, ~98%% of ids equal (docs/pipeline.md)")
    p.add_argument("--exif-transpose", action="store_true",
                   help="turn images upright by their EXIF orientation first (default: ignored, as PIL and the models' "
                        "training pipelines do; recorded in the manifest)")
    p.add_argument("--keep", default=",".join(DEFAULT_KEEP),
                   help=f"comma-separated fields copied from input samples when present (default {','.join(DEFAULT_KEEP)}; '' for none)")
    p.add_argument("--max-error-rate", type=number_in(float, 0.0, 1.0), default=0.01,
                   help="exit with status 1 at the end when more than this fraction of samples failed (default 0.01)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (and torchrun ranks); ray: actors on a Ray cluster (pip install 'vqtok[ray]')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join ('auto', 'ray://head:10001'; default $RAY_ADDRESS or a local Ray)")
    p.add_argument("--ray-actors", type=positive_int, default=None, metavar="N",
                   help="model replicas (default: GPUs / --ray-gpus-per-actor, else CPUs / --ray-cpus-per-actor)")
    p.add_argument("--ray-gpus-per-actor", type=number_in(float, 0.0), default=0.0, metavar="G",
                   help="GPUs per actor (1: one actor per GPU; default 0: CPU actors)")
    p.add_argument("--ray-cpus-per-actor", type=number_in(float, 0.0), default=None, metavar="C",
                   help="CPUs reserved per actor (default 1 + --workers)")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of processes (default $WORLD_SIZE or 1)")
    add_progress_argument(p)
    p.set_defaults(func=_run)


# Options the local and the Ray engine both take, under the same name as the CLI's args.
_SHARED_OPTIONS = ("model", "size", "batch_size", "workers", "decode", "exif_transpose", "precision", "max_error_rate")


def _cli_terms(msg: str) -> str:
    """A library message in the CLI's terms: ``model='default@v3', precision='bf16' (Tokenizer.default('v3'))``
    -> ``--model default@v3 --precision bf16``; ``keep field`` -> ``--keep field``."""
    msg = re.sub(r" \(Tokenizer\.default\('[^']*'\)\)", "", msg)
    msg = re.sub(r"model='([^']*)'(?:, precision='([^']*)')?",
                 lambda m: f"--model {m.group(1)}" + (f" --precision {m.group(2)}" if m.group(2) else ""), msg)
    msg = msg.replace("keep field ", "--keep field ").replace("out of keep", "out of --keep")
    return msg.replace("exif_transpose setting", "--exif-transpose setting")


def _run(args: argparse.Namespace) -> int:
    from vqtok.pipeline.driver import ErrorRateExceeded, ShardsNotFetched, pretokenize

    # the arguments the local and the Ray engine take alike (inputs, output, model, decoding, error policy)
    kwargs: dict[str, Any] = {name: getattr(args, name) for name in _SHARED_OPTIONS}
    kwargs.update(input=args.input[0] if len(args.input) == 1 else args.input, output=args.out,
                  keep=tuple(k for k in (s.strip() for s in args.keep.split(",")) if k), progress=not args.no_progress)
    try:
        if args.engine == "ray":  # the device is the actors' (a GPU node's), not this driver's: checked there
            from vqtok.pipeline.ray import RayOptions, pretokenize_ray

            if args.rank is not None or args.world_size is not None:
                raise ValueError("--rank/--world-size are for the local engine; with --engine ray the cluster shares the shards")
            result = pretokenize_ray(
                **kwargs, device=None if args.device in (None, "auto") else args.device,
                ray_options=RayOptions(address=args.ray_address, num_actors=args.ray_actors, num_gpus=args.ray_gpus_per_actor,
                                       num_cpus=args.ray_cpus_per_actor),
            )
        else:
            result = pretokenize(**kwargs, device=str(device_from_args(args)), rank=args.rank, world_size=args.world_size)
    except ValueError as err:
        raise ValueError(_cli_terms(str(err))) from None
    except (ShardsNotFetched, ErrorRateExceeded) as err:
        print(err.result.summary())
        print(f"vqtok pretokenize: error: {str(err).replace('max_error_rate', '--max-error-rate')}", file=sys.stderr)
        listed = err.result.fetch_failures if isinstance(err, ShardsNotFetched) else err.result.failures
        for item in listed[:10]:  # (shard, reason) or (shard, key, reason)
            print("  " + ": ".join(item), file=sys.stderr)
        if isinstance(err, ErrorRateExceeded) and len(listed) > 10:
            print(f"  ... {len(listed) - 10} more in the shards' .json files", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
