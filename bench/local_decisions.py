"""Decisions inside the SDK against decisions at the service, in one run.

Starts one ``loadwarden serve`` process (in-memory state) with a pool ``api`` of
``--servers`` servers and strategy ``--strategy``, and a push interval of 250 ms.
This process then runs, one after the other, for ``--seconds`` each:

  central  ``Client(decisions="central").route("api")``: one SelectServer per
           request on the caller's path, outcomes batched in the background
  local    ``Client(decisions="local").route("api")``: decided in this process
           from the pushed table, outcomes (with what the strategy weighed)
           batched back so the service keeps learning

each in one thread, closed loop (the block does no work: this measures what a
decision costs, not a backend). A mode's rate counts its decisions over the time
they took plus the time to deliver their last outcomes (``flush_outcomes``), so
a client that decides faster than it can report is not flattered; outcomes
dropped are reported and must be 0. Local mode sends a uniform sample of its
outcomes above ``local_outcome_rate`` (2,000/s by default), each standing for 1/p
(``outcomes_sent`` is what went over the wire). ``decision_us`` times ``select()`` alone
(p50/p99), the part on the request path. ``service_cpu_s_per_1000`` is the
service process's CPU time (utime + stime from /proc) per 1,000 routed requests,
decisions and their outcomes together.

Then the central transports side by side, on raw stubs over one grpc.aio channel
with ``--in-flight`` requests outstanding, for ``--seconds`` each:

  unary    SelectServer calls (+ their outcomes, batched 100 per ReportOutcome)
  stream   the same selects on one Decide stream (outcomes batched on it too)

and ``slot()`` cycles (acquire, an empty block, release; one thread or task, closed
loop; the sync Client and the AsyncClient)
as they were before issue 17 (``today``: the release inline, and a renewal timer that
started a thread or task per slot), with today's release and the new timers
(``inline_unary``), and with the release off the caller's path
(``release_in_background``) over unary calls and over the Decide stream.

Prints JSON with each mode's numbers and the ratios of one run (targets: local
rate >= 40x central and >= 100,000/s, p99 decision <= 50 us, service CPU per
request <= 1/20; stream >= 2.5x unary; slot cycle with the release off the path
>= 1.8x today's).

Usage: python bench/local_decisions.py [--seconds 3] [--servers 3] [--strategy p2c]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadwarden.sdk import Client

if TYPE_CHECKING:  # mypy reads bench/ as the namespace package `bench`
    from bench._serve import start_service, stop_service
else:  # bench/ is on sys.path: the benchmarks run as scripts
    from _serve import start_service, stop_service

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def config_text(servers: int, strategy: str) -> str:
    entries = ",\n".join(f'  {{ id = "s{i:05d}", address = "10.0.{i // 250}.{i % 250}:8080" }}' for i in range(servers))
    return (
        f'[limits]\nroute_push_interval_ms = 250\n\n[pools.api]\nstrategy = "{strategy}"\nservers = [\n{entries},\n]\n'
        "\n[pools.slots]\nmax_concurrency = 10000\nmax_queue_length = 10000\n"
    )


class TimerPerSlot:
    """The sync client's renewal scheduler before issue 17: a ``threading.Timer`` (a thread
    start) per ``slot()``. The ``today`` baseline runs with it, so "today's" cycle is measured
    in the same run as the new ones."""

    def call_later(self, delay_s: float, callback: Any) -> Any:
        import threading

        timer = threading.Timer(delay_s, callback)
        timer.daemon = True
        timer.start()
        return timer


class TaskPerSlot:
    """The async client's renewal scheduler before issue 17: an asyncio task per ``slot()``."""

    def call_later(self, delay_s: float, callback: Any) -> Any:
        async def later() -> None:
            await asyncio.sleep(delay_s)
            await callback()

        return asyncio.get_running_loop().create_task(later())


def slot_rate(target: str, seconds: float, transport: str, background: bool, today: bool = False) -> dict[str, Any]:
    """``slot()`` cycles per second (acquire, an empty block, release), one thread, closed loop."""
    with Client(target, transport=transport, release_in_background=background, timeout_s=5.0) as client:
        if today:
            client._renewal_scheduler = TimerPerSlot()  # noqa: SLF001 - the scheduler as it was
        for _ in range(100):
            with client.slot("slots"):
                pass
        count = 0
        started = time.perf_counter()
        until = started + seconds
        while time.perf_counter() < until:
            for _ in range(20):
                with client.slot("slots"):
                    pass
            count += 20
        elapsed = time.perf_counter() - started
    return {"cycles": count, "cycles_per_s": count / elapsed}


async def async_slot_rate(
    target: str, seconds: float, transport: str, background: bool, today: bool = False
) -> dict[str, Any]:
    """``AsyncClient.slot()`` cycles per second, one task, closed loop."""
    from loadwarden.sdk import AsyncClient

    async with AsyncClient(target, transport=transport, release_in_background=background, timeout_s=5.0) as client:
        if today:
            client._renewal_scheduler = TaskPerSlot()  # noqa: SLF001 - the scheduler as it was
        for _ in range(100):
            async with client.slot("slots"):
                pass
        count = 0
        started = time.perf_counter()
        until = started + seconds
        while time.perf_counter() < until:
            for _ in range(20):
                async with client.slot("slots"):
                    pass
            count += 20
        elapsed = time.perf_counter() - started
    return {"cycles": count, "cycles_per_s": count / elapsed}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_for_table(client: Client, pool: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.select(pool).local:
        if time.monotonic() > deadline:
            raise SystemExit("no routing table arrived within 10 s")
        time.sleep(0.01)


def run_mode(target: str, pid: int, mode: str, seconds: float) -> dict[str, Any]:
    with Client(target, decisions=mode, outcome_buffer_size=2_000_000, timeout_s=5.0) as client:
        if mode == "local":
            wait_for_table(client, "api")
        for _ in range(200):  # warm up the channel and the code paths
            with client.route("api"):
                pass
        client.flush_outcomes(10)
        before_stats = client.outcome_stats()
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        until = started + seconds
        count = 0
        while True:
            for _ in range(100):
                with client.route("api"):
                    pass
            count += 100
            if time.perf_counter() >= until:
                break
        decided = time.perf_counter()
        client.flush_outcomes(60)
        delivered = time.perf_counter()
        cpu_after = cpu_seconds(pid)
        stats = client.outcome_stats()
        # The decision alone, timed call by call (outcomes reported so nothing stays pending).
        costs: list[float] = []
        for _ in range(min(20_000, max(1_000, count // 10))):
            t0 = time.perf_counter_ns()
            selection = client.select("api")
            costs.append((time.perf_counter_ns() - t0) / 1000.0)
            client.report_outcome(selection.decision_id, success=True, latency_ms=1.0)
        local_share = client.route_table_stats()["decisions"] / max(1, count)
        client.flush_outcomes(60)
    return {
        "decisions": count,
        "decisions_per_s": count / (delivered - started),
        "decide_only_per_s": count / (decided - started),
        "flush_s": delivered - decided,
        "outcomes_sent": stats.sent - before_stats.sent,
        "outcomes_dropped": stats.dropped - before_stats.dropped,
        "decision_us": {"p50": percentile(costs, 0.5), "p99": percentile(costs, 0.99)},
        "service_cpu_s_per_1000": (cpu_after - cpu_before) / count * 1000.0,
        "local_share": min(1.0, local_share) if mode == "local" else 0.0,
    }


async def select_rate(target: str, pid: int, transport: str, seconds: float, in_flight: int) -> dict[str, Any]:
    """Selects per second (outcomes included) over unary calls or one Decide stream."""
    import grpc

    from loadwarden.v1 import decision_pb2 as pb
    from loadwarden.v1 import decision_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        request = pb.SelectServerRequest(pool="api")
        done = 0
        pending: list[str] = []

        def outcomes() -> pb.ReportOutcomeRequest:
            batch = [pb.Outcome(decision_id=d, success=True, latency_ms=1.0) for d in pending]
            pending.clear()
            return pb.ReportOutcomeRequest(outcomes=batch)

        if transport == "unary":

            async def worker(until: float) -> None:
                nonlocal done
                loop = asyncio.get_running_loop()
                while loop.time() < until:
                    answer = await stub.SelectServer(request)
                    pending.append(answer.decision_id)
                    done += 1
                    if len(pending) >= 100:
                        await stub.ReportOutcome(outcomes())

            run = worker
        else:
            call = stub.Decide()
            futures: dict[int, asyncio.Future[Any]] = {}
            queued: list[pb.DecideCall] = []
            wake = asyncio.Event()
            next_id = 0

            async def reader() -> None:
                async for response in call:
                    for answer in response.answers:
                        futures.pop(answer.id).set_result(answer)

            async def writer() -> None:
                # What gathered while the last write was in flight goes as one message.
                while True:
                    await wake.wait()
                    wake.clear()
                    batch, queued[:] = queued[:1000], queued[1000:]
                    if queued:
                        wake.set()
                    await call.write(pb.DecideRequest(calls=batch))

            tasks = [asyncio.get_running_loop().create_task(f()) for f in (reader, writer)]

            async def ask(decide_call: pb.DecideCall) -> Any:
                future = asyncio.get_running_loop().create_future()
                futures[decide_call.id] = future
                queued.append(decide_call)
                wake.set()
                return await future

            async def worker(until: float) -> None:
                nonlocal done, next_id
                loop = asyncio.get_running_loop()
                while loop.time() < until:
                    next_id += 1
                    answer = await ask(pb.DecideCall(id=next_id, select=request))
                    pending.append(answer.select.decision_id)
                    done += 1
                    if len(pending) >= 100:
                        next_id += 1
                        await ask(pb.DecideCall(id=next_id, report_outcome=outcomes()))

            run = worker
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(run(loop.time() + 0.3) for _ in range(in_flight)))  # warm-up
        done = 0
        cpu_before = cpu_seconds(pid)
        started = loop.time()
        await asyncio.gather(*(run(started + seconds) for _ in range(in_flight)))
        elapsed = loop.time() - started
        cpu_after = cpu_seconds(pid)
        if transport == "stream":
            tasks[1].cancel()
            await call.done_writing()
            await tasks[0]
    return {
        "selects": done,
        "selects_per_s": done / elapsed,
        "service_cpu_s_per_1000": (cpu_after - cpu_before) / done * 1000.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per mode")
    parser.add_argument("--servers", type=int, default=3, help="servers in pool api")
    parser.add_argument("--strategy", default="p2c", help="the pool's strategy")
    parser.add_argument("--in-flight", type=int, default=32, help="central transports: requests outstanding")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lw-bench-local-") as tmp:
        proc, target = start_service(Path(tmp), config_text(args.servers, args.strategy))
        try:
            central = run_mode(target, proc.pid, "central", args.seconds)
            local = run_mode(target, proc.pid, "local", args.seconds)
            unary = asyncio.run(select_rate(target, proc.pid, "unary", args.seconds, args.in_flight))
            stream = asyncio.run(select_rate(target, proc.pid, "stream", args.seconds, args.in_flight))
            modes = {"today": ("unary", False, True), "inline_unary": ("unary", False, False)}
            modes["background_unary"] = ("unary", True, False)
            modes["background_stream"] = ("stream", True, False)
            slots = {
                "sync": {name: slot_rate(target, args.seconds, *mode) for name, mode in modes.items()},
                "async": {
                    name: asyncio.run(async_slot_rate(target, args.seconds, *mode)) for name, mode in modes.items()
                },
            }
        finally:
            stop_service(proc)
    cpu_ratio = (
        local["service_cpu_s_per_1000"] / central["service_cpu_s_per_1000"]
        if central["service_cpu_s_per_1000"]
        else None
    )
    print(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "servers": args.servers,
                "strategy": args.strategy,
                "seconds": args.seconds,
                "central": central,
                "local": local,
                "in_flight": args.in_flight,
                "unary": unary,
                "stream": stream,
                "slot": slots,
                "ratios": {
                    "local_over_central_rate": local["decisions_per_s"] / central["decisions_per_s"],
                    "local_over_central_service_cpu": cpu_ratio,
                    "stream_over_unary_rate": stream["selects_per_s"] / unary["selects_per_s"],
                    "slot_over_today": {
                        flavour: {
                            mode: rates[mode]["cycles_per_s"] / rates["today"]["cycles_per_s"]
                            for mode in ("inline_unary", "background_unary", "background_stream")
                        }
                        for flavour, rates in slots.items()
                    },
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
