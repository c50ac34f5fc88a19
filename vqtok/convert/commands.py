"""``vqtok convert`` (taming, llamagen, magvit2, ibq, dalle-mini, cosmos, diffusers and every registered
family's formats -> a vqtok model folder) and ``vqtok export`` (diffusers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vqtok.commands import add_out_argument, tokenizer_from_args

if TYPE_CHECKING:
    from vqtok.tokenizer import Tokenizer

__all__ = ["add_commands"]


def _save_converted(args: argparse.Namespace, tok: Tokenizer, source: str) -> int:
    """Write a converted tokenizer to ``args.out`` and say what was converted from ``source``."""
    out = tok.save_pretrained(args.out)
    print(f"converted {source} ({tok.codebook_size} codes, f{tok.downsample_factor}) -> {out}")
    return 0


def _convert_taming(args: argparse.Namespace) -> int:
    from vqtok.convert.taming import from_taming

    return _save_converted(args, from_taming(args.ckpt, config=args.config), args.ckpt)


def _convert_llamagen(args: argparse.Namespace) -> int:
    from vqtok.convert.llamagen import from_llamagen

    weights = "ema" if args.ema else "model"
    return _save_converted(args, from_llamagen(args.ckpt, ema=args.ema), f"{args.ckpt} ({weights} weights)")


def _convert_magvit2(args: argparse.Namespace) -> int:
    from vqtok.convert.magvit2 import from_magvit2

    tok = from_magvit2(args.ckpt, ema=args.ema, resolution=args.resolution)
    return _save_converted(args, tok, f"Open-MAGVIT2 {args.ckpt}")


def _convert_cosmos(args: argparse.Namespace) -> int:
    from vqtok.convert.cosmos import from_cosmos

    tok = from_cosmos(args.encoder, args.decoder, resolution=args.resolution, attn_resolutions=args.attn_resolutions)
    return _save_converted(args, tok, f"Cosmos {args.encoder} + {args.decoder}")


def _convert_ibq(args: argparse.Namespace) -> int:
    from vqtok.convert.ibq import from_ibq

    return _save_converted(args, from_ibq(args.ckpt, ema=args.ema, resolution=args.resolution), f"IBQ {args.ckpt}")


def _convert_dalle_mini(args: argparse.Namespace) -> int:
    from vqtok.convert.dalle_mini import from_dalle_mini

    tok = from_dalle_mini(args.source, revision=args.revision)
    return _save_converted(args, tok, f"Flax VQGAN {args.source}")


def _convert_diffusers(args: argparse.Namespace) -> int:
    from vqtok.convert.diffusers import from_diffusers

    tok = from_diffusers(args.source, subfolder=args.subfolder, revision=args.revision)
    return _save_converted(args, tok, f"diffusers VQModel {args.source}")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None


def _format_paths(fmt: Any, source: str) -> list[Path]:
    """The local files a registered format converts: a file as given, or what its recogniser claims in a folder."""
    src = Path(source)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{source} is neither a file nor a folder (Hub repos: Tokenizer.from_pretrained / vqtok encode --model)")
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    claimed = fmt.recognise(names, lambda p: _read_json(src / p)) if fmt.recognise else None
    if not claimed:
        raise ValueError(f"{source} holds no {fmt.name} checkpoint ({fmt.help}); files: {', '.join(names[:12]) or 'none'}")
    return [src / f for f in claimed]


def _convert_registered(args: argparse.Namespace) -> int:
    from vqtok.convert.auto import convert_format

    fam, fmt = args.registered
    options = {dest: getattr(args, dest) for dest in args.format_options}
    tok = convert_format(fam, fmt, _format_paths(fmt, args.source), source=args.source, **options)
    out = tok.save_pretrained(args.out)
    print(f"converted {args.source} ({fam.name}: {tok.layout().describe()}) -> {out}")
    return 0


def _add_registered_formats(families: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """One ``vqtok convert NAME SOURCE --out DIR`` per format of a registered family."""
    from vqtok.models import registry

    for fam, fmt in registry.source_formats():
        t = families.add_parser(fmt.name, help=fmt.help)
        t.add_argument("source", metavar=fmt.sources, help=f"{fmt.help}: the file, or a folder holding it")
        before = {a.dest for a in t._actions}
        if fmt.add_arguments is not None:
            fmt.add_arguments(t)
        options = [a.dest for a in t._actions if a.dest not in before]
        add_out_argument(t, "output model folder")
        t.set_defaults(func=_convert_registered, registered=(fam, fmt), format_options=options)


def _export_diffusers(args: argparse.Namespace) -> int:
    from vqtok.convert.diffusers import to_diffusers

    tok = tokenizer_from_args(args)
    out = to_diffusers(tok, args.out)
    print(f"exported {args.model or 'default'} as a diffusers VQModel -> {out} (load with diffusers.VQModel.from_pretrained)")
    return 0


def _add_lightning_family(
    families: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    code_base: str,
    example: str,
    func: Callable[[argparse.Namespace], int],
    *,
    resolution_help: str,
) -> None:
    """``vqtok convert NAME ckpt [--ema/--no-ema] [--resolution N]`` for a SEED-Voken-style Lightning checkpoint."""
    t = families.add_parser(name, help=f"{code_base} Lightning .ckpt ({example}, ...)")
    t.add_argument("ckpt", help="Lightning .ckpt with the weights under 'state_dict'")
    t.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help=f"take the model_ema.* weights (default: when present, as {code_base}'s own scripts do)")
    t.add_argument("--resolution", type=int, default=256, help=resolution_help)
    add_out_argument(t, "output model folder")
    t.set_defaults(func=func)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("convert", help="import a checkpoint of another code base")
    families = p.add_subparsers(dest="family", metavar="FAMILY")
    families.required = True
    t = families.add_parser("taming", help="taming-transformers VQModel .ckpt")
    t.add_argument("ckpt", help="Lightning .ckpt (or torch.save state dict)")
    t.add_argument("--config", default=None, help="taming model YAML (default: infer from the weights)")
    add_out_argument(t, "output model folder")
    t.set_defaults(func=_convert_taming)
    t = families.add_parser("llamagen", help="LlamaGen VQ tokenizer .pt (vq_ds16_c2i.pt, vq_ds8_c2i.pt, ...)")
    t.add_argument("ckpt", help="LlamaGen torch.save checkpoint ({'model': ..., 'args': ...} or a state dict)")
    t.add_argument("--ema", action="store_true", help="take the 'ema' weights instead of 'model'")
    add_out_argument(t, "output model folder")
    t.set_defaults(func=_convert_llamagen)
    _add_lightning_family(families, "magvit2", "Open-MAGVIT2", "imagenet_256_L.ckpt", _convert_magvit2,
                          resolution_help="training resolution recorded in the config")
    t = families.add_parser("cosmos", help="NVIDIA Cosmos DI8x8 / DI16x16 encoder.jit + decoder.jit (tensors read, code not run)")
    t.add_argument("encoder", help="encoder.jit (TorchScript archive: encoder, quant_conv, quantizer)")
    t.add_argument("decoder", help="decoder.jit (TorchScript archive: inv_quant, post_quant_conv, decoder)")
    t.add_argument("--resolution", type=int, default=1024, help="Cosmos config 'resolution' (places attention; published: 1024)")
    t.add_argument("--attn-resolutions", type=int, nargs="*", default=[32],
                   help="Cosmos config 'attn_resolutions' (published: 32, i.e. attention in the mid blocks only)")
    add_out_argument(t, "output model folder")
    t.set_defaults(func=_convert_cosmos)
    _add_lightning_family(families, "ibq", "IBQ", "imagenet256_262144.ckpt", _convert_ibq,
                          resolution_help="training resolution (names the attention levels)")
    t = families.add_parser("dalle-mini", help="dalle-mini / vqgan-jax Flax VQGAN (flax_model.msgpack + config.json)")
    t.add_argument("source", nargs="?", default="dalle-mini/vqgan_imagenet_f16_16384",
                   help="folder, .msgpack file or Hub repo id (default: dalle-mini/vqgan_imagenet_f16_16384)")
    t.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    add_out_argument(t, "output model folder")
    t.set_defaults(func=_convert_dalle_mini)
    t = families.add_parser("diffusers", help="diffusers VQModel folder or Hub repo")
    t.add_argument("source", help="folder with config.json + diffusion_pytorch_model.safetensors, or a Hub repo id")
    t.add_argument("--subfolder", default=None, help="subfolder of a pipeline repo holding the VQModel, e.g. vqvae")
    t.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    add_out_argument(t, "output model folder")
    t.set_defaults(func=_convert_diffusers)
    _add_registered_formats(families)

    p = sub.add_parser("export", help="write a model in another library's format")
    targets = p.add_subparsers(dest="target", metavar="FORMAT")
    targets.required = True
    t = targets.add_parser("diffusers", help="diffusers VQModel folder (VQModel.from_pretrained)")
    t.add_argument("model", nargs="?", default=None,
                   help="vqtok model folder or Hub repo id (default: the built-in tokenizer, whose cosine codes "
                        "diffusers cannot reproduce: refused with the reason)")
    add_out_argument(t, "output folder")
    t.set_defaults(func=_export_diffusers, device="cpu", precision="fp32", batch_size=1)
