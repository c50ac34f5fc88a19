"""One stable, one-line text for an exception, as recorded in stats files and reports.

Reports must be reproducible byte for byte: two runs over the same bad sample write the same reason.
Python and PIL messages can hold object reprs with memory addresses (``<_io.BytesIO object at
0x7fc4409a7c40>``) and temporary file names; :func:`reason` replaces those and keeps the first line.
:func:`listing` names the first few of many items in an error; :func:`is_int` is the int check of those errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["is_int", "listing", "reason"]

_OBJECT_REPR = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
_TEMP_NAME = re.compile(r"(\.tmp-|\.old-)[\w.-]+")


def reason(err: BaseException, *, subject: str | None = None) -> str:
    """``"TypeName: message"`` with object addresses and temporary-name suffixes removed, one line.

    ``subject`` replaces the ``<bytes>`` placeholder of :func:`vqtok.images.load_image` (e.g. ``"jpg field"``).
    """
    text = str(err).strip()
    text = text.splitlines()[0] if text else ""
    text = _OBJECT_REPR.sub(lambda m: f"<{m.group(1).rsplit('.', 1)[-1]}>", text)
    text = _ADDRESS.sub("0x…", text)
    text = _TEMP_NAME.sub("", text)
    if subject is not None:
        text = text.replace("<bytes>", subject)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def is_int(value: object, minimum: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool, which JSON and Python also accept as one), at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def listing(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``items``, comma-separated, then ``" (+k more)"`` for the ``k`` left out."""
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
