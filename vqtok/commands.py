"""Core subcommands (``encode``, ``decode``, ``info``) and the options every command family shares.

Shared options: :func:`add_model_arguments` (``--model/--device/--precision/--batch-size``),
:func:`add_device_argument` (``--device``, default ``auto``; checked by :func:`device_from_args`)
and :func:`add_out_argument` (``--out``/``-o``; ``--output`` is a hidden alias).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from vqtok.tokenizer import Tokenizer, model_id

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

N = TypeVar("N", int, float)

_CHUNK = 64  # images per load/encode (or decode/save) round in the encode/decode commands

__all__ = [
    "add_commands",
    "add_device_argument",
    "add_model_arguments",
    "add_out_argument",
    "add_progress_argument",
    "check_image_size",
    "parse_grid",
    "device_from_args",
    "number_in",
    "positive_int",
    "tokenizer_from_args",
]


def number_in(kind: Callable[[str], N], low: N, high: N | None = None) -> Callable[[str], N]:
    """argparse type: a ``kind`` (int / float) in ``[low, high]`` (argparse names the option in its error)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if value < low or (high is not None and value > high):  # type: ignore[operator]
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


positive_int = number_in(int, 1)  # argparse type: an integer >= 1


def add_device_argument(p: argparse.ArgumentParser, *, default: str | None = "auto", default_help: str = "auto") -> None:
    """``--device``: auto (CUDA when available, else CPU), cpu, cuda, cuda:N."""
    p.add_argument(
        "--device",
        default=default,
        help=f"auto (CUDA when available), cpu, cuda, cuda:N; under torchrun cuda is cuda:$LOCAL_RANK (default: {default_help})",
    )


def device_from_args(args: argparse.Namespace) -> torch.device:
    """The checked ``--device`` (an unusable one is a ValueError: one line, exit status 2)."""
    from vqtok._runtime import resolve_device

    return resolve_device(args.device)


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` (the rule of vqtok._progress: a bar on a terminal, else a log line every 30 s)."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (default: a bar on a terminal, else a log line every 30 s)")


def add_out_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str, *, required: bool = True, default: str | None = None
) -> None:
    """``--out``/``-o`` (the one spelling of every command's output; ``--output`` still works, unlisted)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--out", "-o", dest="out", default=default, metavar="OUT", help=help)
    group.add_argument("--output", dest="out", default=default, help=argparse.SUPPRESS)


def add_model_arguments(p: argparse.ArgumentParser, *, batch_size: int = 32) -> None:
    """--model / --device / --precision / --batch-size, shared by every command that runs a tokenizer."""
    p.add_argument("--model", "-m", default=None, help="model folder or Hub repo id; 'default' is the built-in tokenizer (newest version), "
                        "'default@v1' a pinned version (default: 'default')")
    add_device_argument(p)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="fp32 is exact (default)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"images per forward pass (default: {batch_size})")


def tokenizer_from_args(args: argparse.Namespace) -> Tokenizer:
    return Tokenizer.load(args.model, device=device_from_args(args), precision=args.precision, batch_size=args.batch_size)


IDS_RECORD_VERSION = 1  # "vqtok_ids" of the .json written beside an encode output


def ids_record_path(ids_path: str | os.PathLike[str]) -> Path:
    """``ids.npy`` -> ``ids.json``: the record of which input made which row (written by ``vqtok encode``)."""
    return Path(ids_path).with_suffix(".json")


def activation_bytes(tok: Tokenizer, size: int) -> int:
    """A rough peak of the encoder/decoder activations for one size x size image, in bytes (fp32):
    three full-resolution feature maps of ``ch`` channels (a ResNet block's input, hidden and output)."""
    ch = int(getattr(tok.config, "ch", 128))
    return 3 * ch * size * size * 4


def _memory_bytes(device: torch.device) -> int | None:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_image_size(tok: Tokenizer, size: int | None, option: str = "--size") -> None:
    """A ``--size`` the model can take: a positive multiple of its downsample factor whose activations
    fit in this machine's memory (ValueError naming ``option`` otherwise)."""
    if size is None:
        return
    f = tok.downsample_factor
    if size <= 0 or size % f:
        raise ValueError(f"{option} must be a positive multiple of {f} (the model's downsample factor), got {size}")
    need, have = activation_bytes(tok, size), _memory_bytes(tok.device)
    if have is not None and need > have:
        raise ValueError(
            f"{option} {size} needs about {need / 2**30:.0f} GiB of activations per image, more than the "
            f"{have / 2**30:.0f} GiB of this {tok.device.type.upper()}; use a smaller {option}"
        )


def _encode(args: argparse.Namespace) -> int:
    from vqtok._io import atomic_write
    from vqtok._progress import Progress
    from vqtok.images import load_image
    from vqtok.pipeline._naming import model_fingerprint
    from vqtok.tokens import ids_dtype_for

    tok = tokenizer_from_args(args)
    check_image_size(tok, args.size)
    out = Path(args.out)
    if out.suffix != ".npy":  # numpy.save's rule, kept: ``--out ids`` writes ids.npy
        out = out.with_name(out.name + ".npy")
    # Chunks of images are loaded, encoded and dropped: memory holds one chunk of pixels, whatever
    # the number of files (the ids of all images, 2 KiB each at 32x32, are kept for the one .npy).
    chunk = max(_CHUNK, tok.batch_size)
    parts: list[np.ndarray] = []
    with Progress("encode", total=len(args.images), unit="img", enabled=not args.no_progress) as bar:
        for start in range(0, len(args.images), chunk):
            paths = args.images[start : start + chunk]
            ids = tok.encode([load_image(p) for p in paths], size=args.size).numpy()  # (b, h, w)
            if parts and ids.shape[1:] != parts[0].shape[1:]:
                raise ValueError(
                    f"{paths[0]} gives a {ids.shape[1]}x{ids.shape[2]} token grid, the images before it "
                    f"{parts[0].shape[1]}x{parts[0].shape[2]}; pass --size S to resize them all to SxS"
                )
            parts.append(ids.astype(ids_dtype_for(tok.codebook_size)))  # as in token shards
            bar.update(len(paths))
    ids = np.concatenate(parts)  # (B, h, w)
    record = {
        "vqtok_ids": IDS_RECORD_VERSION,
        "names": [str(p) for p in args.images],  # row i of the .npy is the ids of names[i]
        "shape": list(ids.shape),
        "size": args.size,
        "model": model_id(args.model),  # "default@v1" for the built-in tokenizer: which default made the ids
        "model_fingerprint": model_fingerprint(tok),
        "config_hash": tok.config.hash(),
        "codebook_size": tok.codebook_size,
    }
    with atomic_write(ids_record_path(out)) as tmp_record:  # the record lands after the ids it describes
        tmp_record.write_text(json.dumps(record, indent=1) + "\n")
        with atomic_write(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, ids)
    print(f"encoded {ids.shape[0]} image(s) to {tuple(ids.shape[1:])} token grids -> {out} (+ {ids_record_path(out).name})")
    return 0


def parse_grid(text: str) -> tuple[int, int]:
    """argparse type of ``--grid``: ``HxW`` or ``N`` (N x N)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW or N, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW or N with positive sides, got {text!r}")
    return values[0], values[1]


def _output_names(record_path: Path, count: int) -> list[str]:
    """``<stem>.png`` per row, after the input names of ``record_path`` when it describes ``count``
    rows; numbered ``000000.png ...`` otherwise. Repeated stems get ``-<row>``."""
    names: list[str] | None = None
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            given = record.get("names") if isinstance(record, dict) else None
            if isinstance(given, list) and len(given) == count and all(isinstance(n, str) for n in given):
                names = given
            else:
                logger.warning("%s does not describe these %d rows of ids; numbering the images", record_path, count)
        except (OSError, ValueError) as err:
            logger.warning("ignoring %s: %s", record_path, err)
    if names is None:
        return [f"{i:06d}.png" for i in range(count)]
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        stem = Path(name).stem or f"{i:06d}"
        file = f"{stem}.png" if stem not in seen else f"{stem}-{i:06d}.png"
        seen.add(stem)
        out.append(file)
    return out


def _decode(args: argparse.Namespace) -> int:
    from vqtok._progress import Progress

    tok = tokenizer_from_args(args)
    path = Path(args.ids)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError(f"{path} is not a .npy file of token ids (write one with `vqtok encode` or numpy.save)")
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{path} holds pickled Python objects, not an integer array of token ids") from None
        raise ValueError(f"{path} is not a readable .npy file of token ids ({err})") from None
    try:  # (B, h, w): shape, dtype and range checked before any write
        ids = tok.check_ids(ids, grid=args.grid).numpy()
    except ValueError as err:
        raise ValueError(str(err).replace("grid=(h, w)", "--grid HxW")) from None
    names = _output_names(ids_record_path(path), len(ids))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(_CHUNK, tok.batch_size)
    with Progress("decode", total=len(ids), unit="img", enabled=not args.no_progress) as bar:
        for start in range(0, len(ids), chunk):  # decode, write and drop one chunk of images at a time
            for i, img in enumerate(tok.decode(ids[start : start + chunk], output="pil"), start):
                img.save(out / names[i])
            bar.update(min(chunk, len(ids) - start))
    f = tok.downsample_factor
    print(f"decoded {len(ids)} image(s) of {ids.shape[2] * f}x{ids.shape[1] * f} -> {out}/")
    return 0


def _info(args: argparse.Namespace) -> int:
    tok = tokenizer_from_args(args)
    n_params = sum(p.numel() for p in tok.model.parameters())
    info = {
        "model": model_id(args.model),
        "codebook_size": tok.codebook_size,
        "downsample_factor": tok.downsample_factor,
        "embed_dim": tok.embed_dim,
        "parameters": n_params,
        "config_hash": tok.config.hash(),
        "config": tok.config.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"model:             {info['model']}")
        print(f"codebook size:     {tok.codebook_size}")
        print(f"downsample factor: {tok.downsample_factor} (256x256 -> {tok.grid_shape(256)} tokens)")
        print(f"code dimension:    {tok.embed_dim}")
        print(f"parameters:        {n_params:,} ({n_params / 1e6:.1f} M)")
        print(f"config hash:       {info['config_hash']}")
        for k, v in tok.config.to_dict().items():
            print(f"  {k}: {v}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="images -> token ids (.npy) + their names (.json)")
    p.add_argument("images", nargs="+", help="image files")
    add_out_argument(p, "output .npy file: (B, h, w) ids, uint16 or int32; OUT.json beside it names the input of each row")
    p.add_argument("--size", type=int, default=None,
                   help="resize shorter side to S and center-crop SxS (a multiple of the downsample factor)")
    add_model_arguments(p)
    add_progress_argument(p)
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="token ids (.npy) -> PNG images")
    p.add_argument("ids", help=".npy file of (h, w) or (B, h, w) integer ids, or flat (B, h*w) ids (see --grid)")
    add_out_argument(p, "output folder: <input name>.png per row when IDS.json (from vqtok encode) is beside IDS, "
                        "else 000000.png, 000001.png, ...")
    p.add_argument("--grid", type=parse_grid, default=None, metavar="HxW",
                   help="token grid of flat ids, HxW or N for NxN (default: square grids inferred)")
    add_model_arguments(p)
    add_progress_argument(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("info", help="architecture, codebook size, parameter count of a model")
    p.add_argument("model", nargs="?", default=None,
                   help="model folder or Hub repo id, 'default' or 'default@v1' (default: the built-in one)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info, device="cpu", precision="fp32", batch_size=1)
