"""One client process of ``loadwarden evaluate``: its share of the traffic, through its own SDK client.

``evaluate`` starts ``clients`` of these per run (``python -m
loadwarden.backend_sim._evaluate_client JOB.json``), each with a job file
(``ClientJob``) naming the service, the backends, the decision mode and the
plan of its share (``TrafficPlan.client`` of ``clients``). A client:

1. opens a ``RecordingClient(target, decisions=...)`` (an ``AsyncClient`` with the
   SDK's breakers, retries and fallback unless ``[evaluate.client]`` turns them
   off, that notes where each decision came from) and reaches the service;
   deciding locally, it starts the pool's ``WatchRoutes`` stream and waits for
   the first table, so no request of the run is decided centrally for want of
   one;
2. prints ``{"ready": ...}`` on stdout and waits for the go file, which holds
   the wall-clock start every client of the run shares, and sleeps until then;
3. runs its share with ``TrafficRunner`` (printing ``{"done": n}`` every half
   second), flushes its outcomes, and writes its records to the job's output
   file as JSON lines (the first line its counters, SDK statistics and decision
   sources, then one ``[time_s, server, latency_ms, success, explored]`` per
   request), through a
   temporary file renamed into place, so a file that exists is whole;
4. prints ``{"finished": ...}`` and exits 0.

Any failure exits non-zero with the reason on stderr (the run's log).

``evaluate``'s own traffic (central decisions only) goes through a ``RecordingClient``
too, built by ``client_options`` from the same settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadwarden.sdk import (
    AsyncClient,
    BreakerConfig,
    Lease,
    LoadwardenError,
    RetryConfig,
    Selection,
    SlotDenied,
    UnavailableError,
)

from ._config import Arrivals, ClosedLoop, Surges
from ._summary import RequestRecord
from ._traffic import TrafficPlan, TrafficResult, TrafficRunner

# How often a client prints its count of finished requests, s.
PROGRESS_EVERY_S = 0.5
_POLL_S = 0.005
# Deadline of every SDK call of the traffic, s: generous, so a busy machine's slow answer is no failure.
CALL_TIMEOUT_S = 5.0
# Where a decision came from: the service; the client's pushed table (decisions "local"); the SDK's
# local fallback (service unreachable); that fallback, refused ([evaluate.client] fallback = false);
# or no answer at all (the SDK raised: no server to send the request to).
SOURCES = ("service", "local", "fallback", "refused", "failed")
# Decision sources are counted per bin of this width, s from the start of the traffic.
SOURCE_BIN_S = 0.01


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What ``[evaluate.client]`` turns off in the traffic's SDK client (every one on by default).

    Attributes:
        breaker: The SDK's default circuit breakers; False: none.
        retry: The SDK's default retries; False: none.
        fallback: Use the SDK's local answers when the service is unreachable; False: a
            request the SDK answered locally fails (mode slot: ``slot_fallback="fail_closed"``).
    """

    breaker: bool = True
    retry: bool = True
    fallback: bool = True

    @classmethod
    def of(cls, table: Any) -> ClientSettings:
        """From the ``[evaluate.client]`` table (None: the defaults)."""
        if table is None:
            return cls()
        return cls(breaker=bool(table.breaker), retry=bool(table.retry), fallback=bool(table.fallback))

    def as_dict(self) -> dict[str, bool]:
        return {"breaker": self.breaker, "retry": self.retry, "fallback": self.fallback}

    def describe(self) -> str:
        """E.g. ``"breaker on, retries off, fallback on"``."""
        on = {True: "on", False: "off"}
        return f"breaker {on[self.breaker]}, retries {on[self.retry]}, fallback {on[self.fallback]}"


def client_options(settings: ClientSettings, mode: str) -> dict[str, Any]:
    """The ``AsyncClient`` arguments of the traffic's client: the SDK's defaults, as ``settings`` says."""
    options: dict[str, Any] = {
        "timeout_s": CALL_TIMEOUT_S,
        "breaker": BreakerConfig() if settings.breaker else None,
        "retry": RetryConfig() if settings.retry else None,
    }
    if mode == "slot" and not settings.fallback:
        options["slot_fallback"] = "fail_closed"
    return options


class DecisionSources:
    """How many decisions came from each of ``SOURCES``, per ``SOURCE_BIN_S`` bin of time.

    Args:
        clock: Monotonic seconds; times are counted from ``restart``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.bins: dict[str, Counter[int]] = {source: Counter() for source in SOURCES}

    def restart(self) -> None:
        """Forgets every decision; times count from now (the traffic's start)."""
        self.start = self.clock()
        for bins in self.bins.values():
            bins.clear()

    def add(self, source: str, at: float) -> None:
        """One decision from ``source``, asked for at ``at`` (on the clock)."""
        self.bins[source][max(0, int((at - self.start) / SOURCE_BIN_S + 1e-9))] += 1  # 1e-9: float noise

    def totals(self) -> dict[str, int]:
        return {source: sum(bins.values()) for source, bins in self.bins.items()}

    def between(self, from_s: float, to_s: float) -> dict[str, int]:
        """Decisions asked for from ``from_s`` to ``to_s`` (s from the start), by source."""
        low, high = from_s / SOURCE_BIN_S, to_s / SOURCE_BIN_S
        return {source: sum(n for b, n in bins.items() if low <= b + 0.5 < high) for source, bins in self.bins.items()}

    def first(self, source: str, after_s: float) -> float | None:
        """When the first decision from ``source`` at or after ``after_s`` was asked for, s; None if none."""
        later = [b for b in self.bins[source] if (b + 1) * SOURCE_BIN_S > after_s]
        return max(after_s, min(later) * SOURCE_BIN_S) if later else None

    def series(self, bucket_s: float, end_s: float) -> dict[str, list[float]]:
        """Decisions per ``bucket_s`` bucket by source, with ``t_s`` the bucket starts."""
        n = max(1, math.ceil(end_s / bucket_s))
        out: dict[str, list[float]] = {"t_s": [round(i * bucket_s, 6) for i in range(n)], "bucket_s": [bucket_s]}
        for source, bins in self.bins.items():
            counts = [0] * n
            for b, count in bins.items():
                counts[min(n - 1, int(b * SOURCE_BIN_S / bucket_s))] += count
            out[source] = [float(c) for c in counts]
        return out

    def merge(self, others: Iterable[DecisionSources]) -> None:
        """Adds the bins of ``others`` (clients of one run, on one time axis)."""
        for other in others:
            for source, bins in other.bins.items():
                self.bins[source].update(bins)

    def to_json(self) -> dict[str, list[list[int]]]:
        return {source: sorted([b, n] for b, n in bins.items()) for source, bins in self.bins.items() if bins}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionSources:
        """What ``to_json`` gave.

        Raises:
            ValueError: an unknown source, or bins that are not pairs of integers.
        """
        sources = cls()
        for source, pairs in data.items():
            if source not in sources.bins:
                raise ValueError(f"unknown decision source {source!r}")
            for b, n in pairs:
                sources.bins[source][int(b)] += int(n)
        return sources


class RecordingClient(AsyncClient):
    """An ``AsyncClient`` that counts where each decision came from (``sources``).

    ``route()`` and ``slot()`` decide through ``select`` and ``acquire_slot``, so every
    request of the traffic is counted. With ``fallback`` False, a selection the SDK
    made locally because the service could not answer raises ``UnavailableError``
    instead, as for an application that has no use for it.

    Args:
        target: The Decision service.
        fallback: Whether a local fallback selection is used.
        **options: ``AsyncClient``'s (``client_options``).
    """

    def __init__(self, target: str, *, fallback: bool = True, **options: Any) -> None:
        super().__init__(target, **options)
        self.sources = DecisionSources()
        self.use_fallback = fallback

    async def select(self, pool: str, *, exclude: Iterable[str] = (), timeout_s: float | None = None) -> Selection:
        at = self.sources.clock()
        try:
            selection = await super().select(pool, exclude=exclude, timeout_s=timeout_s)
        except LoadwardenError:
            self.sources.add("failed", at)
            raise
        if not selection.fallback:
            self.sources.add("local" if selection.local else "service", at)
        elif self.use_fallback:
            self.sources.add("fallback", at)
        else:
            self.sources.add("refused", at)
            raise UnavailableError(
                "the service could not answer, and the SDK's local fallback is off ([evaluate.client] fallback = false)"
            )
        return selection

    async def acquire_slot(
        self,
        pool: str,
        *,
        priority: int = 0,
        wait_s: float = 0.0,
        lease_ttl_s: float | None = None,
        client_key: str = "",
        select_server: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Lease:
        at = self.sources.clock()
        try:
            lease = await super().acquire_slot(
                pool,
                priority=priority,
                wait_s=wait_s,
                lease_ttl_s=lease_ttl_s,
                client_key=client_key,
                select_server=select_server,
                request_id=request_id,
                timeout_s=timeout_s,
            )
        except SlotDenied as denied:  # the service's answer, or the fallback policy's
            local = {"CONTROL_PLANE_UNAVAILABLE": "refused", "LOCAL_LIMIT": "fallback"}
            self.sources.add(local.get(denied.denial, "service"), at)
            raise
        except LoadwardenError:
            self.sources.add("failed", at)
            raise
        self.sources.add("fallback" if lease.fallback else "service", at)
        return lease


@dataclass(frozen=True, slots=True)
class ClientJob:
    """What one client process does.

    Attributes:
        target: The Decision service's address.
        decisions: ``"central"`` or ``"local"``.
        plan: The client's share of the traffic (mode route).
        addresses: Server id -> address of every backend.
        go_path: File the parent writes ``{"start_wall": seconds}`` into when every client is ready.
        out_path: Where the records go.
        ready_timeout_s: Longest wait for the first routing table, s.
        client: What ``[evaluate.client]`` turns off in the client.
    """

    target: str
    decisions: str
    plan: TrafficPlan
    addresses: Mapping[str, str]
    go_path: str
    out_path: str
    ready_timeout_s: float
    client: ClientSettings = ClientSettings()

    def to_json(self) -> str:
        plan = self.plan
        if plan.batch is not None:
            raise ValueError("plan.batch: a client process runs mode route or slot traffic")
        kind = "open" if isinstance(plan.traffic, Arrivals) else "closed"
        return json.dumps(
            {
                "target": self.target,
                "decisions": self.decisions,
                "plan": {
                    "mode": plan.mode,
                    "pool": plan.pool,
                    "traffic": {"kind": kind, **dataclasses.asdict(plan.traffic)},
                    "seed": plan.seed,
                    "timeout_ms": plan.timeout_ms,
                    "slot_wait_s": plan.slot_wait_s,
                    "client": plan.client,
                    "clients": plan.clients,
                },
                "addresses": dict(self.addresses),
                "go_path": self.go_path,
                "out_path": self.out_path,
                "ready_timeout_s": self.ready_timeout_s,
                "client": self.client.as_dict(),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> ClientJob:
        """Reads ``to_json``'s text.

        Raises:
            ValueError: it is not a job (bad JSON, a missing key, a bad value).
        """
        try:
            data = json.loads(text)
            plan = dict(data["plan"])
            traffic = dict(plan.pop("traffic"))
            kind = traffic.pop("kind")
            if isinstance(traffic.get("surges"), dict):
                traffic["surges"] = Surges(**traffic["surges"])
            pattern = Arrivals(**traffic) if kind == "open" else ClosedLoop(**traffic)
            return cls(
                target=str(data["target"]),
                decisions=str(data["decisions"]),
                plan=TrafficPlan(traffic=pattern, **plan),
                addresses={str(k): str(v) for k, v in data["addresses"].items()},
                go_path=str(data["go_path"]),
                out_path=str(data["out_path"]),
                ready_timeout_s=float(data["ready_timeout_s"]),
                client=ClientSettings(**{k: bool(v) for k, v in data.get("client", {}).items()}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a client job: {exc!r}") from None


def _emit(message: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def wait_for_table(client: AsyncClient, pool: str, server_ids: Sequence[str], timeout_s: float) -> None:
    """Starts ``pool``'s WatchRoutes stream and waits for its first table.

    The stream starts with the pool's first ``select``; this one excludes every
    server, so the service answers it with an error and makes no decision (it
    would otherwise count a request that never runs).

    Raises:
        TimeoutError: no table within ``timeout_s``.
    """
    try:
        selection = await client.select(pool, exclude=server_ids)
    except LoadwardenError:
        pass  # nothing left to choose from, as intended
    else:
        raise RuntimeError(f"select excluding every server chose {selection.server_id!r}")
    deadline = time.monotonic() + timeout_s
    while client.route_table_stats().get("pools", 0.0) < 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no routing table of pool {pool!r} within {timeout_s:g} s")
        await asyncio.sleep(_POLL_S)


async def _wait_for_go(path: Path, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return float(json.loads(path.read_text(encoding="utf-8"))["start_wall"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no go file {path} within {timeout_s:g} s") from None
            await asyncio.sleep(_POLL_S)


def write_records(
    path: Path, result: TrafficResult, stats: Mapping[str, Any], sources: DecisionSources | None = None
) -> None:
    """The records as JSON lines (see the module docstring), renamed into place whole."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        head = {
            "counters": result.counters(),
            "duration_s": result.duration_s,
            "stats": dict(stats),
            "decisions": sources.to_json() if sources is not None else {},
        }
        out.write(json.dumps(head) + "\n")
        out.writelines(
            json.dumps([r.time_s, r.server, round(r.latency_ms, 6), r.success, r.explored]) + "\n"
            for r in result.records
        )
    os.replace(tmp, path)


def read_records(path: Path) -> tuple[dict[str, Any], list[RequestRecord]]:
    """What ``write_records`` wrote: (the head line, the records).

    Raises:
        ValueError: the file is not such a file.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty")
    head = json.loads(lines[0])
    records = [
        RequestRecord(float(t), str(s), float(lat), bool(ok), bool(ex))
        for t, s, lat, ok, ex in map(json.loads, lines[1:])
    ]
    return head, records


async def run_client(job: ClientJob) -> None:
    """Steps 1-4 of the module docstring."""
    plan = job.plan
    options = client_options(job.client, plan.mode)
    async with RecordingClient(job.target, fallback=job.client.fallback, decisions=job.decisions, **options) as client:
        await client.load_status(plan.pool)  # the channel is up before the traffic starts, in both modes
        if job.decisions == "local":
            await wait_for_table(client, plan.pool, sorted(job.addresses), job.ready_timeout_s)
        _emit({"ready": {"client": plan.client, "decisions": job.decisions}})
        # The parent writes the go file once every client is ready; it stops every client if one never is.
        start_wall = await _wait_for_go(Path(job.go_path), 10 * job.ready_timeout_s + 60.0)
        delay = start_wall - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        done = [0]

        def advance(n: int) -> None:
            done[0] = n

        async def report_progress() -> None:
            while True:
                await asyncio.sleep(PROGRESS_EVERY_S)
                _emit({"done": done[0]})

        reporter = asyncio.create_task(report_progress())
        client.sources.restart()  # the readiness checks before were no requests of the run
        try:
            result = await TrafficRunner(plan, client, job.addresses, progress=advance).run()
        finally:
            reporter.cancel()
        await client.flush_outcomes(5.0)
        stats = {
            "route_tables": dict(client.route_table_stats()),
            "outcomes": dataclasses.asdict(client.outcome_stats()),
        }
    write_records(Path(job.out_path), result, stats, client.sources)
    _emit({"finished": {"client": plan.client, "requests": len(result.records)}})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadwarden.backend_sim._evaluate_client JOB.json``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m loadwarden.backend_sim._evaluate_client JOB.json", file=sys.stderr)
        return 2
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        job = ClientJob.from_json(Path(args[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"evaluate client: {args[0]}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_client(job))
    except (OSError, LoadwardenError, TimeoutError, RuntimeError) as exc:
        print(f"evaluate client {job.plan.client}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
