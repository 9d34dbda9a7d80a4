"""A thin driver of an `OutcomeBuffer`: a background task (async) or daemon thread (sync).

It waits until the buffer says a batch is due, sends it and records the answer;
every decision about batching lives in the buffer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from loadwarden.sdk._convert import report_outcome_request
from loadwarden.sdk._outcomes import OutcomeBuffer
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
    """

    def __init__(
        self,
        buffer: OutcomeBuffer,
        send: Callable[[_pb.ReportOutcomeRequest], Awaitable[_pb.ReportOutcomeResponse]],
    ) -> None:
        self.buffer = buffer
        self._send = send
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

    async def _wait_flushed(self, mark: int, timeout_s: float | None) -> bool:
        if self.buffer.flushed(mark):
            return True
        self._wake_sender()
        with self._settled:
            return await self._settled.wait_for(lambda: self.buffer.flushed(mark), timeout_s)

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
                if not batch:
                    await self._wake.wait(self.buffer.seconds_until_due())
                    continue
                try:
                    response = await self._send(report_outcome_request(batch))
                except Exception as err:  # noqa: BLE001 - counted and logged, never raised
                    self.buffer.record_error(err)
                else:
                    self.buffer.record_response(response)
                with self._settled:
                    self._settled.notify_all()
        finally:
            self.buffer.abandon()
            with self._settled:
                self._settled.notify_all()


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
