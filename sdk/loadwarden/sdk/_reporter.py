"""Pushing a backend's own load to the Decision service, from inside the backend.

`RequestTracker` folds the backend's requests into in-flight, latency and error
figures; `BackendReporter` samples the host, builds one `LoadReport` and pushes it
every interval from a daemon thread (`Client`) or an asyncio task (`AsyncClient`).
A failed push is logged and counted, never raised into the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import psutil

from loadwarden.sdk._async.client import AsyncClient
from loadwarden.sdk._convert import MAX_LATENCY_MS
from loadwarden.sdk._errors import LoadwardenError
from loadwarden.sdk._sync.client import Client
from loadwarden.sdk._types import LoadReport

_log = logging.getLogger("loadwarden.sdk")

F = TypeVar("F", bound=Callable[..., Any])

# Largest active-request count the contract accepts, count.
MAX_ACTIVE_REQUESTS = 1_000_000

# Host sample: (CPU utilisation, memory utilisation), both percent 0-100.
Sampler = Callable[[], tuple[float, float]]


class PsutilSampler:
    """Samples the host with psutil: CPU % since the previous sample, and memory % in use.

    `psutil.cpu_percent(interval=None)` compares with the previous call, so the
    constructor takes a first reading that the first sample is measured from.
    """

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)

    def __call__(self) -> tuple[float, float]:
        return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent


class ProcessSampler:
    """Samples this process with psutil: its CPU % since the previous sample, and the host's memory % in use.

    The process's CPU is normalised the way the host figure is: a share of all the
    host's logical CPUs, 0-100 (psutil counts one busy core as 100 %, so its
    figure is divided by the number of CPUs). Memory stays the host's.

    Args:
        process: The process to sample; this one when None.
        cpu_count: Logical CPUs to divide by; psutil's count when None.
    """

    def __init__(self, process: psutil.Process | None = None, cpu_count: int | None = None) -> None:
        self._process = psutil.Process() if process is None else process
        self._cpus = cpu_count or psutil.cpu_count() or 1
        self._process.cpu_percent(interval=None)

    def __call__(self) -> tuple[float, float]:
        return self._process.cpu_percent(interval=None) / self._cpus, psutil.virtual_memory().percent


@dataclass(frozen=True, slots=True)
class ReporterStats:
    """Counters of a `BackendReporter` since it was built.

    Attributes:
        pushed: Load reports the service accepted, count.
        failed: Pushes that failed (service unreachable, rejected, sampler error), count.
        last_error: The error of the most recent failed push; None when none failed.
    """

    pushed: int
    failed: int
    last_error: Exception | None


class Tracked:
    """One request being tracked; `fail()` marks it failed without raising."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False

    def fail(self) -> None:
        """Counts the request as failed, e.g. when it answers an error status."""
        self.failed = True


class RequestTracker:
    """In-flight count, latency EWMA and failure EWMA of a backend's requests. Thread-safe.

    Both EWMAs take the first finished request's value as is, then move by
    `weight * (sample - ewma)`, as the service folds outcomes.

    Args:
        latency_ewma_weight: Weight of each new latency, 0 < w <= 1.
        error_ewma_weight: Weight of each new success (0) or failure (1), 0 < w <= 1.
    """

    def __init__(self, latency_ewma_weight: float, error_ewma_weight: float) -> None:
        self._latency_weight = latency_ewma_weight
        self._error_weight = error_ewma_weight
        self._lock = threading.Lock()
        self._in_flight = 0
        self._external_in_flight: int | None = None  # set_in_flight's count, reported in place of _in_flight
        self._finished = 0
        self._latency_ms = 0.0
        self._error_rate = 0.0

    def begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def set_in_flight(self, count: int) -> None:
        with self._lock:
            self._external_in_flight = count

    def end(self, latency_ms: float, *, failed: bool) -> None:
        """Ends one tracked request and folds it in."""
        with self._lock:
            self._in_flight -= 1
            self._fold(latency_ms, failed)

    def observe(self, latency_ms: float, *, failed: bool) -> None:
        """Folds in one finished request that was not tracked: the in-flight count is untouched."""
        with self._lock:
            self._fold(latency_ms, failed)

    def _fold(self, latency_ms: float, failed: bool) -> None:
        # Under the lock.
        failure = 1.0 if failed else 0.0
        if self._finished == 0:
            self._latency_ms, self._error_rate = latency_ms, failure
        else:
            self._latency_ms += self._latency_weight * (latency_ms - self._latency_ms)
            self._error_rate += self._error_weight * (failure - self._error_rate)
        self._finished += 1

    def abandon(self) -> None:
        """Ends a request that was cancelled: it leaves in-flight and is not folded in."""
        with self._lock:
            self._in_flight -= 1

    def snapshot(self) -> tuple[int, float, float]:
        """(in flight, latency EWMA ms, failure EWMA 0-1), read together."""
        with self._lock:
            in_flight = self._in_flight if self._external_in_flight is None else self._external_in_flight
            return in_flight, self._latency_ms, self._error_rate


class BackendReporter:
    """Runs in a backend and pushes its load to the service every `interval_s`.

    Each report carries the host's CPU and memory utilisation (`sampler`; with
    `cpu="process"`, this process's own CPU instead of the host's), the requests in
    flight, and EWMAs of their latency and failures, fed by `track`, `track_async`
    or the `tracked` decorator, or from outside: `set_in_flight` with the backend's
    own in-flight count, `observe` with each request it timed itself. The first report is pushed on
    `start`. A push that fails (e.g. the service is restarting) is logged once per
    outage (then at debug) and counted; reporting resumes on the next interval
    once the service answers again. Nothing is ever raised into the backend.

    With a `Client`, reports are pushed from a daemon thread; with an
    `AsyncClient`, from a task on the event loop running when `start` is called.

    Pushes go through the client's `report_loads`. The client sends ReportLoad
    without a circuit breaker or retries: the reporter's interval is the retry, so
    reports resume on the first interval after the service is back.

    Example:
        reporter = BackendReporter(Client(), "api", "s1")

        @reporter.tracked
        def handle(request): ...

        with reporter:
            serve_forever()

    Args:
        client: Client to push with; the caller keeps ownership and closes it.
        pool: Pool the backend belongs to.
        server_id: The backend's server id within `pool`.
        interval_s: Time between two pushes, seconds, > 0.
        latency_ewma_weight: Weight of each new latency in its EWMA, 0 < w <= 1.
        error_ewma_weight: Weight of each new success/failure in the error-rate EWMA, 0 < w <= 1.
        sampler: Returns (CPU %, memory %) of the host; `PsutilSampler` when None.
        cpu: Whose CPU the reports carry, when `sampler` is None: "host" (the whole
            host's, `PsutilSampler`) or "process" (this process's, as a share of all
            the host's CPUs, `ProcessSampler`: for a backend that shares its host).
        clock: Monotonic clock that schedules the pushes, seconds.
        perf_counter: High-resolution clock that times requests, seconds.

    Raises:
        ValueError: An argument is out of range or of the wrong kind; the message names it.
    """

    def __init__(
        self,
        client: Client | AsyncClient,
        pool: str,
        server_id: str,
        *,
        interval_s: float = 1.0,
        latency_ewma_weight: float = 0.2,
        error_ewma_weight: float = 0.2,
        sampler: Sampler | None = None,
        clock: Callable[[], float] = time.monotonic,
        perf_counter: Callable[[], float] = time.perf_counter,
        cpu: str = "host",
    ) -> None:
        if not isinstance(client, Client | AsyncClient):
            raise ValueError(f"client must be a loadwarden Client or AsyncClient, got {client!r}")
        for name, value in (("pool", pool), ("server_id", server_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if isinstance(interval_s, bool) or not isinstance(interval_s, int | float) or not 0 < interval_s < math.inf:
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        for name, weight in (("latency_ewma_weight", latency_ewma_weight), ("error_ewma_weight", error_ewma_weight)):
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {weight!r}")
        if sampler is not None and not callable(sampler):
            raise ValueError(f"sampler must be callable or None, got {sampler!r}")
        if cpu not in ("host", "process"):
            raise ValueError(f"cpu must be 'host' or 'process', got {cpu!r}")
        if cpu == "process" and sampler is not None:
            raise ValueError("cpu='process' chooses the sampler (ProcessSampler); pass either cpu or sampler")
        for name, fn in (("clock", clock), ("perf_counter", perf_counter)):
            if not callable(fn):
                raise ValueError(f"{name} must be a callable returning seconds, got {fn!r}")
        self._client = client
        self._async = isinstance(client, AsyncClient)
        self.pool = pool
        self.server_id = server_id
        self.interval_s: float = float(interval_s)
        if sampler is None:
            sampler = ProcessSampler() if cpu == "process" else PsutilSampler()
        self._sampler = sampler
        self._clock = clock
        self._perf_counter = perf_counter
        self._requests = RequestTracker(latency_ewma_weight, error_ewma_weight)
        self._stats_lock = threading.Lock()
        self._pushed = 0
        self._failed = 0
        self._last_error: Exception | None = None
        self._failing = False  # True from a failed push until the next accepted one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    # -- feeding ------------------------------------------------------------

    @contextlib.contextmanager
    def track(self) -> Iterator[Tracked]:
        """Counts the block as one request: in flight while it runs, then its latency and success.

        The request fails when an exception escapes the block (re-raised unchanged)
        or `Tracked.fail()` is called. A block ended by a `BaseException` that is not
        an `Exception` (cancellation, interpreter exit) only leaves in-flight.
        """
        handle = Tracked()
        self._requests.begin()
        started = self._perf_counter()
        try:
            yield handle
        except Exception:
            self._end(started, failed=True)
            raise
        except BaseException:
            self._requests.abandon()
            raise
        self._end(started, failed=handle.failed)

    @contextlib.asynccontextmanager
    async def track_async(self) -> AsyncIterator[Tracked]:
        """`track` for `async with`; cancellation only leaves in-flight."""
        with self.track() as handle:
            yield handle

    def tracked(self, fn: F) -> F:
        """Decorates a function or coroutine function so each call is tracked (see `track`)."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def tracked_async(*args: Any, **kwargs: Any) -> Any:
                with self.track():
                    return await fn(*args, **kwargs)

            return cast(F, tracked_async)  # functools.wraps keeps fn's signature

        @functools.wraps(fn)
        def tracked_sync(*args: Any, **kwargs: Any) -> Any:
            with self.track():
                return fn(*args, **kwargs)

        return cast(F, tracked_sync)

    def set_in_flight(self, count: int) -> None:
        """Sets the requests in flight the reports carry, as the backend counts them itself.

        From the first call on, reports carry the last count set here in place of
        the one `track` keeps (blocks still feed latency and failures). For a
        backend whose server already counts its requests, e.g. a gauge of its
        framework; call it whenever the count changes, or before each interval.

        Raises:
            ValueError: `count` is not an integer >= 0.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an integer >= 0, got {count!r}")
        self._requests.set_in_flight(count)

    def observe(self, latency_s: float, ok: bool = True) -> None:
        """Folds in one finished request the backend timed itself, as a `track` block would.

        The in-flight count is not touched (see `set_in_flight`).

        Args:
            latency_s: How long the request took, seconds, >= 0.
            ok: False when the request failed.

        Raises:
            ValueError: `latency_s` is negative, NaN or infinite, or `ok` is not True or False.
        """
        if isinstance(latency_s, bool) or not isinstance(latency_s, int | float) or not 0 <= latency_s < math.inf:
            raise ValueError(f"latency_s must be a finite number of seconds >= 0, got {latency_s!r}")
        if not isinstance(ok, bool):
            raise ValueError(f"ok must be True or False, got {ok!r}")
        self._requests.observe(latency_s * 1000.0, failed=not ok)

    # -- reporting ----------------------------------------------------------

    def current_report(self) -> LoadReport:
        """The report a push would send now, values clamped into the contract's ranges.

        Raises:
            Exception: Whatever the sampler raises.
        """
        cpu_percent, memory_percent = self._sampler()
        in_flight, latency_ms, error_rate = self._requests.snapshot()
        return LoadReport(
            pool=self.pool,
            server_id=self.server_id,
            cpu_percent=_clamp(cpu_percent, 0.0, 100.0),
            memory_percent=_clamp(memory_percent, 0.0, 100.0),
            active_requests=min(max(0, in_flight), MAX_ACTIVE_REQUESTS),
            mean_latency_ms=_clamp(latency_ms, 0.0, float(MAX_LATENCY_MS)),
            error_rate=_clamp(error_rate, 0.0, 1.0),
        )

    def report_now(self) -> bool:
        """Pushes one report now with a `Client`; True when the service accepted it.

        A failed push is logged and counted (`stats`), never raised.
        """
        if not isinstance(self._client, Client):
            raise TypeError("report_now() needs a sync Client; use report_now_async() with an AsyncClient")
        try:
            self._client.report_loads([self.current_report()], timeout_s=self._push_timeout_s())
        except Exception as err:  # noqa: BLE001 - logged and counted, never raised into the backend
            self._record_failure(err)
            return False
        self._record_success()
        return True

    async def report_now_async(self) -> bool:
        """Pushes one report now with an `AsyncClient`; True when the service accepted it.

        A failed push is logged and counted (`stats`), never raised.
        """
        if not isinstance(self._client, AsyncClient):
            raise TypeError("report_now_async() needs an AsyncClient; use report_now() with a Client")
        try:
            await self._client.report_loads([self.current_report()], timeout_s=self._push_timeout_s())
        except Exception as err:  # noqa: BLE001 - logged and counted, never raised into the backend
            self._record_failure(err)
            return False
        self._record_success()
        return True

    def stats(self) -> ReporterStats:
        with self._stats_lock:
            return ReporterStats(pushed=self._pushed, failed=self._failed, last_error=self._last_error)

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return (self._thread is not None and self._thread.is_alive()) or (
            self._task is not None and not self._task.done()
        )

    def start(self) -> None:
        """Starts pushing: a daemon thread, or a task on the running loop with an `AsyncClient`. Idempotent.

        Raises:
            RuntimeError: With an `AsyncClient` and no running event loop.
        """
        if self.running and not self._stop.is_set():
            return
        self._stop.clear()
        if self._async:
            self._task = asyncio.get_running_loop().create_task(
                self._run_task(), name="loadwarden-load-reporter", context=contextvars.Context()
            )  # not the span or deadline of whoever started it
        else:
            self._thread = threading.Thread(target=self._run_thread, name="loadwarden-load-reporter", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops pushing. With a `Client`, waits for a push in flight (bounded by its deadline);
        with an `AsyncClient`, cancels the task (await `stop_async` to wait for it). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            if self._thread is not threading.current_thread():
                self._thread.join()
            self._thread = None
        if self._task is not None:
            self._task.cancel()

    async def stop_async(self) -> None:
        """Stops pushing and waits until the task or thread has ended. Idempotent."""
        task, thread = self._task, self._thread
        self._stop.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._task = None
        if thread is not None:
            await asyncio.to_thread(thread.join)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_async()

    # -- internals ----------------------------------------------------------

    def _end(self, started: float, *, failed: bool) -> None:
        latency_ms = max(0.0, (self._perf_counter() - started) * 1000.0)
        self._requests.end(latency_ms, failed=failed)

    def _push_timeout_s(self) -> float:
        # A report older than its interval is superseded: it never waits longer than that.
        return min(self.interval_s, self._client._options.timeout_s)  # noqa: SLF001 - the SDK's own client; options are not public

    def _next_push_at(self, previous: float) -> float:
        # Pushes keep to a fixed grid; one that overran its slot is not caught up.
        return max(previous + self.interval_s, self._clock())

    def _run_thread(self) -> None:
        due = self._clock()
        while not self._stop.is_set():
            self.report_now()
            due = self._next_push_at(due)
            self._stop.wait(max(0.0, due - self._clock()))

    async def _run_task(self) -> None:
        due = self._clock()
        while not self._stop.is_set():
            await self.report_now_async()
            due = self._next_push_at(due)
            await asyncio.sleep(max(0.0, due - self._clock()))

    def _record_success(self) -> None:
        with self._stats_lock:
            self._pushed += 1
            recovered, self._failing = self._failing, False
            failed = self._failed
        if recovered:
            _log.info("load reports for %s/%s resumed (%d failed pushes so far)", self.pool, self.server_id, failed)

    def _record_failure(self, err: Exception) -> None:
        with self._stats_lock:
            self._failed += 1
            self._last_error = err
            first, self._failing = not self._failing, True
        if first:
            _log.warning(
                "pushing the load of %s/%s failed; retrying every %g s: %r",
                self.pool,
                self.server_id,
                self.interval_s,
                err,
                exc_info=not isinstance(err, LoadwardenError),
            )
        else:
            _log.debug("pushing the load of %s/%s failed again: %r", self.pool, self.server_id, err)


def _clamp(value: float, low: float, high: float) -> float:
    # NaN and other non-numbers become `low`: a report the service would reject helps no one.
    if not isinstance(value, int | float) or math.isnan(value):
        return low
    return min(max(float(value), low), high)
