"""The one progress rule of every long vqtok command (private).

* stderr is a terminal: a tqdm bar on stderr;
* stderr is not a terminal (a log file, a pipe, a batch job): one line through the ``vqtok.progress``
  logger every ``interval`` seconds (``$VQTOK_PROGRESS_INTERVAL``, default 30) and one at the end;
  the CLI shows that logger at INFO, so the lines land in the job's log without ``-v``;
* ``enabled=False`` (``--no-progress``, or a rank other than 0): nothing.

    with Progress("eval", total=n, unit="img", enabled=not args.no_progress) as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

logger = logging.getLogger("vqtok.progress")

__all__ = ["Progress", "progress_mode"]

DEFAULT_INTERVAL = 30.0  # seconds between two log lines when stderr is not a terminal


def progress_mode(enabled: bool, stream: IO[str] | None = None) -> str:
    """``"bar"`` (a terminal), ``"log"`` (anything else) or ``"off"`` (disabled)."""
    if not enabled:
        return "off"
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        tty = False
    return "bar" if tty else "log"


class Progress:
    """A counter shown by :func:`progress_mode`'s rule; ``total`` may be None or change (:meth:`set_total`)."""

    def __init__(
        self, desc: str, *, total: float | None = None, unit: str = "it", enabled: bool = True, initial: float = 0,
        stream: IO[str] | None = None,
    ) -> None:
        self.desc = desc
        self.unit = unit
        self.total = total
        self.n = initial
        self.postfix = ""
        self.mode = progress_mode(enabled, stream)
        try:
            self.interval = max(0.0, float(os.environ.get("VQTOK_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
        except ValueError:
            self.interval = DEFAULT_INTERVAL
        self._start = time.monotonic()
        self._initial = initial
        self._last = self._start
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr if stream is None else stream,
                dynamic_ncols=True, leave=False,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close(log_summary=kind is None)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                logger.info("%s", self.line())

    def set_total(self, total: float | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def line(self) -> str:
        """``desc: n/total unit (p%), rate unit/s, elapsed s[, postfix]``."""
        elapsed = time.monotonic() - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit}{pct}, {rate:.2f} {self.unit}/s, {elapsed:.0f} s{extra}"

    def close(self, *, log_summary: bool = True) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and log_summary:
            logger.info("%s (done)", self.line())
        self.mode = "off"
