"""A small progress bar on stderr, without dependencies.

On a terminal it redraws one line with ``\\r`` at most ``1 / min_interval_s``
times a second; otherwise (a log file, a pipe, CI) it prints a plain line at
the start, at every quarter and at the end, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Self, TextIO

BAR_WIDTH = 30
PLAIN_STEPS = 4  # plain lines at 0, 1/4, 2/4, 3/4 (and at close)


class Progress:
    """Progress of ``total`` units of work, drawn on ``stream``.

    Args:
        total: Units the work has (>= 0; 0 draws an empty bar).
        label: Shown before the bar, e.g. ``"round_robin"``.
        stream: Where to draw; stderr by default.
        clock: Monotonic seconds; injected by tests.
        tty: Whether ``stream`` is a terminal; asked from the stream when None.
        min_interval_s: Shortest time between two redraws on a terminal.

    Usage::

        with Progress(len(strategies), "simulate") as bar:
            for strategy in strategies:
                run(strategy)
                bar.advance()
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        min_interval_s: float = 0.1,
    ) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total: must be an integer >= 0, got {total!r}")
        self.total = total
        self.label = label
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)()) if tty is None else tty
        self._min_interval_s = min_interval_s
        self._started = clock()
        self._last_draw: float | None = None
        self._next_step = 0  # next quarter at which a plain line is printed
        self._printed: int | None = None  # ``done`` at the last plain line
        self._closed = False
        self._draw(force=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        """Marks ``n`` more units done (never beyond ``total``)."""
        if self._closed:
            return
        self.done = min(self.total, self.done + n)
        self._draw(force=False)

    def update(self, done: int) -> None:
        """Sets the units done to ``done`` (clamped to ``[0, total]``)."""
        if self._closed:
            return
        self.done = max(0, min(self.total, done))
        self._draw(force=False)

    def set_label(self, label: str) -> None:
        """Changes the label shown (e.g. the strategy running now)."""
        self.label = label
        self._draw(force=False)

    def close(self) -> None:
        """Draws the final state and ends the line; later calls do nothing."""
        if self._closed:
            return
        self._draw(force=True, final=True)
        self._closed = True

    def line(self) -> str:
        """The text of the bar as it stands."""
        fraction = self.done / self.total if self.total else 1.0
        filled = round(fraction * BAR_WIDTH)
        elapsed = self._clock() - self._started
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ~{elapsed * (self.total - self.done) / self.done:.0f}s left"
        label = f"{self.label} " if self.label else ""
        return (
            f"{label}[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} "
            f"{self.done}/{self.total} {elapsed:.1f}s{eta}"
        )

    def _draw(self, *, force: bool, final: bool = False) -> None:
        now = self._clock()
        if self._tty:
            if not force and self._last_draw is not None and now - self._last_draw < self._min_interval_s:
                return
            self._last_draw = now
            self._stream.write("\r" + self.line() + ("\n" if final else "\x1b[K"))
            self._stream.flush()
            return
        step = PLAIN_STEPS if self.total == 0 else self.done * PLAIN_STEPS // self.total
        if (final and self._printed != self.done) or (not final and step >= self._next_step):
            self._next_step = step + 1
            self._printed = self.done
            self._stream.write(self.line() + "\n")
            self._stream.flush()
