"""The simulator's progress on stderr.

On a terminal it is a ``tqdm`` bar, redrawn at most ``1 / min_interval_s`` times a
second. Otherwise (a log file, a pipe, CI) it prints a plain line at the start, at
every quarter and at the end, so logs stay short: tqdm would write every redraw,
``\\r``-separated, into the file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Self, TextIO

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
        self._started = clock()
        self._next_step = 0  # next quarter at which a plain line is printed
        self._printed: int | None = None  # ``done`` at the last plain line
        self._closed = False
        self._bar: Any = None
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=label or None,
                file=self._stream,
                mininterval=min_interval_s,
                miniters=1,
                dynamic_ncols=True,
                leave=True,
            )
            # tqdm reads time through its instance's _time (how its own tests fake the clock):
            # the injected clock drives its redraws and rates, and reset() restarts from it.
            self._bar._time = clock  # noqa: SLF001 - tqdm has no public clock; its tests set this too
            self._bar.reset(total)
            return
        self._draw(force=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        """Marks ``n`` more units done (never beyond ``total``)."""
        if self._closed:
            return
        self._moved(min(self.total, self.done + n))

    def update(self, done: int) -> None:
        """Sets the units done to ``done`` (clamped to ``[0, total]``)."""
        if self._closed:
            return
        self._moved(max(0, min(self.total, done)))

    def set_label(self, label: str) -> None:
        """Changes the label shown (e.g. the strategy running now)."""
        self.label = label
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=False)  # shown at the next redraw
            return
        self._draw(force=False)

    def close(self) -> None:
        """Draws the final state and ends the line; later calls do nothing."""
        if self._closed:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._draw(force=True, final=True)
        self._closed = True

    def _moved(self, done: int) -> None:
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
            return
        self._draw(force=False)

    def line(self) -> str:
        """The text of the plain bar as it stands (what a log gets)."""
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
        step = PLAIN_STEPS if self.total == 0 else self.done * PLAIN_STEPS // self.total
        if (final and self._printed != self.done) or (not final and step >= self._next_step):
            self._next_step = step + 1
            self._printed = self.done
            self._stream.write(self.line() + "\n")
            self._stream.flush()
