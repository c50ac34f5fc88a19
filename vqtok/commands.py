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
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vqtok._memory import check_image_size
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
    "device_from_args",
    "number_in",
    "parse_grid",
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


def add_model_arguments(p: argparse.ArgumentParser, *, model_help: str | None = None, action: str | None = None,
                        batch_size: int = 32) -> None:
    """--model / --device / --precision / --batch-size, shared by every command that runs a tokenizer
    (``action="append"``: several --model, a list)."""
    p.add_argument("--model", "-m", action=action, default=None, help=model_help or "model folder or Hub repo id; 'default' is "
                   "the built-in tokenizer (newest version), 'default@v1' a pinned version (default: 'default')")
    add_device_argument(p)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="fp32 is exact (default)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"images per forward pass (default: {batch_size})")


def tokenizer_from_args(args: argparse.Namespace) -> Tokenizer:
    return Tokenizer.load(args.model, device=device_from_args(args), precision=args.precision, batch_size=args.batch_size)


IDS_RECORD_VERSION = 1  # "vqtok_ids" of the .json written beside an encode output


def ids_record_path(ids_path: str | os.PathLike[str]) -> Path:
    """``ids.npy`` -> ``ids.json``: the record of which input made which row (written by ``vqtok encode``)."""
    return Path(ids_path).with_suffix(".json")


def image_paths(specs: list[str]) -> list[str]:
    """Image files and folders (their images, recursively, sorted; hidden folders skipped) -> image paths,
    in order, without repeats. FileNotFoundError naming what does not exist or holds no image."""
    from vqtok._errors import listing
    from vqtok.images import IMAGE_SUFFIXES
    from vqtok.tars import _folder_files

    out: list[str] = []
    missing: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = _folder_files(p, IMAGE_SUFFIXES)
            if not found:
                missing.append(f"{spec} (folder without images: {', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif p.exists():
            out.append(spec)
        else:
            missing.append(spec)
    if missing:
        raise FileNotFoundError(f"{len(missing)} input(s) not found: {listing(missing, 3)}")
    return list(dict.fromkeys(out))


def ids_out_path(out: str) -> Path:
    """``--out`` of encode -> the .npy path: ``ids`` -> ``ids.npy`` (numpy.save's rule); a folder
    (existing, or written with a trailing slash) -> ``folder/ids.npy``."""
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        return path / "ids.npy"
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def _cli_reason(err: BaseException, path: str) -> str:
    """Why ``path`` failed, in one line: the message without the file name (said before it) and with the
    library's ``size`` advice in the CLI's terms."""
    from vqtok._errors import reason

    text = reason(err).replace("give a size to resize", "pass --size S to resize")
    return text.removeprefix("ValueError: ").removeprefix(f"{path} is ")


def _encode(args: argparse.Namespace) -> int:
    from vqtok._io import atomic_write
    from vqtok._progress import Progress
    from vqtok.images import prepare_image
    from vqtok.pipeline._naming import model_fingerprint
    from vqtok.tokens import ids_dtype_for

    device_from_args(args)  # an unusable --device first: it fails whatever the inputs
    paths = image_paths(args.images)
    tok = tokenizer_from_args(args)
    check_image_size(tok, args.size)
    out = ids_out_path(args.out)
    record_path = ids_record_path(out)
    # Chunks of images are prepared, encoded and dropped: memory holds one chunk of pixels, whatever
    # the number of files (the ids of all images, 2 KiB each at 32x32, are kept for the one .npy).
    # A file that cannot be read or prepared is skipped and reported (with --strict: nothing is written).
    chunk = max(_CHUNK, tok.batch_size)
    f = tok.downsample_factor
    parts: list[np.ndarray] = []
    names: list[str] = []
    failed: list[dict[str, str]] = []
    want: tuple[int, int] | None = None
    with Progress("encode", total=len(paths), unit="img", enabled=not args.no_progress) as bar:
        for start in range(0, len(paths), chunk):
            batch = paths[start : start + chunk]
            good: dict[str, np.ndarray] = {}  # path -> pixels (image_paths has no repeats)
            for path in batch:
                try:
                    # (H, W, 3) uint8, as Tokenizer.encode
                    pixels = prepare_image(path, size=args.size, factor=f, exif_transpose=args.exif_transpose)
                except (ValueError, OSError) as err:
                    failed.append({"name": path, "reason": _cli_reason(err, path)})
                    continue
                grid = (pixels.shape[0] // f, pixels.shape[1] // f)
                want = want or grid  # the first image's grid: one .npy holds one grid shape
                if grid != want:
                    failed.append({"name": path, "reason": f"a {grid[0]}x{grid[1]} token grid, the images before it "
                                   f"{want[0]}x{want[1]}; pass --size S to resize them all to SxS"})
                    continue
                good[path] = pixels
            if good:
                ids = tok.encode(np.stack(list(good.values()))).numpy()  # (b, h, w)
                parts.append(ids.astype(ids_dtype_for(tok.codebook_size)))  # as in token shards
                names += good
            bar.update(len(batch))
        stop = bool(failed) and (args.strict or not parts)  # nothing is written
        bar.close(log_summary=not stop)
    if len(failed) > 1 or (failed and not stop):
        for item in failed[:10]:
            print(f"vqtok encode: skipped {item['name']}: {item['reason']}", file=sys.stderr)
        if len(failed) > 10:
            where = "" if stop else f" (listed in {record_path.name})"
            print(f"vqtok encode: ... {len(failed) - 10} more skipped{where}", file=sys.stderr)
    if stop:
        first = failed[0]
        why = "--strict: nothing written" if parts else "nothing written"
        raise ValueError(f"{len(failed)} of {len(paths)} image(s) could not be encoded ({why}); first: "
                         f"{first['name']}: {first['reason']}")
    ids = np.concatenate(parts)  # (B, h, w)
    record = {
        "vqtok_ids": IDS_RECORD_VERSION,
        "names": names,  # row i of the .npy is the ids of names[i]
        "shape": list(ids.shape),
        "size": args.size,
        "model": model_id(args.model),  # "default@v3" for the built-in tokenizer: which default made the ids
        "model_fingerprint": model_fingerprint(tok),
        "config_hash": tok.config.hash(),
        "codebook_size": tok.codebook_size,
        "precision": tok.precision,
    }
    if args.exif_transpose:
        record["exif_transpose"] = True
    if failed:
        record["failed"] = failed  # inputs without a row: {"name", "reason"}
    with atomic_write(record_path) as tmp_record:  # the record lands after the ids it describes
        tmp_record.write_text(json.dumps(record, indent=1) + "\n")
        with atomic_write(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, ids)
    skipped = f"; {len(failed)} skipped (listed in {record_path.name})" if failed else ""
    print(f"encoded {ids.shape[0]} image(s) to {tuple(ids.shape[1:])} token grids -> {out} (+ {record_path.name}){skipped}")
    return 1 if failed else 0


class _GridError(argparse.ArgumentTypeError, ValueError):
    """A bad ``--grid``: argparse prints its message; a Python caller catches a ValueError."""


def parse_grid(text: str) -> tuple[int, int]:
    """argparse type of ``--grid``: ``HxW`` (also ``H,W`` or ``H×W``) or ``N`` (N x N)."""
    parts = text.lower().replace(",", "x").replace("×", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise _GridError(f"expected HxW or N, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise _GridError(f"expected HxW or N with positive sides, got {text!r}")
    return values[0], values[1]


_NAME_BYTES = 200  # longest output file stem (file systems allow 255 bytes per name)


def read_ids_record(record_path: Path) -> dict[str, Any] | None:
    """The ``ids.json`` written by ``vqtok encode`` beside its .npy, None when absent or unreadable (logged)."""
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        logger.warning("ignoring %s: %s", record_path, err)
        return None
    return record


def _output_names(record: dict[str, Any] | None, record_path: Path, count: int) -> list[str]:
    """``<stem>.png`` per row, after the input names of the ``record`` when it describes ``count``
    rows; numbered ``000000.png ...`` otherwise. Every name is distinct (a taken one gets ``-<row>``,
    then ``-<row>-<n>``) and stems are cut to 200 bytes."""
    given = record.get("names") if record is not None else None
    if not (isinstance(given, list) and len(given) == count and all(isinstance(n, str) for n in given)):
        if record is not None:
            logger.warning("%s does not describe these %d rows of ids; numbering the images", record_path, count)
        return [f"{i:06d}.png" for i in range(count)]
    out: list[str] = []
    taken: set[str] = set()
    for i, name in enumerate(given):
        stem = Path(name).stem.encode()[:_NAME_BYTES].decode(errors="ignore") or f"{i:06d}"
        file, n = f"{stem}.png", 0
        while file in taken:
            n += 1
            file = f"{stem}-{i:06d}.png" if n == 1 else f"{stem}-{i:06d}-{n}.png"
        taken.add(file)
        out.append(file)
    return out


def _decode_tokenizer(args: argparse.Namespace, record: dict[str, Any] | None, record_path: Path) -> Tokenizer:
    """The tokenizer that decodes: ``--model``, else the model recorded by ``vqtok encode``, else the default;
    a model other than the recorded one (by fingerprint, at any precision, by today's rule or 0.1's) is refused
    unless ``--force``."""
    from vqtok.pipeline._naming import all_fingerprints

    record = record or {}
    recorded, given = record.get("model"), args.model
    if args.model is None and isinstance(recorded, str):
        logger.info("decoding with %s, the model recorded in %s (--model chooses another)", recorded, record_path)
        args.model = recorded
        try:
            tok = tokenizer_from_args(args)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"{err} (the model recorded in {record_path}; --model chooses another)") from None
    else:
        tok = tokenizer_from_args(args)
    want = record.get("model_fingerprint")
    if isinstance(want, str) and want not in all_fingerprints(tok):
        msg = (f"{record_path} says these ids were made by {recorded!r} (fingerprint {want}); {model_id(args.model)!r} "
               "is another model, so the images would be garbage")
        if not args.force:
            raise ValueError(f"{msg}; {_decode_hint(record, given is None)}, or pass --force")
        logger.warning("%s (decoding anyway: --force)", msg)
    return tok


def _decode_hint(record: dict[str, Any], used_recorded: bool) -> str:
    """What to do about a fingerprint mismatch: the shipped default version that made the ids when one
    did (``default`` moves on), else leave out ``--model`` or name the model that made them."""
    from vqtok.pipeline.driver import _continue_hint

    hint = re.search(r"model='([^']*)'", _continue_hint(record))
    if hint is not None:
        return f"decode with --model {hint.group(1)}"
    return "pass --model with the model that made them" if used_recorded else "leave out --model to use the recorded one"


def _decode(args: argparse.Namespace) -> int:
    from vqtok._progress import Progress

    path = Path(args.ids)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    _check_npy_header(path)
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays are refused by _check_npy_header already
        raise ValueError(f"{path} is not a readable .npy file of token ids ({err})") from None
    record_path = ids_record_path(path)
    record = read_ids_record(record_path)
    tok = _decode_tokenizer(args, record, record_path)
    try:  # (B, h, w): shape, dtype and range checked before any write
        ids = tok.check_ids(ids, grid=args.grid).numpy()
    except ValueError as err:
        raise ValueError(str(err).replace("grid=(h, w)", "--grid HxW")) from None
    names = _output_names(record, record_path, len(ids))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(_CHUNK, tok.batch_size)
    with Progress("decode", total=len(ids), unit="img", enabled=not args.no_progress) as bar:
        for start in range(0, len(ids), chunk):  # decode, write and drop one chunk of images at a time
            for i, img in enumerate(tok.decode(ids[start : start + chunk], output="pil"), start):
                img.save(out / names[i])
            bar.update(min(chunk, len(ids) - start))
    print(f"decoded {len(ids)} image(s) of {img.width}x{img.height} -> {out}/")
    return 0


def _check_npy_header(path: Path) -> None:
    """Refuse a file that is not an .npy, or whose header claims more data than the file holds, before numpy
    allocates it."""
    from numpy.lib import format as npy

    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path} is not a .npy file of token ids (write one with `vqtok encode` or numpy.save)")
        fh.seek(0)
        try:
            version = npy.read_magic(fh)
            shape, _, dtype = npy.read_array_header_1_0(fh) if version == (1, 0) else npy.read_array_header_2_0(fh)
        except (ValueError, OSError, SyntaxError) as err:
            raise ValueError(f"{path} is not a readable .npy file of token ids ({err})") from None
        header_end = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{path} holds pickled Python objects, not an integer array of token ids")
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = path.stat().st_size - header_end
    if claimed != held:
        raise ValueError(f"{path}: its header claims a {dtype} array of shape {shape} ({claimed} bytes), the file holds {held}")


def _info(args: argparse.Namespace) -> int:
    tok = tokenizer_from_args(args)
    n_params = sum(p.numel() for p in tok.model.parameters())
    info = {"model": model_id(args.model), "model_type": tok.model_type, "layout": tok.layout().to_dict(),
            "codebook_size": tok.codebook_size, "downsample_factor": tok.downsample_factor, "parameters": n_params,
            "config_hash": tok.config.hash(), "config": tok.config.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"model:             {info['model']}")
        print(f"family:            {tok.model_type}")
        print(f"codebook size:     {tok.codebook_size}")
        try:
            print(f"tokens at 256:     {tok.layout(256).describe()}")
        except ValueError as err:  # a model that takes another size
            print(f"tokens:            {tok.layout().describe()} ({err})")
        print(f"downsample factor: {tok.downsample_factor}")
        print(f"parameters:        {n_params:,} ({n_params / 1e6:.1f} M)")
        print(f"config hash:       {info['config_hash']}")
        for k, v in info["config"].items():
            print(f"  {k}: {v}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="images -> token ids (.npy) + their names (.json)",
        description="Encode images into one .npy of token ids. A file that cannot be read or prepared is skipped "
                    "and reported (exit status 1; OUT.json lists it under 'failed'); --strict writes nothing then "
                    "(exit status 2).",
    )
    p.add_argument("images", nargs="+", help="image files or folders (their images, recursively)")
    add_out_argument(p, "output .npy file: (B, h, w) ids, uint16 or int32; OUT.json beside it names the input of "
                        "each row (a folder: FOLDER/ids.npy)")
    p.add_argument("--size", type=int, default=None,
                   help="resize shorter side to S and center-crop SxS (a multiple of the downsample factor)")
    p.add_argument("--strict", action="store_true", help="write nothing when any image fails (default: skip and report it)")
    p.add_argument("--exif-transpose", action="store_true",
                   help="turn images upright by their EXIF orientation first (default: ignored, as PIL and the models' "
                        "training pipelines do; recorded in OUT.json)")
    add_model_arguments(p)
    add_progress_argument(p)
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="token ids (.npy) -> PNG images")
    p.add_argument("ids", help=".npy file of (h, w) or (B, h, w) integer ids, or flat (B, h*w) ids (see --grid)")
    add_out_argument(p, "output folder: <input name>.png per row when IDS.json (from vqtok encode) is beside IDS, "
                        "else 000000.png, 000001.png, ...")
    p.add_argument("--grid", type=parse_grid, default=None, metavar="HxW",
                   help="token grid of flat ids, HxW or N for NxN (flat ids are never guessed: they need it)")
    add_model_arguments(p, model_help="model folder or Hub repo id (default: the model IDS.json records, else 'default')")
    p.add_argument("--force", action="store_true", help="decode with --model even when IDS.json records another model")
    add_progress_argument(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("info", help="architecture, codebook size, parameter count of a model")
    p.add_argument("model", nargs="?", default=None,
                   help="model folder or Hub repo id, 'default' or 'default@v1' (default: the built-in one)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info, device="cpu", precision="fp32", batch_size=1)
