"""fixed: the pool's ``max_concurrency`` as the limit, forever; 0 means unlimited."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FixedParams:
    """``fixed`` takes no parameters; the limit is the pool's ``max_concurrency``."""


class FixedLimit:
    """Answers the initial limit and ignores every sample (Netflix ``FixedLimit``)."""

    name = "fixed"
    Params = FixedParams
    # Samples never move the limit, so 0 (unlimited) is a valid initial limit.
    adaptive = False

    def __init__(self, params: FixedParams, initial_limit: int) -> None:
        self._limit = initial_limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, now: float, rtt_ms: float, in_flight: int, dropped: bool) -> None:
        return None

    def start_from(self, limit: int) -> None:
        return None
