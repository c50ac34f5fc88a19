"""The ``vqtok`` command line. It owns stdout; the library only logs.

Each subsystem contributes its subcommands through a module with
``add_commands(subparsers) -> None``; every subparser sets ``func=handler`` where
``handler(args: argparse.Namespace) -> int`` returns the exit code. Expected failures
(bad input, missing files, an unusable ``--device``) raise one of :data:`EXPECTED_ERRORS`
(``ValueError``, ``TypeError``, ``FileNotFoundError``, ...) and are printed as one line on
stderr with exit code 2 (no traceback). Library messages do not name command-line flags; a
handler that wants a flag in the message catches and rewords (e.g. ``pretokenize``'s
``--max-error-rate``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from vqtok import __version__

# Modules that register subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "vqtok.commands",
    "vqtok.convert.commands",
    "vqtok.pipeline.commands",
    "vqtok.metrics.commands",
    "vqtok.training.commands",
    "vqtok.prior.commands",
)

EXPECTED_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqtok", description="Images to discrete tokens and back (VQGAN).")
    parser.add_argument("--version", action="version", version=f"vqtok {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"vqtok {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqtok: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
