"""Outcome batching, off the caller's path: all of the logic, none of the waiting.

`OutcomeBuffer` decides when a batch is due, what goes in it and what became of
every outcome. The drivers in `_senders.py` only wait and send.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from loadwarden.sdk._convert import MAX_REPORTS_PER_REQUEST
from loadwarden.sdk._errors import LoadwardenError, NotFoundError
from loadwarden.sdk._types import OutcomeStats
from loadwarden.v1 import decision_pb2 as _pb

_log = logging.getLogger("loadwarden.sdk")


class InFlightSource(Protocol):
    """What reports a client's requests in flight with its outcome batches (`RouteTables`)."""

    instance: str
    in_flight_seq: int  # the number of the report in_flight_report or in_flight_goodbye returned last

    def in_flight_due(self) -> float | None: ...

    def in_flight_report(self) -> list[_pb.LocalInFlight]: ...

    def in_flight_lost(self) -> None: ...

    def in_flight_goodbye(self) -> list[_pb.LocalInFlight]: ...


class OutcomeBuffer:
    """A bounded FIFO of outcomes waiting to be sent, with the counters of what became of them.

    Thread-safe. Outcomes are numbered in the order they are added: those numbered
    below `_head` have left the queue (taken into a batch or dropped). At most one
    batch is in flight at a time, and it always holds the oldest outcomes taken.
    Every outcome is counted exactly once as sent, dropped or part of a failed
    batch, or is still pending.

    Args:
        capacity: Outcomes held at most; adding to a full buffer drops the oldest.
        batch_size: Queued outcomes that make a batch due at once.
        interval_s: Longest an outcome waits before its batch is due, seconds.
        clock: Monotonic clock, seconds.
    """

    def __init__(
        self, *, capacity: int, batch_size: int, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[tuple[float, _pb.Outcome]] = deque()  # (added at, outcome), oldest first
        self._added = 0
        self._head = 0
        self._flush_mark = 0  # outcomes numbered below this are due now
        self._in_flight_start: int | None = None
        self._in_flight_len = 0
        self._closed = False
        self._sent = 0
        self._unknown = 0
        self._dropped = 0
        self._failed_batches = 0
        self._failing = False  # True from a failed batch until the next answered one
        self._overflowing = False  # True from a drop until the next batch is taken

    def add(self, outcome: _pb.Outcome) -> bool:
        """Queues one outcome; returns True when the sender must wake to re-plan."""
        with self._lock:
            if self._closed:
                self._dropped += 1
                return False
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self._head += 1
                self._dropped += 1
                if not self._overflowing:
                    self._overflowing = True
                    _log.warning("outcome buffer full (%d): dropping the oldest outcomes", self._capacity)
            self._queue.append((self._clock(), outcome))
            self._added += 1
            # Empty -> non-empty starts the interval timer; reaching batch_size makes a batch due.
            return len(self._queue) in (1, self._batch_size)

    def seconds_until_due(self) -> float | None:
        """Seconds until a batch is due: 0.0 when due now, None when nothing is queued."""
        with self._lock:
            return self._seconds_until_due()

    def take_due(self) -> list[_pb.Outcome]:
        """Removes and returns the next batch (oldest first, at most 1,000) if one is due, else []."""
        with self._lock:
            if self._seconds_until_due() != 0.0:
                return []
            if self._in_flight_start is not None:
                raise RuntimeError("a batch is already in flight: one sender per buffer")
            count = min(len(self._queue), MAX_REPORTS_PER_REQUEST)
            batch = [self._queue.popleft()[1] for _ in range(count)]
            self._in_flight_start, self._in_flight_len = self._head, count
            self._head += count
            self._overflowing = False
            return batch

    def record_response(self, response: _pb.ReportOutcomeResponse) -> None:
        """Settles the batch in flight with the service's answer."""
        with self._lock:
            count = self._settle()
            self._sent += count
            self._unknown += min(count, len(response.unknown_decision_ids))
            recovered, self._failing = self._failing, False
        if recovered:
            _log.info("reporting outcomes works again")

    def record_error(self, err: BaseException) -> None:
        """Settles the batch in flight with the error its send raised; never raises."""
        with self._lock:
            count = self._settle()
            if isinstance(err, NotFoundError):
                # Every decision in the batch had expired or was already reported: delivered, not failed.
                self._sent += count
                self._unknown += count
                return
            self._failed_batches += 1
            first_failure, self._failing = not self._failing, True
        # One warning per run of failures; the rest at debug level.
        _log.log(
            logging.WARNING if first_failure else logging.DEBUG,
            "reporting %d outcomes failed: %r",
            count,
            err,
            exc_info=not isinstance(err, LoadwardenError),
        )

    def request_flush(self) -> int:
        """Makes everything queued now due; returns the mark to pass to `flushed`."""
        with self._lock:
            self._flush_mark = max(self._flush_mark, self._added)
            return self._added

    def flushed(self, mark: int) -> bool:
        """Tells whether every outcome numbered below `mark` is settled."""
        with self._lock:
            return self._head >= mark and (self._in_flight_start is None or self._in_flight_start >= mark)

    def close(self) -> int:
        """Refuses (drops) later outcomes and makes everything queued due; returns the flush mark."""
        with self._lock:
            self._closed = True
        return self.request_flush()

    def abandon(self) -> None:
        """Drops what is still queued and fails the batch in flight; for a sender that stops."""
        with self._lock:
            self._dropped += len(self._queue)
            self._head += len(self._queue)
            self._queue.clear()
            if self._in_flight_start is not None:
                self._settle()
                self._failed_batches += 1

    def stats(self) -> OutcomeStats:
        with self._lock:
            return OutcomeStats(
                sent=self._sent,
                unknown=self._unknown,
                dropped=self._dropped,
                failed_batches=self._failed_batches,
                pending=len(self._queue) + self._in_flight_len,
            )

    def _seconds_until_due(self) -> float | None:
        # Caller holds the lock.
        if not self._queue:
            return None
        if len(self._queue) >= self._batch_size or self._head < self._flush_mark:
            return 0.0
        return max(0.0, self._queue[0][0] + self._interval_s - self._clock())

    def _settle(self) -> int:
        # Caller holds the lock.
        if self._in_flight_start is None:
            raise RuntimeError("no batch in flight")
        count = self._in_flight_len
        self._in_flight_start, self._in_flight_len = None, 0
        return count
