"""One client process of ``loadwarden evaluate``: its share of the traffic, through its own SDK client.

``evaluate`` starts ``clients`` of these per run (``python -m
loadwarden.backend_sim._evaluate_client JOB.json``), each with a job file
(``ClientJob``) naming the service, the backends, the decision mode and the
plan of its share (``TrafficPlan.client`` of ``clients``). A client:

1. opens an ``AsyncClient(target, decisions=...)`` and reaches the service;
   deciding locally, it starts the pool's ``WatchRoutes`` stream and waits for
   the first table, so no request of the run is decided centrally for want of
   one;
2. prints ``{"ready": ...}`` on stdout and waits for the go file, which holds
   the wall-clock start every client of the run shares, and sleeps until then;
3. runs its share with ``TrafficRunner`` (printing ``{"done": n}`` every half
   second), flushes its outcomes, and writes its records to the job's output
   file as JSON lines (the first line its counters and SDK statistics, then one
   ``[time_s, server, latency_ms, success, explored]`` per request), through a
   temporary file renamed into place, so a file that exists is whole;
4. prints ``{"finished": ...}`` and exits 0.

Any failure exits non-zero with the reason on stderr (the run's log).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadwarden.sdk import AsyncClient, LoadwardenError

from ._config import Arrivals, ClosedLoop
from ._summary import RequestRecord
from ._traffic import TrafficPlan, TrafficResult, TrafficRunner

# How often a client prints its count of finished requests, s.
PROGRESS_EVERY_S = 0.5
_POLL_S = 0.005


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
    """

    target: str
    decisions: str
    plan: TrafficPlan
    addresses: Mapping[str, str]
    go_path: str
    out_path: str
    ready_timeout_s: float

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
            pattern = Arrivals(**traffic) if kind == "open" else ClosedLoop(**traffic)
            return cls(
                target=str(data["target"]),
                decisions=str(data["decisions"]),
                plan=TrafficPlan(traffic=pattern, **plan),
                addresses={str(k): str(v) for k, v in data["addresses"].items()},
                go_path=str(data["go_path"]),
                out_path=str(data["out_path"]),
                ready_timeout_s=float(data["ready_timeout_s"]),
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


def write_records(path: Path, result: TrafficResult, stats: Mapping[str, Any]) -> None:
    """The records as JSON lines (see the module docstring), renamed into place whole."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        head = {"counters": result.counters(), "duration_s": result.duration_s, "stats": dict(stats)}
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
    async with AsyncClient(job.target, timeout_s=5.0, breaker=None, retry=None, decisions=job.decisions) as client:
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
        try:
            result = await TrafficRunner(plan, client, job.addresses, progress=advance).run()
        finally:
            reporter.cancel()
        await client.flush_outcomes(5.0)
        stats = {
            "route_tables": dict(client.route_table_stats()),
            "outcomes": dataclasses.asdict(client.outcome_stats()),
        }
    write_records(Path(job.out_path), result, stats)
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
