"""The SDK's local batch-size answers when the service cannot be reached."""

from __future__ import annotations

import threading
from collections import OrderedDict

from loadwarden.sdk._errors import LoadwardenError
from loadwarden.sdk._types import BatchSize

# Operations whose last size a client remembers; the least recently used is forgotten beyond it.
MAX_KNOWN_OPERATIONS = 1000


class LastKnownSizes:
    """The last batch size the service answered for each operation, bounded LRU.

    Thread-safe: a sync `Client` is shared between threads. Only service answers
    are remembered; a local answer never replaces one.

    Args:
        capacity: Operations remembered at most, count, >= 1.
    """

    def __init__(self, capacity: int = MAX_KNOWN_OPERATIONS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self._capacity = capacity
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()

    def remember(self, operation: str, answer: BatchSize) -> None:
        """Records a service answer for `operation`."""
        with self._lock:
            self._sizes[operation] = answer.size
            self._sizes.move_to_end(operation)
            if len(self._sizes) > self._capacity:
                self._sizes.popitem(last=False)

    def local_answer(self, operation: str, default: int | None, err: LoadwardenError) -> BatchSize | None:
        """The size to use while the service is unreachable (`err`); None when there is none.

        The last size the service gave for `operation` wins over the caller's `default`.
        """
        with self._lock:
            size = self._sizes.get(operation)
            if size is not None:
                self._sizes.move_to_end(operation)
        cause = f"service unreachable ({err.code.name})"
        if size is not None:
            return _local(size, f"{cause}: last size the service gave", "last_known")
        if default is not None:
            return _local(default, f"{cause}: caller's default size", "default")
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)


def _local(size: int, reason: str, source: str) -> BatchSize:
    return BatchSize(
        size=size, load_score=None, load_level="unknown", reason=reason, fallback=True, decision_id="", source=source
    )
