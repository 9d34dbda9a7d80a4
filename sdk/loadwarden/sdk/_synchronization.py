"""Where the SDK's two flavours truly differ, as hand-written pairs: `AsyncX` for asyncio, `X` for threads.

The asyncio code under `_async/` is the source of the SDK; `scripts/unasync.py`
rewrites it into `_sync/`, turning each `AsyncX` used there into its twin `X`
(and `TaskScheduler` into `ThreadScheduler`). Everything else is plain
substitution, so each pair here keeps one surface:

- `AsyncThreadLock` / `ThreadLock`: guards a critical section that never waits.
  A no-op on the event loop (one task runs at a time), a `threading.Lock` for threads.
- `AsyncCondition` / `Condition`: `with cond:` guards like the lock; `wait` parks
  until `notify_all` (futures on the loop, a `threading.Condition` for threads).
- `AsyncEvent` / `Event`: set, clear and wait with a timeout.
- `AsyncWorker` / `Worker`: one background task or daemon thread, started on demand.
- `AsyncBackground` / `Background`: fire-and-forget calls (a task held until done,
  or a daemon thread).
- `AsyncScheduler` / `Scheduler` with `TaskScheduler` / `ThreadScheduler`: run a
  callback once, later.
- `AsyncReply` / `Reply`: one answer one caller waits for, with a timeout.
- `AsyncOutbox` / `Outbox`: items put by callers and taken in batches by one worker.
- `AsyncCancelled` / `Cancelled`: what a cancelled call raises; threads are never
  cancelled, so `Cancelled` is never raised.
- `ASYNC_OPENS_CHANNEL_ON_FIRST_CALL` / `OPENS_CHANNEL_ON_FIRST_CALL`: a grpc.aio
  channel binds to the loop running when it opens, so `AsyncClient` opens its own
  on its first call; `Client` opens it at construction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol, Self

from loadwarden.sdk._resilience import background_context

ASYNC_OPENS_CHANNEL_ON_FIRST_CALL = True
OPENS_CHANNEL_ON_FIRST_CALL = False

AsyncCancelled = asyncio.CancelledError


class Cancelled(BaseException):
    """Never raised: a thread cannot be cancelled. The sync twin of `asyncio.CancelledError`."""


# ------------------------------------------------------------------------ locks


class AsyncThreadLock:
    """Guards a critical section with no `await` inside: a no-op, as one loop runs one task at a time."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class ThreadLock:
    """Guards a critical section between threads: a `threading.Lock`."""

    def __init__(self) -> None:
        self.raw = threading.Lock()

    def __enter__(self) -> Self:
        self.raw.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.raw.release()


class AsyncCondition(AsyncThreadLock):
    """A condition for tasks of one loop: entering it is a no-op; `wait` parks until `notify_all`.

    Args:
        lock: The lock it shares with other conditions; unused on the loop.
    """

    def __init__(self, lock: AsyncThreadLock | None = None) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Waits for `notify_all`, at most `timeout_s` seconds (None: no limit); False on timeout."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return True

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float | None) -> bool:
        """Waits until `predicate()` is true, at most `timeout_s` seconds; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    await self.wait()
        except TimeoutError:
            return False
        return True

    def notify_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Condition:
    """A `threading.Condition`, on its own lock or on `lock` (shared with other conditions)."""

    def __init__(self, lock: ThreadLock | None = None) -> None:
        self._cond = threading.Condition(None if lock is None else lock.raw)

    def __enter__(self) -> Self:
        self._cond.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cond.release()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Waits (lock held) for `notify_all`, at most `timeout_s` seconds; False on timeout."""
        return self._cond.wait(timeout_s)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float | None) -> bool:
        """Waits (lock held) until `predicate()` is true, at most `timeout_s` seconds; its last value."""
        return self._cond.wait_for(predicate, timeout_s)

    def notify_all(self) -> None:
        self._cond.notify_all()


# ----------------------------------------------------------------------- events


class AsyncEvent:
    """An `asyncio.Event` whose `wait` takes a timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout_s: float | None) -> bool:
        """Waits until set, at most `timeout_s` seconds; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class Event:
    """A `threading.Event`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None) -> bool:
        """Waits until set, at most `timeout_s` seconds; False on timeout."""
        return self._event.wait(timeout_s)


# ------------------------------------------------------------- replies, outbox


class AsyncReply:
    """One answer that one task awaits: an asyncio future of the running loop."""

    def __init__(self) -> None:
        self._future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def set(self, value: Any) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)

    async def wait(self, timeout_s: float | None) -> Any:
        """The answer; TimeoutError after `timeout_s` seconds without one."""
        async with asyncio.timeout(timeout_s):
            return await self._future


class Reply:
    """One answer that one thread awaits: a `concurrent.futures.Future`."""

    def __init__(self) -> None:
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def set(self, value: Any) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self._future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self._future.set_exception(exc)

    def wait(self, timeout_s: float | None) -> Any:
        """The answer; TimeoutError after `timeout_s` seconds without one."""
        return self._future.result(timeout_s)


class AsyncOutbox:
    """Items put by tasks, taken all at once by one consumer task; `close` ends the taking."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def take(self, most: int) -> list[Any]:
        """Waits for items and returns up to `most` of them, oldest first; [] once closed."""
        while not self._items:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        taken, self._items = self._items[:most], self._items[most:]
        return taken


class Outbox:
    """Items put by threads, taken all at once by one consumer thread; `close` ends the taking."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, most: int) -> list[Any]:
        """Waits for items and returns up to `most` of them, oldest first; [] once closed."""
        with self._cond:
            while not self._items:
                if self._closed:
                    return []
                self._cond.wait()
            taken, self._items = self._items[:most], self._items[most:]
            return taken


# ---------------------------------------------------------------------- workers


# What `AsyncWorker.spawn` / `Worker.spawn` return: the running task or thread itself.
AsyncWorkerHandle = asyncio.Task[None]
WorkerHandle = threading.Thread


class AsyncWorker:
    """One background task on the running loop, in a fresh context (no caller's span or deadline)."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    @classmethod
    def start(cls, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> AsyncWorker | None:
        """Starts `run()` as a task; None (nothing started) when no loop is running."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return cls(loop.create_task(run(), name=name, context=contextvars.Context()))

    def done(self) -> bool:
        return self._task.done()

    async def join(self) -> None:
        await self._task

    @staticmethod
    def spawn(run: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[None] | None:
        """Starts `run()` as a task in a fresh context and returns it; None when no loop is running."""
        worker = AsyncWorker.start(run, name)
        return worker._task if worker is not None else None  # noqa: SLF001 - the class's own attribute

    @staticmethod
    def is_current(task: asyncio.Task[None]) -> bool:
        """Whether the caller runs in `task`."""
        return task is asyncio.current_task()

    @staticmethod
    def finished(task: asyncio.Task[None]) -> bool:
        return task.done()

    @staticmethod
    async def stop(task: asyncio.Task[None], timeout_s: float) -> None:
        """Cancels `task` (unless the caller runs in it) and waits for it to end; a task needs no grace."""
        if task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Worker:
    """One background daemon thread."""

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread

    @classmethod
    def start(cls, run: Callable[[], None], name: str) -> Worker | None:
        """Starts `run()` on a daemon thread."""
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return cls(thread)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()

    @staticmethod
    def spawn(run: Callable[[], None], name: str) -> threading.Thread | None:
        """Starts `run()` on a daemon thread and returns it."""
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    @staticmethod
    def is_current(thread: threading.Thread) -> bool:
        """Whether the caller runs on `thread`."""
        return thread is threading.current_thread()

    @staticmethod
    def finished(thread: threading.Thread) -> bool:
        return not thread.is_alive()

    @staticmethod
    def stop(thread: threading.Thread, timeout_s: float) -> None:
        """Waits up to `timeout_s` for `thread` to end (unless the caller runs on it); a thread cannot be cancelled."""
        if thread is not threading.current_thread() and timeout_s > 0:
            thread.join(timeout_s)


class AsyncBackground:
    """Runs coroutine functions as tasks of the running loop, holding each until it ends."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Background:
    """Runs functions on daemon threads."""

    def start(self, fn: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=fn, args=args, daemon=True).start()


# ------------------------------------------------------------------- schedulers


class Timer(Protocol):
    """A scheduled callback."""

    def cancel(self) -> object:
        """Stops the callback if it has not started (a running task is cancelled too)."""
        ...


class Scheduler(Protocol):
    """Runs a callback once, later, off the caller's thread."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...


class AsyncScheduler(Protocol):
    """Runs a coroutine function once, later, on the running event loop."""

    def call_later(self, delay_s: float, callback: Callable[[], Awaitable[None]]) -> Timer: ...


class ThreadScheduler:
    """One daemon `threading.Timer` per callback: a held slot already has a caller thread."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = threading.Timer(delay_s, callback)
        timer.name = "loadwarden-lease-renewal"
        timer.daemon = True
        timer.start()
        return timer


class TaskScheduler:
    """One asyncio task per callback; cancelling it also cancels a renewal in flight.

    The task runs outside the scheduling caller's `deadline` scope (threads of
    `ThreadScheduler` never see it either).
    """

    def call_later(self, delay_s: float, callback: Callable[[], Awaitable[None]]) -> Timer:
        async def later() -> None:
            await asyncio.sleep(delay_s)
            await callback()

        return asyncio.get_running_loop().create_task(
            later(), name="loadwarden-lease-renewal", context=background_context()
        )
