"""``vqtok convert FORMAT`` (every registered family's source formats -> a vqtok model folder) and
``vqtok export`` (diffusers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqtok.commands import add_out_argument, tokenizer_from_args

__all__ = ["add_commands"]


def _convert(args: argparse.Namespace) -> int:
    from vqtok.convert.auto import UnrecognisedLayout, convert_files, locate

    fam, fmt = args.registered
    sources = [getattr(args, name) for name in fmt.sources]
    options = {dest: getattr(args, dest) for dest in args.format_options}
    if len(sources) > 1:  # several files, named one by one
        paths, source = [Path(s) for s in sources], " + ".join(sources)
    else:
        try:
            found = locate(sources[0], subfolder=args.subfolder, revision=args.revision, formats=[fmt.name])
        except UnrecognisedLayout as err:
            if not Path(sources[0]).is_dir():
                raise
            from vqtok.convert.safe_pickle import what_folder

            raise UnrecognisedLayout(f"{sources[0]} is a folder with no {fmt.name} checkpoint: {what_folder(Path(sources[0]))}") from err
        assert found is not None  # locate with formats= raises instead
        paths, source = list(found.paths), found.source
    _, tok = convert_files(fmt.name, paths, source=source, **options)
    out = tok.save_pretrained(args.out)
    layout = tok.layout()
    grid = f", f{tok.downsample_factor}" if layout.kind == "grid" else ""
    print(f"converted {source} ({fmt.name} -> {fam.name}: {layout.describe()}{grid}) -> {out}")
    return 0


def _add_formats(formats: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """One ``vqtok convert NAME SOURCE... --out DIR`` per source format of a registered family."""
    from vqtok.models import registry

    for fam, fmt in registry.source_formats():
        t = formats.add_parser(fmt.name, help=fmt.help)
        for name in fmt.sources:
            what = "file" if len(fmt.sources) > 1 else "file, folder or Hub repo id"
            t.add_argument(name, help=f"{fmt.help}: the {name} {what}")
        if len(fmt.sources) == 1:
            t.add_argument("--subfolder", default=None, help="subfolder of the folder or repo to convert (e.g. a pipeline's vqvae)")
            t.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
        before = {a.dest for a in t._actions}
        if fmt.add_arguments is not None:
            fmt.add_arguments(t)
        options = [a.dest for a in t._actions if a.dest not in before]
        add_out_argument(t, "output model folder")
        t.set_defaults(func=_convert, registered=(fam, fmt), format_options=options)


def _export_diffusers(args: argparse.Namespace) -> int:
    from vqtok.convert.diffusers import to_diffusers

    tok = tokenizer_from_args(args)
    out = to_diffusers(tok, args.out)
    print(f"exported {args.model or 'default'} as a diffusers VQModel -> {out} (load with diffusers.VQModel.from_pretrained)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("convert", help="import a checkpoint of another code base")
    formats = p.add_subparsers(dest="family", metavar="FORMAT")
    formats.required = True
    _add_formats(formats)

    p = sub.add_parser("export", help="write a model in another library's format")
    targets = p.add_subparsers(dest="target", metavar="FORMAT")
    targets.required = True
    t = targets.add_parser("diffusers", help="diffusers VQModel folder (VQModel.from_pretrained)")
    t.add_argument("model", nargs="?", default=None,
                   help="vqtok model folder or Hub repo id (default: the built-in tokenizer, whose cosine codes "
                        "diffusers cannot reproduce: refused with the reason)")
    add_out_argument(t, "output folder")
    t.set_defaults(func=_export_diffusers, device="cpu", precision="fp32", batch_size=1)
