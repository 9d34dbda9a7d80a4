"""Building blocks of the soak and fault tests: a fixed-rate open-loop driver, a
tally of every answer and error by kind, and a sampler of a process's RSS and
open file descriptors.

Nothing here asserts; the tests decide what counts as a failure.
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from loadwarden.sdk import SlotDenied

# Error reprs kept per unexpected kind, for the failure message.
EXAMPLES_PER_KIND = 3
# A driver more than this far behind its schedule skips the missed ticks instead of bursting, seconds.
MAX_LAG_S = 0.5


def error_kind(exc: BaseException) -> str:
    """``SlotDenied:AT_CAPACITY`` for a denial, otherwise the exception's class name."""
    if isinstance(exc, SlotDenied):
        return f"SlotDenied:{exc.denial}"
    return type(exc).__name__


@dataclass
class Tally:
    """Every call of a workload, counted once by operation and how it ended. Thread-safe.

    ``expected`` maps an operation to the error kinds (see ``error_kind``) it may
    end with by design, e.g. ``{"limited": {"ResourceExhaustedError"}}``; any
    other exception is unexpected. A call's duration is checked against the
    operation's ``allowed_s`` (when given): longer ones are ``late``.

    Attributes:
        answered: Calls the service answered, by operation.
        fallback: Calls the SDK answered locally, by operation.
        expected: Calls ended by an expected error, by (operation, kind).
        unexpected: Calls ended by any other exception, by (operation, kind).
        late: (operation, seconds) of calls that took longer than allowed.
        skipped: Ticks a driver dropped (too far behind, or too many calls in flight), by operation.
    """

    expected_kinds: dict[str, set[str]] = field(default_factory=dict)
    allowed_s: dict[str, float] = field(default_factory=dict)
    answered: Counter[str] = field(default_factory=Counter)
    fallback: Counter[str] = field(default_factory=Counter)
    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    late: list[tuple[str, float]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    durations: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    async def call(self, op: str, fn: Callable[[], Awaitable[bool]]) -> bool | None:
        """Runs ``fn`` (which returns True when the SDK answered locally) and counts how it ended.

        Returns:
            ``fn``'s answer, or None when it raised (the exception is counted, not re-raised).
        """
        began = time.monotonic()
        try:
            local = await fn()
        except Exception as exc:  # noqa: BLE001 - the point: every exception is counted by kind
            self.record_error(op, exc, time.monotonic() - began)
            return None
        self.record(op, local, time.monotonic() - began)
        return local

    def record(self, op: str, local: bool, took_s: float) -> None:
        with self._lock:
            (self.fallback if local else self.answered)[op] += 1
            self._timed(op, took_s)

    def record_error(self, op: str, exc: BaseException, took_s: float) -> None:
        kind = error_kind(exc)
        with self._lock:
            if kind in self.expected_kinds.get(op, ()):
                self.expected[(op, kind)] += 1
            else:
                self.unexpected[(op, kind)] += 1
                shown = self.examples.setdefault((op, kind), [])
                if len(shown) < EXAMPLES_PER_KIND:
                    shown.append(repr(exc))
            self._timed(op, took_s)

    def _timed(self, op: str, took_s: float) -> None:
        self.durations.setdefault(op, []).append(took_s)
        allowed = self.allowed_s.get(op)
        if allowed is not None and took_s > allowed:
            self.late.append((op, round(took_s, 3)))

    def total(self, op: str) -> int:
        with self._lock:
            return (
                self.answered[op]
                + self.fallback[op]
                + sum(n for (o, _), n in self.expected.items() if o == op)
                + sum(n for (o, _), n in self.unexpected.items() if o == op)
            )

    def summary(self) -> dict[str, object]:
        """Counts and latency percentiles (ms) per operation, JSON-ready."""
        with self._lock:
            latency = {}
            for op, values in sorted(self.durations.items()):
                ordered = sorted(values)
                latency[op] = {
                    "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
                    "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
                    "max_ms": round(ordered[-1] * 1000, 2),
                }
            return {
                "answered": dict(self.answered),
                "fallback": dict(self.fallback),
                "expected_errors": {f"{op} {kind}": n for (op, kind), n in sorted(self.expected.items())},
                "unexpected_errors": {f"{op} {kind}": n for (op, kind), n in sorted(self.unexpected.items())},
                "unexpected_examples": {f"{op} {kind}": v for (op, kind), v in sorted(self.examples.items())},
                "late": self.late[:20],
                "skipped_ticks": dict(self.skipped),
                "latency": latency,
            }


async def drive(
    op: str,
    rate_per_s: float,
    until: Callable[[], bool],
    make_call: Callable[[], Coroutine[Any, Any, object]],
    tally: Tally,
    *,
    max_in_flight: int = 50,
) -> int:
    """Starts ``make_call()`` at a fixed rate (open loop: calls overlap) until ``until()``.

    A tick is skipped (counted in ``tally.skipped``) when ``max_in_flight`` calls
    are still running or the driver fell more than MAX_LAG_S behind. Waits for
    the calls in flight before returning.

    Returns:
        Calls started, count.
    """
    loop = asyncio.get_running_loop()
    interval_s = 1.0 / rate_per_s
    next_at = loop.time()
    running: set[asyncio.Task[object]] = set()
    started = 0
    while not until():
        now = loop.time()
        if next_at > now:
            await asyncio.sleep(next_at - now)
            continue
        if now - next_at > MAX_LAG_S:
            missed = int((now - next_at) / interval_s)
            tally.skipped[op] += missed
            next_at += missed * interval_s
        next_at += interval_s
        if len(running) >= max_in_flight:
            tally.skipped[op] += 1
            continue
        task = loop.create_task(make_call())
        running.add(task)
        task.add_done_callback(running.discard)
        started += 1
    if running:
        await asyncio.gather(*running)
    return started


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at a process.

    Attributes:
        t_s: Seconds since the sampler started.
        rss_mib: Resident set size, MiB.
        fds: Open file descriptors (sockets included), count.
        threads: Threads, count.
        cpu_s: User + system CPU time since the process started, seconds.
    """

    t_s: float
    rss_mib: float
    fds: int
    threads: int
    cpu_s: float


class ProcessSampler:
    """Samples one process's RSS, open fds, threads and CPU time every ``interval_s`` on a thread."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}", daemon=True)

    def start(self) -> ProcessSampler:
        self._began = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(10)
        return self.samples

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def elapsed_s(self) -> float:
        return time.monotonic() - self._began

    def _run(self) -> None:
        while True:
            try:
                with self._process.oneshot():
                    cpu = self._process.cpu_times()
                    sample = Sample(
                        t_s=round(time.monotonic() - self._began, 3),
                        rss_mib=round(self._process.memory_info().rss / 2**20, 2),
                        fds=self._process.num_fds(),
                        threads=self._process.num_threads(),
                        cpu_s=round(cpu.user + cpu.system, 2),
                    )
            except psutil.NoSuchProcess:
                return
            with self._lock:
                self._samples.append(sample)
            if self._stop.wait(self._interval_s):
                return


def window(samples: Iterable[Sample], start_s: float, end_s: float) -> list[Sample]:
    """The samples taken in [start_s, end_s)."""
    return [s for s in samples if start_s <= s.t_s < end_s]


def median_rss_mib(samples: list[Sample]) -> float:
    return round(statistics.median(s.rss_mib for s in samples), 2)


def median_fds(samples: list[Sample]) -> float:
    return float(statistics.median(s.fds for s in samples))


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str, poll_s: float = 0.1
) -> float:
    """Polls ``condition`` (plain or async) until it holds; returns the seconds it took.

    Raises:
        AssertionError: It did not hold within ``timeout_s``; the message says ``what``.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return loop.time() - began
        if loop.time() - began > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(poll_s)  # poll interval of the condition
