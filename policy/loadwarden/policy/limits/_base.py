"""The admission-limit interface: how many slots a pool grants at once.

A limit algorithm sees one sample per finished unit of work (released or
reclaimed lease) and answers the current limit; ``start_from`` moves an adaptive
one to a given level, from which it goes on adapting. Algorithms are pure: time
comes in with each sample, so tests feed samples and assert the limit.
"""

from __future__ import annotations

from typing import ClassVar, Protocol


class LimitAlgorithm(Protocol):
    """Answers the current concurrency limit and adapts it from samples."""

    name: ClassVar[str]
    adaptive: ClassVar[bool]  # False: the limit never moves (``fixed``)

    @property
    def limit(self) -> int:
        """Slots the pool may grant at once, >= 1 (the fixed algorithm with no cap answers 0: unlimited)."""
        ...

    def on_sample(self, now: float, rtt_ms: float, in_flight: int, dropped: bool) -> None:
        """Learns from one finished unit of work.

        Args:
            now: Monotonic seconds when the work finished.
            rtt_ms: How long the work held its slot (or the latency it reported), milliseconds.
            in_flight: Slots in use when the work finished, including this one.
            dropped: True when the work failed, or its lease expired unreleased.
        """
        ...

    def start_from(self, limit: int) -> None:
        """Moves the limit to ``limit``, clamped into the algorithm's bounds, and adapts from
        there (the capacity planner starts a forecast surge where the last one settled).
        ``fixed`` ignores it: its limit never moves."""
        ...


def clamp(value: float, low: int, high: int) -> int:
    """``value`` rounded down and clamped into ``[low, high]``."""
    return max(low, min(high, int(value)))
