"""Core subcommands: ``encode``, ``decode``, ``info``, ``convert`` (taming, llamagen, diffusers), ``export`` (diffusers)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_CHUNK = 64  # images per load/encode (or decode/save) round in the encode/decode commands

__all__ = ["add_commands", "add_model_arguments", "tokenizer_from_args", "ids_dtype"]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model / --device / --precision / --batch-size, shared by every command that runs a tokenizer."""
    p.add_argument("--model", "-m", default=None, help="model folder or Hub repo id (default: the built-in tokenizer)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="fp32 is exact (default)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")


def tokenizer_from_args(args: argparse.Namespace) -> Tokenizer:
    return Tokenizer.load(args.model, device=args.device, precision=args.precision, batch_size=args.batch_size)


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


def _convert_taming(args: argparse.Namespace) -> int:
    from vqtok.convert.taming import from_taming

    tok = from_taming(args.ckpt, config=args.config)
    out = tok.save_pretrained(args.out)
    print(f"converted {args.ckpt} ({tok.codebook_size} codes, f{tok.downsample_factor}) -> {out}")
    return 0


def _convert_llamagen(args: argparse.Namespace) -> int:
    from vqtok.convert.llamagen import from_llamagen

    tok = from_llamagen(args.ckpt, ema=args.ema)
    out = tok.save_pretrained(args.out)
    print(f"converted {args.ckpt} ({'ema' if args.ema else 'model'} weights, {tok.codebook_size} codes, f{tok.downsample_factor}) -> {out}")
    return 0


def _convert_diffusers(args: argparse.Namespace) -> int:
    from vqtok.convert.diffusers import from_diffusers

    tok = from_diffusers(args.source, subfolder=args.subfolder, revision=args.revision)
    out = tok.save_pretrained(args.out)
    print(f"converted diffusers VQModel {args.source} ({tok.codebook_size} codes, f{tok.downsample_factor}) -> {out}")
    return 0


def _export_diffusers(args: argparse.Namespace) -> int:
    from vqtok.convert.diffusers import to_diffusers

    tok = tokenizer_from_args(args)
    out = to_diffusers(tok, args.out)
    print(f"exported {args.model or 'default'} as a diffusers VQModel -> {out} (load with diffusers.VQModel.from_pretrained)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="images -> token ids (.npy)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", "-o", required=True, help="output .npy file: (B, h, w) ids, uint16 or int32")
    p.add_argument("--size", type=int, default=None, help="resize shorter side to S and center-crop SxS")
    add_model_arguments(p)
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="token ids (.npy) -> PNG images")
    p.add_argument("ids", help=".npy file of (h, w) or (B, h, w) integer ids")
    p.add_argument("--out", "-o", required=True, help="output folder for 000000.png, 000001.png, ...")
    add_model_arguments(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("info", help="architecture, codebook size, parameter count of a model")
    p.add_argument("model", nargs="?", default=None, help="model folder or Hub repo id (default: built-in)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info, device="cpu", precision="fp32", batch_size=1)

    p = sub.add_parser("convert", help="import a checkpoint of another code base")
    families = p.add_subparsers(dest="family", metavar="FAMILY")
    families.required = True
    t = families.add_parser("taming", help="taming-transformers VQModel .ckpt")
    t.add_argument("ckpt", help="Lightning .ckpt (or torch.save state dict)")
    t.add_argument("--config", default=None, help="taming model YAML (default: infer from the weights)")
    t.add_argument("--out", "-o", required=True, help="output model folder")
    t.set_defaults(func=_convert_taming)
    t = families.add_parser("llamagen", help="LlamaGen VQ tokenizer .pt (vq_ds16_c2i.pt, vq_ds8_c2i.pt, ...)")
    t.add_argument("ckpt", help="LlamaGen torch.save checkpoint ({'model': ..., 'args': ...} or a state dict)")
    t.add_argument("--ema", action="store_true", help="take the 'ema' weights instead of 'model'")
    t.add_argument("--out", "-o", required=True, help="output model folder")
    t.set_defaults(func=_convert_llamagen)
    t = families.add_parser("diffusers", help="diffusers VQModel folder or Hub repo")
    t.add_argument("source", help="folder with config.json + diffusion_pytorch_model.safetensors, or a Hub repo id")
    t.add_argument("--subfolder", default=None, help="subfolder of a pipeline repo holding the VQModel, e.g. vqvae")
    t.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    t.add_argument("--out", "-o", required=True, help="output model folder")
    t.set_defaults(func=_convert_diffusers)

    p = sub.add_parser("export", help="write a model in another library's format")
    targets = p.add_subparsers(dest="target", metavar="FORMAT")
    targets.required = True
    t = targets.add_parser("diffusers", help="diffusers VQModel folder (VQModel.from_pretrained)")
    t.add_argument("model", help="vqtok model folder or Hub repo id")
    t.add_argument("--out", "-o", required=True, help="output folder")
    t.set_defaults(func=_export_diffusers, device="cpu", precision="fp32", batch_size=1)
