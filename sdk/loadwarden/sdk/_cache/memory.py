"""The in-process store's entries: least recently used goes first, each entry with its own TTL.

A `cachetools.TLRUCache` under a lock (it is not thread-safe by itself), on the clock
it is given, so tests expire entries by moving a fake clock. An expired entry is never
returned and is dropped before any live one is evicted for room.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cachetools import TLRUCache


def _expires_at(_key: str, entry: tuple[float, bytes], now: float) -> float:
    return now + entry[0]


class _Entries(TLRUCache[str, tuple[float, bytes]]):
    """Counts the entries evicted for room (cachetools evicts through `popitem` only)."""

    evictions = 0

    def popitem(self) -> tuple[str, tuple[float, bytes]]:
        item = super().popitem()
        self.evictions += 1
        return item


class LruTtl:
    """At most `max_entries` entries of bytes, each with a TTL; thread-safe.

    Args:
        max_entries: Entries kept at most, count, >= 1; the least recently used
            (read or written) is evicted to make room.
        clock: Monotonic clock, seconds.

    Raises:
        ValueError: `max_entries` is below 1; `clock` is not callable.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        if not callable(clock):
            raise ValueError(f"clock must be a function returning seconds, got {clock!r}")
        self._lock = threading.Lock()
        self._entries = _Entries(maxsize=max_entries, ttu=_expires_at, timer=clock)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        with self._lock:
            self._entries[key] = (ttl_s, value)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def evictions(self) -> int:
        """Live entries evicted to make room so far (expired ones are not counted)."""
        return self._entries.evictions

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        with self._lock:
            return len(self._entries)
