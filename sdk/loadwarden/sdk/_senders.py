"""Thin drivers of an `OutcomeBuffer`: a daemon thread (sync) and an asyncio task (async).

They wait until the buffer says a batch is due, send it and record the answer;
every decision about batching lives in the buffer.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable

from loadwarden.sdk._convert import report_outcome_request
from loadwarden.sdk._outcomes import OutcomeBuffer
from loadwarden.v1 import decision_pb2 as _pb


class ThreadOutcomeSender:
    """Sends due batches from a daemon thread started on the first outcome.

    Args:
        buffer: The outcomes to send.
        send: Sends one request; raises on failure (any exception is counted, not propagated).
    """

    def __init__(
        self, buffer: OutcomeBuffer, send: Callable[[_pb.ReportOutcomeRequest], _pb.ReportOutcomeResponse]
    ) -> None:
        self.buffer = buffer
        self._send = send
        self._wake = threading.Event()
        self._settled = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def add(self, outcome: _pb.Outcome) -> None:
        if self.buffer.add(outcome):
            self._wake_sender()

    def flush(self, timeout_s: float | None) -> bool:
        """Sends everything queued now; True when all of it is settled within `timeout_s`."""
        return self._wait_flushed(self.buffer.request_flush(), timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Sends what is queued (waiting at most `timeout_s`), then stops the thread."""
        self._wait_flushed(self.buffer.close(), timeout_s)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _wait_flushed(self, mark: int, timeout_s: float | None) -> bool:
        if self.buffer.flushed(mark):
            return True
        self._wake_sender()
        with self._settled:
            return self._settled.wait_for(lambda: self.buffer.flushed(mark), timeout_s)

    def _wake_sender(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="loadwarden-outcomes", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                # Cleared before reading the buffer, so a wake-up set after this is never lost.
                self._wake.clear()
                batch = self.buffer.take_due()
                if not batch:
                    self._wake.wait(self.buffer.seconds_until_due())
                    continue
                try:
                    response = self._send(report_outcome_request(batch))
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


class TaskOutcomeSender:
    """Sends due batches from an asyncio task started on the running loop when first needed.

    Only use it from the event loop's thread. Outcomes added while no loop runs stay
    queued until the next `flush` or `close`.

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
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # replaced by a fresh one each time it is set
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def add(self, outcome: _pb.Outcome) -> None:
        if self.buffer.add(outcome):
            self._wake_sender()

    async def flush(self, timeout_s: float | None) -> bool:
        """Sends everything queued now; True when all of it is settled within `timeout_s`."""
        return await self._wait_flushed(self.buffer.request_flush(), timeout_s)

    async def close(self, timeout_s: float | None = None) -> None:
        """Sends what is queued (waiting at most `timeout_s`), then stops the task."""
        await self._wait_flushed(self.buffer.close(), timeout_s)
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _wait_flushed(self, mark: int, timeout_s: float | None) -> bool:
        if self.buffer.flushed(mark):
            return True
        self._wake_sender()
        try:
            async with asyncio.timeout(timeout_s):
                while not self.buffer.flushed(mark):
                    await self._settled.wait()
        except TimeoutError:
            return False
        return True

    def _wake_sender(self) -> None:
        if self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            # A fresh context: the task must not inherit the span or deadline of the request that started it.
            self._task = loop.create_task(self._run(), name="loadwarden-outcomes", context=contextvars.Context())
        self._wake.set()

    async def _run(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()
                batch = self.buffer.take_due()
                if not batch:
                    try:
                        async with asyncio.timeout(self.buffer.seconds_until_due()):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                try:
                    response = await self._send(report_outcome_request(batch))
                except Exception as err:  # noqa: BLE001 - counted and logged, never raised
                    self.buffer.record_error(err)
                else:
                    self.buffer.record_response(response)
                self._notify_settled()
        finally:
            self.buffer.abandon()
            self._notify_settled()

    def _notify_settled(self) -> None:
        settled, self._settled = self._settled, asyncio.Event()
        settled.set()
