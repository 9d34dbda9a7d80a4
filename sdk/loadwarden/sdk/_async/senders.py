"""A thin driver of an `OutcomeBuffer`: a background task (async) or daemon thread (sync).

It waits until the buffer says a batch is due, sends it and records the answer;
every decision about batching lives in the buffer. A client deciding locally also
has its in-flight counts ride the batches (`InFlightSource`, the client's
`RouteTables`): with every batch when any moved, and alone when one moved and no
batch is due.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from loadwarden.sdk._convert import report_outcome_request
from loadwarden.sdk._outcomes import InFlightSource, OutcomeBuffer
from loadwarden.sdk._synchronization import (
    AsyncCondition,
    AsyncEvent,
    AsyncOutbox,
    AsyncThreadLock,
    AsyncWorker,
    gather_async,
)
from loadwarden.v1 import decision_pb2 as _pb


class TaskOutcomeSender:
    """Sends due batches from a background worker (a task, or a daemon thread) started when first needed.

    `add` never waits. An async sender used while no event loop runs keeps its
    outcomes queued until the next `flush` or `close`. Use it from one event loop.

    Args:
        buffer: The outcomes to send.
        send: Sends one request; raises on failure (any exception is counted, not propagated).
        in_flight: Whose in-flight counts ride the batches (set it before the first `wake`).
    """

    def __init__(
        self,
        buffer: OutcomeBuffer,
        send: Callable[[_pb.ReportOutcomeRequest], Awaitable[_pb.ReportOutcomeResponse]],
        in_flight: InFlightSource | None = None,
    ) -> None:
        self.buffer = buffer
        self._send = send
        self.in_flight = in_flight
        self.in_flight_failures = 0  # reports of counts alone that failed (the next one says it again)
        self._wake = AsyncEvent()
        self._settled = AsyncCondition()
        self._start_lock = AsyncThreadLock()
        self._task: AsyncWorker | None = None
        self._stopping = False

    def add(self, outcome: _pb.Outcome) -> None:
        if self.buffer.add(outcome):
            self._wake_sender()

    async def flush(self, timeout_s: float | None) -> bool:
        """Sends everything queued now; True when all of it is settled within `timeout_s`."""
        return await self._wait_flushed(self.buffer.request_flush(), timeout_s)

    async def close(self, timeout_s: float | None = None) -> None:
        """Sends what is queued (waiting at most `timeout_s`), then stops the worker."""
        await self._wait_flushed(self.buffer.close(), timeout_s)
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task.join()
        await self._say_goodbye()

    async def _say_goodbye(self) -> None:
        """Tells the service this client's requests in flight are no longer its (all 0), so
        they do not weigh on its servers until the service forgets them."""
        source = self.in_flight
        counts = source.in_flight_goodbye() if source is not None else []
        if not counts:
            return
        assert source is not None
        try:
            request = _pb.ReportOutcomeRequest(client_instance=source.instance, in_flight=counts)
            request.in_flight_seq = source.in_flight_seq
            await self._send(request)
        except Exception:  # noqa: BLE001 - the service forgets the counts at their TTL anyway
            self.in_flight_failures += 1

    async def _wait_flushed(self, mark: int, timeout_s: float | None) -> bool:
        if self.buffer.flushed(mark):
            return True
        self._wake_sender()
        with self._settled:
            return await self._settled.wait_for(lambda: self.buffer.flushed(mark), timeout_s)

    def wake(self) -> None:
        """Has the worker look again: an in-flight count moved (`InFlightSource`)."""
        self._wake_sender()

    def _wake_sender(self) -> None:
        if self._task is None:
            with self._start_lock:
                if self._task is None:
                    self._task = AsyncWorker.start(self._run, "loadwarden-outcomes")
        self._wake.set()

    async def _run(self) -> None:
        try:
            while not self._stopping:
                # Cleared before reading the buffer, so a wake-up set after this is never lost.
                self._wake.clear()
                batch = self.buffer.take_due()
                source = self.in_flight
                counts: list[_pb.LocalInFlight] = []
                if source is not None and (batch or source.in_flight_due() == 0.0):
                    counts = source.in_flight_report()
                if not batch and not counts:
                    await self._wake.wait(_sooner(self.buffer.seconds_until_due(), source))
                    continue
                request = report_outcome_request(batch)
                if counts:
                    assert source is not None
                    request.client_instance = source.instance
                    request.in_flight_seq = source.in_flight_seq
                    request.in_flight.extend(counts)
                try:
                    response = await self._send(request)
                except Exception as err:  # noqa: BLE001 - counted and logged, never raised
                    if counts:
                        assert source is not None
                        source.in_flight_lost()  # the next report says every count again
                    if batch:
                        self.buffer.record_error(err)
                    else:
                        self.in_flight_failures += 1
                else:
                    if batch:
                        self.buffer.record_response(response)
                with self._settled:
                    self._settled.notify_all()
        finally:
            self.buffer.abandon()
            with self._settled:
                self._settled.notify_all()


def _sooner(due_s: float | None, source: InFlightSource | None) -> float | None:
    """The earlier of the buffer's due time and the in-flight report's, seconds (None: neither)."""
    other = source.in_flight_due() if source is not None else None
    if due_s is None:
        return other
    return due_s if other is None else min(due_s, other)


class AsyncReleaseSender:
    """Sends `slot()` releases off the caller's path, from a worker started when first needed.

    The block's exit only queues its release; the worker takes everything queued and
    sends it at once (on the Decide stream those releases share messages), and the
    lease stays the client's until its release is answered. `drain` sends what is
    queued and waits for it, within a time bound.

    Args:
        release: Releases one queued item, never raising (it retries or logs failures).
    """

    MAX_BATCH = 100

    def __init__(self, release: Callable[[Any], Awaitable[None]]) -> None:
        self._release = release
        self._outbox = AsyncOutbox()
        self._start_lock = AsyncThreadLock()
        self._task: AsyncWorker | None = None
        self._queued = 0  # releases queued or in flight
        self._settled = AsyncCondition()

    def add(self, item: Any) -> None:
        with self._settled:
            self._queued += 1
        self._outbox.put(item)
        if self._task is None:
            with self._start_lock:
                if self._task is None:
                    self._task = AsyncWorker.start(self._run, "loadwarden-releases")

    async def drain(self, timeout_s: float | None) -> bool:
        """Waits until every queued release is answered; False when `timeout_s` passed first."""
        with self._settled:
            return await self._settled.wait_for(lambda: self._queued == 0, timeout_s)

    async def close(self, timeout_s: float | None) -> None:
        await self.drain(timeout_s)
        self._outbox.close()
        if self._task is not None:
            await self._task.join()

    async def _run(self) -> None:
        while True:
            batch = await self._outbox.take(self.MAX_BATCH)
            if not batch:
                return
            try:
                await gather_async(self._release, batch)
            finally:
                with self._settled:
                    self._queued -= len(batch)
                    self._settled.notify_all()
