"""WatchLoadStatus: a snapshot at once, then one whenever it changed, checked every interval.

Each stream rebuilds the snapshot once per interval and compares it (without its
timestamp) with the last one it sent, so a quiet service sends nothing and a busy
one sends at most one snapshot per interval. The number of open streams is capped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from loadwarden.v1 import common_pb2 as _common

from . import _convert as convert
from ._core import DecisionCore
from ._errors import InvalidArgument, ResourceExhausted

MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 60_000
DEFAULT_INTERVAL_MS = 1_000


def check_interval_ms(interval_ms: int) -> float:
    """The interval in seconds; 0 means the default. InvalidArgument outside 100-60,000 ms."""
    if interval_ms == 0:
        return DEFAULT_INTERVAL_MS / 1000.0
    if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
        raise InvalidArgument("interval_ms", f"must be 0 or {MIN_INTERVAL_MS}-{MAX_INTERVAL_MS}, got {interval_ms}")
    return interval_ms / 1000.0


def _content(status: _common.LoadStatus) -> bytes:
    stamp = _common.LoadStatus()
    stamp.CopyFrom(status)
    stamp.ClearField("generated_at")
    return stamp.SerializeToString(deterministic=True)


class Watchers:
    """Counts open streams against ``max_streams``."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.open = 0

    async def stream(self, core: DecisionCore, pool: str, interval_s: float) -> AsyncIterator[_common.LoadStatus]:
        """Snapshots of ``pool`` (all pools when empty) until the caller stops reading.

        Raises:
            ResourceExhausted: ``max_streams`` streams are open already.
            NotFound: the pool does not exist (or stops existing).
        """
        if self.open >= self.max_streams:
            raise ResourceExhausted.cap_reached(
                "max_watch_streams", "limits.max_watch_streams", self.max_streams,
                f"{self.open} WatchLoadStatus streams are open",
                retry_after_s=interval_s,
            )
        self.open += 1
        try:
            last = b""
            while True:
                status = convert.load_status(core, pool)
                content = _content(status)
                if content != last:
                    last = content
                    yield status
                await asyncio.sleep(interval_s)
        finally:
            self.open -= 1
