"""Pushing a backend's own load to the Decision service, from inside the backend.

`RequestTracker` folds the backend's requests into in-flight, latency, error and
rate figures; `BackendReporter` samples the host, builds one `LoadReport` and pushes it
every interval from a daemon thread (`Client`) or an asyncio task (`AsyncClient`).
A failed push is logged and counted, never raised into the backend. The same report
is what `loadwarden.sdk.orca` serves over ORCA; `CallMetrics` holds what one RPC's
handler adds to its own ORCA trailer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import psutil

from loadwarden.sdk._async.client import AsyncClient
from loadwarden.sdk._convert import MAX_LATENCY_MS
from loadwarden.sdk._errors import LoadwardenError
from loadwarden.sdk._sync.client import Client
from loadwarden.sdk._types import MAX_NAMED_METRICS, NAMED_METRIC_MAX_LEN, LoadReport

_log = logging.getLogger("loadwarden.sdk")

F = TypeVar("F", bound=Callable[..., Any])

# Largest active-request count the contract accepts, count.
MAX_ACTIVE_REQUESTS = 1_000_000

# Largest application utilisation the contract accepts, a fraction of capacity (100 times over it).
MAX_APPLICATION_UTILIZATION = 100.0
# Largest request or error rate the contract accepts, per second.
MAX_RATE = 1e9
# A named metric's name: the contract's name characters, 1-64 of them.
NAMED_METRIC_PATTERN = re.compile(f"[A-Za-z0-9._:@/-]{{1,{NAMED_METRIC_MAX_LEN}}}")
# Names loadwarden itself sends in ORCA's named_metrics (see loadwarden.sdk.orca).
RESERVED_METRIC_PREFIX = "loadwarden."
# Each rate window is measured from marks this fraction of it apart.
_RATE_MARKS = 10

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
    """In-flight count, latency EWMA, failure EWMA and rates of a backend's requests. Thread-safe.

    Both EWMAs take the first finished request's value as is, then move by
    `weight * (sample - ewma)`, as the service folds outcomes.

    The rates (finished and failed requests per second, gRPC's qps and eps) are
    counted from the newest mark at least `rate_window_s` old up to now, or from
    the tracker's start while it is younger (over at least one mark's span). Marks
    are taken `rate_window_s / 10` apart, when a request ends or the rates are read,
    so at most a dozen are kept.

    Args:
        latency_ewma_weight: Weight of each new latency, 0 < w <= 1.
        error_ewma_weight: Weight of each new success (0) or failure (1), 0 < w <= 1.
        clock: Monotonic clock the rates are measured with, seconds.
        rate_window_s: Span the rates are averaged over, seconds, > 0.
    """

    def __init__(
        self,
        latency_ewma_weight: float,
        error_ewma_weight: float,
        clock: Callable[[], float] = time.monotonic,
        rate_window_s: float = 10.0,
    ) -> None:
        self._latency_weight = latency_ewma_weight
        self._error_weight = error_ewma_weight
        self._clock = clock
        self._window_s = rate_window_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self._external_in_flight: int | None = None  # set_in_flight's count, reported in place of _in_flight
        self._finished = 0
        self._failed = 0
        self._latency_ms = 0.0
        self._error_rate = 0.0
        # (when, finished, failed): the counts at each mark, oldest first.
        self._marks: deque[tuple[float, int, int]] = deque([(clock(), 0, 0)])

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
        self._failed += int(failed)
        self._mark(self._clock())

    def _mark(self, now: float) -> None:
        # Under the lock. A mark once a step; the newest one at least a window old stays the base.
        marks = self._marks
        if now - marks[-1][0] >= self._window_s / _RATE_MARKS:
            marks.append((now, self._finished, self._failed))
        while len(marks) > 1 and now - marks[1][0] >= self._window_s:
            marks.popleft()

    def abandon(self) -> None:
        """Ends a request that was cancelled: it leaves in-flight and is not folded in."""
        with self._lock:
            self._in_flight -= 1

    def snapshot(self) -> tuple[int, float, float]:
        """(in flight, latency EWMA ms, failure EWMA 0-1), read together."""
        with self._lock:
            in_flight = self._in_flight if self._external_in_flight is None else self._external_in_flight
            return in_flight, self._latency_ms, self._error_rate

    def rates(self) -> tuple[float, float]:
        """(finished requests per second, failed requests per second) over the window."""
        with self._lock:
            now = self._clock()
            self._mark(now)
            since, finished, failed = self._marks[0]
            span_s = max(now - since, self._window_s / _RATE_MARKS)  # a young tracker's few requests are no burst
            return (self._finished - finished) / span_s, (self._failed - failed) / span_s


class CallMetrics:
    """What one RPC's handler records for its own ORCA trailer (gRFC A51's per-call recorder).

    Get the running call's with `loadwarden.sdk.orca.call_metrics()`. Each value
    recorded replaces the one recorded before under its name; a value recorded here
    wins over the reporter's own for this call's trailer. Outside a call that
    `OrcaInterceptor` / `AsyncOrcaInterceptor` reports, the recorder is one nobody
    reads. Each map holds at most 32 names (1-64 characters from [A-Za-z0-9._:@/-]).

    Raises (every method):
        ValueError: The name or value is not one ORCA can carry; the message names it.
    """

    __slots__ = ("application_utilization", "cpu_utilization", "named_metrics", "request_cost", "utilization")

    def __init__(self) -> None:
        self.request_cost: dict[str, float] = {}
        self.utilization: dict[str, float] = {}
        self.named_metrics: dict[str, float] = {}
        self.cpu_utilization: float | None = None
        self.application_utilization: float | None = None

    def recorded(self) -> bool:
        """Whether anything was recorded."""
        return bool(
            self.request_cost
            or self.utilization
            or self.named_metrics
            or self.cpu_utilization is not None
            or self.application_utilization is not None
        )

    def record_request_cost(self, name: str, value: float) -> None:
        """What this request cost, in the backend's own unit (e.g. bytes read), finite."""
        _put(self.request_cost, "request_cost", name, _finite(value, "value"))

    def record_utilization(self, name: str, value: float) -> None:
        """A named resource's utilisation as this call saw it, a fraction 0-1."""
        _put(self.utilization, "utilization", name, _ranged(value, "value", 1.0))

    def record_named_metric(self, name: str, value: float) -> None:
        """An opaque backend metric for this call, finite."""
        _put(self.named_metrics, "named_metrics", name, _finite(value, "value"))

    def record_cpu_utilization(self, value: float) -> None:
        """CPU utilisation as this call saw it, a fraction of the host's CPUs, 0-1."""
        self.cpu_utilization = _ranged(value, "cpu_utilization", 1.0)

    def record_application_utilization(self, value: float) -> None:
        """Application utilisation as this call saw it, a fraction of capacity, 0-100."""
        self.application_utilization = _ranged(value, "application_utilization", MAX_APPLICATION_UTILIZATION)


_current_call: contextvars.ContextVar[CallMetrics | None] = contextvars.ContextVar("loadwarden_orca_call", default=None)


def current_call() -> CallMetrics:
    """The running RPC's recorder; a fresh one nobody reads outside a reported call."""
    return _current_call.get() or CallMetrics()


@contextlib.contextmanager
def recording_call() -> Iterator[CallMetrics]:
    """Makes a new recorder the running call's for the block."""
    metrics = CallMetrics()
    token = _current_call.set(metrics)
    try:
        yield metrics
    finally:
        with contextlib.suppress(ValueError):  # a generator closed from another context keeps it: harmless
            _current_call.reset(token)


def _finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _ranged(value: float, name: str, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise ValueError(f"{name} must be a number in [0, {high:g}], got {value!r}")
    return float(value)


def check_metric_name(name: str, what: str) -> str:
    """Returns `name` when the contract takes it as a metric name; ValueError naming `what` otherwise."""
    if not isinstance(name, str) or not NAMED_METRIC_PATTERN.fullmatch(name):
        raise ValueError(f"{what}: a name is 1-{NAMED_METRIC_MAX_LEN} characters from [A-Za-z0-9._:@/-], got {name!r}")
    return name


def _put(values: dict[str, float], what: str, name: str, value: float) -> None:
    check_metric_name(name, what)
    if name not in values and len(values) >= MAX_NAMED_METRICS:
        raise ValueError(f"{what}: at most {MAX_NAMED_METRICS} names; {name!r} would be one more")
    values[name] = value


class BackendReporter:
    """Runs in a backend and pushes its load to the service every `interval_s`.

    Each report carries the host's CPU and memory utilisation (`sampler`; with
    `cpu="process"`, this process's own CPU instead of the host's), the requests in
    flight, EWMAs of their latency and failures, and finished and failed requests per
    second over `rate_window_s`, fed by `track`, `track_async` or the `tracked`
    decorator, or from outside: `set_in_flight` with the backend's own in-flight
    count, `observe` with each request it timed itself. The backend may add its own
    application utilisation and named metrics (`set_application_utilization`,
    `set_named_metric`). The first report is pushed on `start`. A push that fails
    (e.g. the service is restarting) is logged once per outage (then at debug) and
    counted; reporting resumes on the next interval once the service answers again.
    Nothing is ever raised into the backend.

    With a `Client`, reports are pushed from a daemon thread; with an
    `AsyncClient`, from a task on the event loop running when `start` is called.

    Pushes go through the client's `report_loads`. The client sends ReportLoad
    without a circuit breaker or retries: the reporter's interval is the retry, so
    reports resume on the first interval after the service is back.

    The same numbers can be served over ORCA, to gRPC clients balancing with
    `weighted_round_robin` and to a loadwarden service that ingests ORCA: see
    `loadwarden.sdk.orca` (`add_orca_service` for the out-of-band stream,
    `AsyncOrcaInterceptor` for per-call trailers). With `client=None` nothing is
    pushed and ORCA is the only way out.

    Example:
        reporter = BackendReporter(Client(), "api", "s1")

        @reporter.tracked
        def handle(request): ...

        with reporter:
            serve_forever()

    Args:
        client: Client to push with; the caller keeps ownership and closes it. None
            pushes nothing (`start` does nothing): the reports are served over ORCA only.
        pool: Pool the backend belongs to.
        server_id: The backend's server id within `pool`.
        interval_s: Time between two pushes, seconds, > 0.
        latency_ewma_weight: Weight of each new latency in its EWMA, 0 < w <= 1.
        error_ewma_weight: Weight of each new success/failure in the error-rate EWMA, 0 < w <= 1.
        sampler: Returns (CPU %, memory %) of the host; `PsutilSampler` when None.
        cpu: Whose CPU the reports carry, when `sampler` is None: "host" (the whole
            host's, `PsutilSampler`) or "process" (this process's, as a share of all
            the host's CPUs, `ProcessSampler`: for a backend that shares its host).
        clock: Monotonic clock that schedules the pushes and measures the rates, seconds.
        perf_counter: High-resolution clock that times requests, seconds.
        rate_window_s: Span the requests and errors per second are averaged over, seconds, > 0.

    Raises:
        ValueError: An argument is out of range or of the wrong kind; the message names it.
    """

    def __init__(
        self,
        client: Client | AsyncClient | None,
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
        rate_window_s: float = 10.0,
    ) -> None:
        if client is not None and not isinstance(client, Client | AsyncClient):
            raise ValueError(f"client must be a loadwarden Client, AsyncClient or None, got {client!r}")
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
        if (
            isinstance(rate_window_s, bool)
            or not isinstance(rate_window_s, int | float)
            or not 0 < rate_window_s < math.inf
        ):
            raise ValueError(f"rate_window_s must be a positive number of seconds, got {rate_window_s!r}")
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
        self._requests = RequestTracker(latency_ewma_weight, error_ewma_weight, clock, float(rate_window_s))
        self._sample_lock = threading.Lock()
        self._sample: tuple[float, float] | None = None  # the last host sample, taken at _sampled_at
        self._sampled_at = 0.0
        self._application_utilization = 0.0
        self._metrics_lock = threading.Lock()
        self._named_metrics: dict[str, float] = {}  # under _metrics_lock
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

    def set_application_utilization(self, value: float | None) -> None:
        """Sets the application utilisation the reports carry (ORCA's application_utilization).

        A fraction of what the backend can take, as the backend itself measures it (a
        queue's fill, the busier of CPU and memory, a GPU's share): 1 is full, above 1
        is past its own soft limit. gRPC's `weighted_round_robin` weighs it in place of
        the CPU utilisation when it is above 0. None (or 0) stops reporting it.

        Raises:
            ValueError: `value` is not None or a number in [0, 100].
        """
        self._application_utilization = 0.0 if value is None else _ranged(value, "value", MAX_APPLICATION_UTILIZATION)

    def set_named_metric(self, name: str, value: float | None) -> None:
        """Sets (or, with None, removes) one backend-defined metric the reports carry (ORCA's named_metrics).

        At most 32 names, each 1-64 characters from [A-Za-z0-9._:@/-]; names starting
        with "loadwarden." are loadwarden's own. The value is in the backend's own unit.

        Raises:
            ValueError: The name breaks those rules, would be the 33rd, or the value is not finite.
        """
        check_metric_name(name, "name")
        if name.startswith(RESERVED_METRIC_PREFIX):
            raise ValueError(f"name: names starting with {RESERVED_METRIC_PREFIX!r} are loadwarden's, got {name!r}")
        with self._metrics_lock:
            if value is None:
                self._named_metrics.pop(name, None)
            else:
                _put(self._named_metrics, "named metrics", name, _finite(value, "value"))

    # -- reporting ----------------------------------------------------------

    def current_report(self, *, max_sample_age_s: float = 0.0) -> LoadReport:
        """The report a push would send now, values clamped into the contract's ranges.

        Args:
            max_sample_age_s: Reuse the last host sample when it is at most this old, seconds
                (ORCA's per-call trailers and streams read it far more often than the host
                needs sampling); 0 always samples afresh, as a push does.

        Raises:
            Exception: Whatever the sampler raises.
        """
        cpu_percent, memory_percent = self._host_sample(max_sample_age_s)
        in_flight, latency_ms, error_rate = self._requests.snapshot()
        requests_per_second, errors_per_second = self._requests.rates()
        with self._metrics_lock:
            named: Mapping[str, float] = dict(self._named_metrics)
        return LoadReport(
            pool=self.pool,
            server_id=self.server_id,
            cpu_percent=_clamp(cpu_percent, 0.0, 100.0),
            memory_percent=_clamp(memory_percent, 0.0, 100.0),
            active_requests=min(max(0, in_flight), MAX_ACTIVE_REQUESTS),
            mean_latency_ms=_clamp(latency_ms, 0.0, float(MAX_LATENCY_MS)),
            error_rate=_clamp(error_rate, 0.0, 1.0),
            application_utilization=self._application_utilization,
            requests_per_second=_clamp(requests_per_second, 0.0, MAX_RATE),
            errors_per_second=_clamp(errors_per_second, 0.0, MAX_RATE),
            named_metrics=named,
        )

    def _host_sample(self, max_age_s: float) -> tuple[float, float]:
        with self._sample_lock:  # one sampler call at a time: psutil measures CPU since its previous call
            now = self._clock()
            if self._sample is None or max_age_s <= 0 or now - self._sampled_at > max_age_s:
                self._sample, self._sampled_at = self._sampler(), now
            return self._sample

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

        Without a client there is nothing to push, and nothing starts.

        Raises:
            RuntimeError: With an `AsyncClient` and no running event loop.
        """
        if self._client is None or (self.running and not self._stop.is_set()):
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
        if self._client is None:
            return self.interval_s
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
