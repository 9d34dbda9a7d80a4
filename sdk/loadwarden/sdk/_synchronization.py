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
- `gather_async` / `gather`: run a function over items, at once on a loop, in turn on a thread.
- `shielded_async` / `shielded`: run a function to its end even when the caller is
  cancelled (a task awaited through `asyncio.shield`; a plain call on a thread).
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
import heapq
import threading
import time
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


async def gather_async(fn: Callable[[Any], Awaitable[None]], items: list[Any]) -> None:
    """Runs `fn(item)` for every item at once (tasks of the running loop)."""
    await asyncio.gather(*(fn(item) for item in items))


def gather(fn: Callable[[Any], None], items: list[Any]) -> None:
    """Runs `fn(item)` for every item, one after the other (the sync twin of `gather_async`)."""
    for item in items:
        fn(item)


# The tasks of `shielded_async`, held until they end (a loop keeps only weak references).
_shielded: set[asyncio.Task[None]] = set()


async def shielded_async(fn: Callable[[Any], Coroutine[Any, Any, None]], arg: Any) -> None:
    """Runs `fn(arg)` in a task of the running loop (in the caller's context) and awaits it;
    when the caller is cancelled, the task still runs to its end, and the caller gets the
    `CancelledError` at once."""
    task = asyncio.get_running_loop().create_task(fn(arg))
    _shielded.add(task)
    task.add_done_callback(_shielded.discard)
    await asyncio.shield(task)


def shielded(fn: Callable[[Any], None], arg: Any) -> None:
    """Calls `fn(arg)`: a thread is never cancelled (the sync twin of `shielded_async`)."""
    fn(arg)


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


class _Scheduled:
    """One callback of a `ThreadScheduler`; `cancel` stops it if it has not started."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ThreadScheduler:
    """One daemon thread keeps every pending callback's time; a due callback runs on a
    daemon thread of its own (a renewal is an RPC that must not hold the others up).

    A slot released before its first renewal is due so costs no thread at all (a
    `threading.Timer` per slot cost one thread start, about 0.3 ms, on every slot).
    Cancelled callbacks leave the heap when their time comes, or all at once when
    they are over half of it.
    """

    _COMPACT_AT = 1_024  # cancelled entries tolerated before the heap is rebuilt

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Scheduled]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        entry = _Scheduled(callback)
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay_s, self._seq, entry))
            if len(self._heap) > self._COMPACT_AT and len(self._heap) % self._COMPACT_AT == 0:
                live = [item for item in self._heap if not item[2].cancelled]
                if len(live) * 2 < len(self._heap):
                    heapq.heapify(live)
                    self._heap = live
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loadwarden-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    heap = self._heap
                    while heap and heap[0][2].cancelled:
                        heapq.heappop(heap)
                    if not heap:
                        self._cond.wait()
                        continue
                    wait_s = heap[0][0] - time.monotonic()
                    if wait_s <= 0:
                        entry = heapq.heappop(heap)[2]
                        break
                    self._cond.wait(wait_s)
            threading.Thread(target=self._fire, args=(entry,), name="loadwarden-lease-renewal", daemon=True).start()

    @staticmethod
    def _fire(entry: _Scheduled) -> None:
        if not entry.cancelled:  # cancelled between its time coming and its thread starting
            entry.callback()


class _TaskTimer:
    """A callback of `TaskScheduler`: a loop timer until it is due, then a task; `cancel`
    stops either (a renewal in flight included)."""

    __slots__ = ("_callback", "_handle", "_loop", "_task")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay_s: float, callback: Callable[[], Awaitable[None]]
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._task: asyncio.Task[None] | None = None
        self._handle = loop.call_later(delay_s, self._fire)

    def _fire(self) -> None:
        async def run() -> None:
            await self._callback()

        self._task = self._loop.create_task(run(), name="loadwarden-lease-renewal", context=background_context())

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The callback's task once it is due; None before."""
        return self._task

    def cancel(self) -> None:
        self._handle.cancel()
        if self._task is not None:
            self._task.cancel()


class TaskScheduler:
    """A loop timer per callback, which becomes a task when it is due (so a slot released
    before its first renewal costs no task); cancelling it also cancels a renewal in flight.

    The task runs outside the scheduling caller's `deadline` scope (threads of
    `ThreadScheduler` never see it either).
    """

    def call_later(self, delay_s: float, callback: Callable[[], Awaitable[None]]) -> Timer:
        return _TaskTimer(asyncio.get_running_loop(), delay_s, callback)
