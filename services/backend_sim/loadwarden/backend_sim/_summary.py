"""What a run produced: per-request and per-load-report records, and their summary."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt


class RequestRecord(NamedTuple):
    """One request, simulated or real.

    Attributes:
        time_s: Arrival time, seconds from the start of the run.
        server: Id of the server the decision core chose; ``""`` when the
            request reached no server (dropped at the in-flight bound, refused
            a slot, or no server was eligible).
        latency_ms: Queue wait plus service time; the deadline for a request
            that timed out; 0 for one that reached no server.
        success: False when the server failed the request, it timed out, or
            it reached no server.
        explored: What the decision core said about this selection.
    """

    time_s: float
    server: str
    latency_ms: float
    success: bool
    explored: bool


class LoadRecord(NamedTuple):
    """One load report sent to the decision core (the same numbers).

    Attributes:
        time_s: When it was sent, simulated seconds.
        server: Reporting server id.
        cpu_percent: Busy workers / workers x 100, averaged over the interval.
        active_requests: Requests in service plus queued, at the report.
        mean_latency_ms: Mean latency of the requests completed in the interval;
            the previous interval's when none completed, 0 before any did.
        error_rate: Failed / completed in the interval, 0-1.
    """

    time_s: float
    server: str
    cpu_percent: float
    active_requests: int
    mean_latency_ms: float
    error_rate: float


class RequestLog(Sequence[RequestRecord]):
    """Requests stored by column (about 21 bytes each), read as ``RequestRecord`` s.

    A million requests take ~21 MB instead of ~150 MB of tuples, and
    ``summarize`` reads the columns without copying. Server ids are stored as
    indexes into ``server_ids``; ``""`` (no server) is index -1.
    """

    __slots__ = ("_index", "flags", "latency_ms", "server", "server_ids", "time_s")

    SUCCESS, EXPLORED = 1, 2

    def __init__(self, server_ids: Iterable[str]) -> None:
        self.server_ids: tuple[str, ...] = tuple(server_ids)
        self._index = {sid: i for i, sid in enumerate(self.server_ids)}
        self.time_s = array("d")
        self.server = array("i")
        self.latency_ms = array("d")
        self.flags = array("b")  # SUCCESS | EXPLORED bits

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord], server_ids: Sequence[str] = ()) -> RequestLog:
        """A log holding ``records``; servers not in ``server_ids`` are added in order of appearance."""
        log = cls(server_ids)
        for record in records:
            log.append(record)
        return log

    def append(self, record: RequestRecord) -> None:
        """Adds one request at the end."""
        self.time_s.append(record.time_s)
        self.server.append(self._server_index(record.server))
        self.latency_ms.append(record.latency_ms)
        self.flags.append((self.SUCCESS if record.success else 0) | (self.EXPLORED if record.explored else 0))

    def add_server(self, server_id: str) -> int:
        """The index of ``server_id`` (a non-empty id), added at the end when it is new."""
        return self._server_index(server_id)

    def _server_index(self, server_id: str) -> int:
        if not server_id:
            return -1
        index = self._index.get(server_id)
        if index is None:
            index = self._index[server_id] = len(self.server_ids)
            self.server_ids = (*self.server_ids, server_id)
        return index

    def __len__(self) -> int:
        return len(self.time_s)

    def _record(self, i: int) -> RequestRecord:
        s, f = self.server[i], self.flags[i]
        return RequestRecord(
            self.time_s[i],
            self.server_ids[s] if s >= 0 else "",
            self.latency_ms[i],
            bool(f & self.SUCCESS),
            bool(f & self.EXPLORED),
        )

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...

    def __getitem__(self, index: int | slice) -> RequestRecord | list[RequestRecord]:
        if isinstance(index, slice):
            return [self._record(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("RequestLog index out of range")
        return self._record(index)

    def __iter__(self) -> Iterator[RequestRecord]:
        ids, success, explored = self.server_ids, self.SUCCESS, self.EXPLORED
        for t, s, lat, f in zip(self.time_s, self.server, self.latency_ms, self.flags, strict=True):
            yield RequestRecord(t, ids[s] if s >= 0 else "", lat, bool(f & success), bool(f & explored))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestLog):
            return (self.time_s, self.latency_ms, self.flags) == (other.time_s, other.latency_ms, other.flags) and [
                other.server_ids[s] if s >= 0 else "" for s in other.server
            ] == [self.server_ids[s] if s >= 0 else "" for s in self.server]
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, equal by value: unhashable

    def __repr__(self) -> str:
        return f"RequestLog({len(self)} requests, {len(self.server_ids)} servers)"


@dataclass(frozen=True, slots=True)
class Columns:
    """Requests as numpy columns (what ``summarize`` and the report compute on).

    Attributes:
        time_s: Arrival times, s (float64).
        server: Index into ``server_ids``; -1 for no server (int32).
        latency_ms: Latencies, ms (float64).
        success: Success flags (bool).
        explored: Explored flags (bool).
        server_ids: Server ids by index.
    """

    time_s: Any
    server: Any
    latency_ms: Any
    success: Any
    explored: Any
    server_ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.time_s.shape[0])

    def select(self, mask: Any) -> Columns:
        """The requests where ``mask`` (bool array or slice) holds."""
        return Columns(
            self.time_s[mask],
            self.server[mask],
            self.latency_ms[mask],
            self.success[mask],
            self.explored[mask],
            self.server_ids,
        )


def columns(records: Sequence[RequestRecord], server_ids: Sequence[str] = ()) -> Columns:
    """``records`` as numpy columns; server ids not in ``server_ids`` are appended.

    A ``RequestLog`` is read without copying.
    """
    if not isinstance(records, RequestLog):
        records = RequestLog.from_records(records, server_ids)
    ids = list(server_ids)
    known = {sid: i for i, sid in enumerate(ids)}
    for sid in records.server_ids:
        if sid not in known:
            known[sid] = len(ids)
            ids.append(sid)
    server = np.frombuffer(records.server, dtype=np.int32) if len(records) else np.zeros(0, np.int32)
    if list(records.server_ids) != ids[: len(records.server_ids)]:
        remap = np.array([known[sid] for sid in records.server_ids] + [-1], dtype=np.int32)
        server = remap[server]  # -1 indexes the trailing -1
    flags = np.frombuffer(records.flags, dtype=np.int8) if len(records) else np.zeros(0, np.int8)
    return Columns(
        time_s=np.frombuffer(records.time_s, dtype=np.float64) if len(records) else np.zeros(0),
        server=server,
        latency_ms=np.frombuffer(records.latency_ms, dtype=np.float64) if len(records) else np.zeros(0),
        success=(flags & RequestLog.SUCCESS).astype(bool),
        explored=(flags & RequestLog.EXPLORED).astype(bool),
        server_ids=tuple(ids),
    )


def reward(latency_ms: float) -> float:
    """The reward the learning curve averages: ``-latency_ms / 10``."""
    return -latency_ms / 10.0


@dataclass(frozen=True, slots=True)
class Summary:
    """Statistics over a run's requests (after any warm-up).

    Latencies are in ms, over the requests that reached a server (timed-out
    ones count at their deadline); percentiles are nearest-rank. With no such
    request the latency figures are NaN.

    Attributes:
        requests: Requests summarised, those that reached no server included.
        mean_ms: Mean latency.
        std_ms: Standard deviation of the latencies (population).
        p50_ms: Median latency.
        p95_ms: 95th percentile latency.
        p99_ms: 99th percentile latency.
        p999_ms: 99.9th percentile latency.
        throughput_per_s: Requests that reached a server, per second, from the
            first arrival to the last completion.
        success_rate: Successful / requests, 0-1 (requests that reached no
            server count as failures).
        explored_rate: Selections the strategy marked as explored / requests.
        share: Fraction of the requests that reached a server, per server id
            (every server, 0 included).
        learning_curve: Mean reward (``-latency_ms / 10``) of consecutive blocks
            of ``curve_window`` routed requests in arrival order: a moving
            average sampled once per window.
        curve_window: Requests per learning-curve point.
        unrouted: Requests that reached no server (``server == ""``).
        cv: Coefficient of variation (population standard deviation / mean)
            of the per-server request counts, over every server; 0 = even.
    """

    requests: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    throughput_per_s: float
    success_rate: float
    explored_rate: float
    share: dict[str, float]
    learning_curve: tuple[float, ...]
    curve_window: int
    unrouted: int = 0
    cv: float = 0.0
    std_ms: float = math.nan

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, latencies rounded to µs; NaN and infinities become None."""
        r = 3

        def num(value: float, digits: int) -> float | None:
            return round(value, digits) if math.isfinite(value) else None

        return {
            "requests": self.requests,
            "mean_ms": num(self.mean_ms, r),
            "std_ms": num(self.std_ms, r),
            "p50_ms": num(self.p50_ms, r),
            "p95_ms": num(self.p95_ms, r),
            "p99_ms": num(self.p99_ms, r),
            "p999_ms": num(self.p999_ms, r),
            "throughput_per_s": num(self.throughput_per_s, 1),
            "success_rate": round(self.success_rate, 4),
            "explored_rate": round(self.explored_rate, 4),
            "unrouted": self.unrouted,
            "cv": num(self.cv, 4),
            "share": {k: round(v, 4) for k, v in self.share.items()},
            "learning_curve": [round(v, 3) for v in self.learning_curve],
            "curve_window": self.curve_window,
        }


def percentile(sorted_values: Sequence[float] | npt.NDArray[np.float64], q: float) -> float:
    """Nearest-rank ``q`` quantile (0 < q <= 1) of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def coefficient_of_variation(counts: Sequence[float]) -> float:
    """Population standard deviation / mean of ``counts``; 0 when empty or all zero."""
    n = len(counts)
    if not n:
        return 0.0
    mean = sum(counts) / n
    if mean == 0:
        return 0.0
    return math.sqrt(sum((c - mean) ** 2 for c in counts) / n) / mean


def summarize(
    records: Sequence[RequestRecord],
    server_ids: Sequence[str],
    *,
    warmup: int = 0,
    curve_window: int = 500,
    warmup_s: float = 0.0,
) -> Summary:
    """Summarises ``records[warmup:]``, less those arriving before ``warmup_s``.

    Args:
        records: Requests in arrival order (a ``RequestLog`` is read fastest).
        server_ids: Every server of the run, so servers that got nothing show 0.
        warmup: Leading requests left out (e.g. while a strategy learns).
        curve_window: Requests per learning-curve point (>= 1).
        warmup_s: Requests that arrived before this time (s) are left out too.

    Raises:
        ValueError: the warm-up leaves no request, or ``curve_window`` < 1.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < len(records):
        raise ValueError(f"warmup: must be an integer in [0, {len(records) - 1}], got {warmup!r}")
    if isinstance(curve_window, bool) or not isinstance(curve_window, int) or curve_window < 1:
        raise ValueError(f"curve_window: must be an integer >= 1, got {curve_window!r}")
    if isinstance(warmup_s, bool) or not isinstance(warmup_s, (int, float)) or not 0 <= warmup_s < math.inf:
        raise ValueError(f"warmup_s: must be a finite number >= 0, got {warmup_s!r}")
    cols = columns(records, server_ids).select(slice(warmup, None))
    if warmup_s > 0:
        cols = cols.select(cols.time_s >= warmup_s)
        if not len(cols):
            raise ValueError(f"warmup_s: no request arrived after {warmup_s:g} s")
    return summarize_columns(cols, curve_window)


def summarize_columns(cols: Columns, curve_window: int = 500) -> Summary:
    """``summarize`` on columns already cut to the requests to keep (at least one)."""
    n = len(cols)
    routed = cols.server >= 0
    latencies = cols.latency_ms[routed]
    m = int(latencies.shape[0])
    counts = (
        np.bincount(cols.server[routed], minlength=len(cols.server_ids))
        if m
        else np.zeros(len(cols.server_ids), np.int64)
    )
    share = {sid: (int(c) / m if m else 0.0) for sid, c in zip(cols.server_ids, counts, strict=True)}
    if m:
        ordered = np.sort(latencies)
        q = {p: float(percentile(ordered, p)) for p in (0.50, 0.95, 0.99, 0.999)}
        mean = float(latencies.mean())
        std = float(latencies.std())
        end_s = float(np.max(cols.time_s[routed] + latencies / 1000.0))
        span_s = end_s - float(cols.time_s[0])
        throughput = m / span_s if span_s > 0 else math.inf
        blocks = m // curve_window
        rewards = -latencies[: blocks * curve_window] / 10.0
        curve = tuple(float(v) for v in rewards.reshape(blocks, curve_window).mean(axis=1)) if blocks else ()
    else:
        q = dict.fromkeys((0.50, 0.95, 0.99, 0.999), math.nan)
        mean = std = throughput = math.nan
        curve = ()
    return Summary(
        requests=n,
        mean_ms=mean,
        p50_ms=q[0.50],
        p95_ms=q[0.95],
        p99_ms=q[0.99],
        p999_ms=q[0.999],
        throughput_per_s=throughput,
        success_rate=int(cols.success.sum()) / n,
        explored_rate=int(cols.explored.sum()) / n,
        share=share,
        learning_curve=curve,
        curve_window=curve_window,
        unrouted=n - m,
        cv=coefficient_of_variation([float(c) for c in counts]),
        std_ms=std,
    )
