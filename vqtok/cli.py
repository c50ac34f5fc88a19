"""The ``vqtok`` command line. It owns stdout; the library only logs.

Each subsystem contributes its subcommands through a module with
``add_commands(subparsers) -> None``; every subparser sets ``func=handler`` where
``handler(args: argparse.Namespace) -> int`` returns the exit code. Expected failures
(bad input, missing files, an unusable ``--device``) raise one of :data:`EXPECTED_ERRORS`
(``ValueError``, ``TypeError``, ``FileNotFoundError``, ...) and are printed as one line on
stderr with exit code 2 (no traceback); so are a full disk or quota, a read-only file system and an
I/O error (:data:`_SYSTEM_ERRNOS`). Library messages do not name command-line flags; a
handler that wants a flag in the message catches and rewords (e.g. ``pretokenize``'s
``--max-error-rate``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Sequence

from vqtok import __version__

# Modules that register subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = ("vqtok.commands", "vqtok.convert.commands", "vqtok.pipeline.commands",
                                    "vqtok.metrics.commands", "vqtok.training.commands", "vqtok.prior.commands")

EXPECTED_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError)


# OSErrors reported in one line: no space or quota left, a read-only file system, an I/O error.
_SYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqtok", description="Images to discrete tokens and back (VQGAN).")
    parser.add_argument("--version", action="version", version=f"vqtok {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm/Kubernetes preemption), raised like Ctrl-C so that every ``finally`` and
    :func:`vqtok._io.atomic_write` cleans up on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``vqtok ... | head``): point stdout at devnull so that Python's
    final flush does not print a second error, and exit like a process killed by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # Progress lines of long commands when stderr is not a terminal (vqtok._progress): shown without -v.
    logging.getLogger("vqtok.progress").setLevel(min(level, logging.INFO))
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() called from a thread): leave SIGTERM alone
        pass
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except EXPECTED_ERRORS as err:
        msg = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        model = getattr(args, "model", None)
        if isinstance(model, str) and msg.startswith(f"Hub repo {model!r}") and not os.path.exists(model):
            # a Hub repo missing from the cache: ``--model models/nope`` is more often a mistyped folder
            msg = f"no local folder {model} (in {os.getcwd()}), and {msg}"
        print(f"vqtok {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine's, not the input's: disk full, read-only or vanished file system
        if err.errno not in _SYSTEM_ERRNOS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        print(f"vqtok {args.command}: error: {os.strerror(err.errno)}{where}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"vqtok {args.command}: terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("vqtok: interrupted", file=sys.stderr)
        if threading.current_thread() is threading.main_thread():
            # the process is ending: a second Ctrl-C would only break the exit-time cleanup (atexit
            # handlers of torch and multiprocessing) with tracebacks
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
