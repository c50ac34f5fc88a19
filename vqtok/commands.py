"""Core subcommands (``encode``, ``decode``, ``info``) and the options every command family shares.

Shared options: :func:`add_model_arguments` (``--model/--device/--precision/--batch-size``),
:func:`add_device_argument` (``--device``, default ``auto``; checked by :func:`device_from_args`)
and :func:`add_out_argument` (``--out``/``-o``; ``--output`` is a hidden alias).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from vqtok.tokenizer import Tokenizer

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
    "device_from_args",
    "ids_dtype",
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


def add_out_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str, *, required: bool = True, default: str | None = None
) -> None:
    """``--out``/``-o`` (the one spelling of every command's output; ``--output`` still works, unlisted)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--out", "-o", dest="out", default=default, metavar="OUT", help=help)
    group.add_argument("--output", dest="out", default=default, help=argparse.SUPPRESS)


def add_model_arguments(p: argparse.ArgumentParser, *, batch_size: int = 32) -> None:
    """--model / --device / --precision / --batch-size, shared by every command that runs a tokenizer."""
    p.add_argument("--model", "-m", default=None, help="model folder or Hub repo id (default: the built-in tokenizer)")
    add_device_argument(p)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="fp32 is exact (default)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"images per forward pass (default: {batch_size})")


def tokenizer_from_args(args: argparse.Namespace) -> Tokenizer:
    return Tokenizer.load(args.model, device=device_from_args(args), precision=args.precision, batch_size=args.batch_size)


def ids_dtype(codebook_size: int) -> np.dtype:
    """Smallest storage dtype for ids: uint16 up to 65536 codes, else int32."""
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int32)


def _encode(args: argparse.Namespace) -> int:
    from vqtok.images import load_image

    tok = tokenizer_from_args(args)
    out = Path(args.out)
    # Chunks of images are loaded, encoded and dropped: memory holds one chunk of pixels, whatever
    # the number of files (the ids of all images, 2 KiB each at 32x32, are kept for the one .npy).
    chunk = max(_CHUNK, tok.batch_size)
    parts: list[np.ndarray] = []
    for start in range(0, len(args.images), chunk):
        paths = args.images[start : start + chunk]
        ids = tok.encode([load_image(p) for p in paths], size=args.size).numpy()  # (b, h, w)
        if parts and ids.shape[1:] != parts[0].shape[1:]:
            raise ValueError(
                f"{paths[0]} gives a {ids.shape[1]}x{ids.shape[2]} token grid, the images before it "
                f"{parts[0].shape[1]}x{parts[0].shape[2]}; pass --size S to resize them all to SxS"
            )
        parts.append(ids.astype(ids_dtype(tok.codebook_size)))
    ids = np.concatenate(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, ids)
    print(f"encoded {ids.shape[0]} image(s) to {tuple(ids.shape[1:])} token grids -> {out}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    tok = tokenizer_from_args(args)
    path = Path(args.ids)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path} is not a numpy .npy file of ids: {err}") from err
    tok._check_ids(ids, None)  # shape, dtype and range of every id, before anything is written
    if ids.ndim == 2:
        ids = ids[None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(_CHUNK, tok.batch_size)
    for start in range(0, len(ids), chunk):  # decode, write and drop one chunk of images at a time
        for i, img in enumerate(tok.decode(ids[start : start + chunk], output="pil"), start):
            img.save(out / f"{i:06d}.png")
    f = tok.downsample_factor
    print(f"decoded {len(ids)} image(s) of {ids.shape[2] * f}x{ids.shape[1] * f} -> {out}/")
    return 0


def _info(args: argparse.Namespace) -> int:
    tok = tokenizer_from_args(args)
    n_params = sum(p.numel() for p in tok.model.parameters())
    info = {
        "model": args.model or "default",
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
    p = sub.add_parser("encode", help="images -> token ids (.npy)")
    p.add_argument("images", nargs="+", help="image files")
    add_out_argument(p, "output .npy file: (B, h, w) ids, uint16 or int32")
    p.add_argument("--size", type=int, default=None, help="resize shorter side to S and center-crop SxS")
    add_model_arguments(p)
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="token ids (.npy) -> PNG images")
    p.add_argument("ids", help=".npy file of (h, w) or (B, h, w) integer ids")
    add_out_argument(p, "output folder for 000000.png, 000001.png, ...")
    add_model_arguments(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("info", help="architecture, codebook size, parameter count of a model")
    p.add_argument("model", nargs="?", default=None, help="model folder or Hub repo id (default: built-in)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info, device="cpu", precision="fp32", batch_size=1)
