"""The pieces of ``backend-sim`` and ``evaluate`` that need no network: pure, fake clocks, seeded RNGs.

FIFO worker hand-over and cancellation, the backend's timing draws and busy
fraction, option and ``[batch]`` parsing (errors name the key), seeded arrival
times, the service config ``evaluate`` writes, the batch figures, and what the
traffic's SDK client records (decision sources) and the report makes of outages.
"""

from __future__ import annotations

import asyncio
import math
import random
import tomllib
from pathlib import Path
from typing import Any

import pytest

from loadwarden.backend_sim import (
    Arrivals,
    ClosedLoop,
    Phase,
    Report,
    RequestRecord,
    SimServer,
    StrategyRun,
    TrafficResult,
)
from loadwarden.backend_sim._backend import BackendDown, FifoWorkers, SimulatedBackend, SimulatedFailure
from loadwarden.backend_sim._backend_cli import UsageError, parse_backend
from loadwarden.backend_sim._batch_mode import BatchRecord, parse_batch, summarize_batches
from loadwarden.backend_sim._evaluate import Outage, outage_extra, service_config, to_toml, traffic_plan
from loadwarden.backend_sim._evaluate_client import (
    ClientJob,
    ClientSettings,
    DecisionSources,
    RecordingClient,
    client_options,
    read_records,
    write_records,
)
from loadwarden.backend_sim._processes import launch_argv
from loadwarden.backend_sim._report import outages, outages_markdown, report_dict
from loadwarden.backend_sim._scenario_file import parse_scenario
from loadwarden.backend_sim._traffic import TrafficPlan, arrival_times, client_shares, planned_requests
from loadwarden.sdk import AsyncClient, BreakerConfig, Lease, RetryConfig, Selection, SlotDenied, UnavailableError
from loadwarden.server.app._config import parse_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- FIFO workers ---------------------------------------------------------------------


async def test_workers_are_handed_out_in_arrival_order_and_never_exceed_capacity() -> None:
    workers = FifoWorkers(2)
    order: list[int] = []
    held = 0
    most = 0

    async def job(i: int, gate: asyncio.Event) -> None:
        nonlocal held, most
        await workers.acquire()
        held += 1
        most = max(most, held)
        order.append(i)
        await gate.wait()
        held -= 1
        workers.release()

    gates = [asyncio.Event() for _ in range(6)]
    tasks = [asyncio.create_task(job(i, gates[i])) for i in range(6)]
    await asyncio.sleep(0)
    assert order == [0, 1] and workers.queued == 4
    for i in (1, 0, 2, 3, 4, 5):  # finishing out of order does not reorder the queue
        gates[i].set()
        for _ in range(3):
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)

    assert order == [0, 1, 2, 3, 4, 5]
    assert most == 2 and workers.busy == 0 and workers.queued == 0


async def test_a_waiter_cancelled_in_the_queue_leaves_it_and_loses_no_worker() -> None:
    workers = FifoWorkers(1)
    await workers.acquire()
    waiting = asyncio.create_task(workers.acquire())
    behind = asyncio.create_task(workers.acquire())
    await asyncio.sleep(0)
    assert workers.queued == 2

    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert workers.queued == 1
    workers.release()
    await behind

    assert workers.busy == 1 and workers.queued == 0


async def test_a_waiter_cancelled_just_after_being_handed_a_worker_passes_it_on() -> None:
    workers = FifoWorkers(1)
    await workers.acquire()
    first = asyncio.create_task(workers.acquire())
    second = asyncio.create_task(workers.acquire())
    await asyncio.sleep(0)

    workers.release()  # hands the worker to ``first``...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    await second

    assert workers.busy == 1 and workers.queued == 0


def test_workers_need_a_positive_capacity() -> None:
    with pytest.raises(ValueError, match=r"^capacity:"):
        FifoWorkers(0)


# --- the backend's draws ----------------------------------------------------------------


def test_constant_service_is_the_mean_and_items_scale_it() -> None:
    backend = SimulatedBackend(
        SimServer("b", speed=2, base_ms=100, service="constant"),
        rng=random.Random(1),
        clock=FakeClock(),
        item_cost=0.25,
    )

    assert backend.service_ms() == 50.0
    assert backend.service_ms(5) == 50.0 * (1 + 0.25 * 4)


def test_exponential_service_times_are_seeded_with_the_scheduled_mean() -> None:
    spec = SimServer("b", base_ms=20, schedule=(Phase(start_s=10, duration_s=10, slowdown=3),))
    clock = FakeClock()
    first = SimulatedBackend(spec, rng=random.Random(5), clock=clock)
    again = SimulatedBackend(spec, rng=random.Random(5), clock=clock)

    draws = [first.service_ms() for _ in range(4000)]
    assert draws[:50] == [again.service_ms() for _ in range(50)]
    assert sum(draws) / len(draws) == pytest.approx(20, rel=0.06)
    clock.now += 12  # inside the slowdown phase
    slowed = [first.service_ms() for _ in range(4000)]
    assert sum(slowed) / len(slowed) == pytest.approx(60, rel=0.06)


def test_busy_fraction_is_the_mean_share_of_busy_workers_since_the_last_reading() -> None:
    clock = FakeClock()
    backend = SimulatedBackend(SimServer("b", workers=4), rng=random.Random(1), clock=clock)
    backend.begin()
    backend.in_service = 2
    backend._account(clock.now)
    clock.now += 1.0
    backend._account(clock.now)
    backend.in_service = 4
    clock.now += 1.0

    assert backend.busy_fraction() == pytest.approx((2 * 1 + 4 * 1) / (4 * 2))
    clock.now += 1.0
    assert backend.busy_fraction() == pytest.approx(1.0)


async def test_an_outage_refuses_before_queueing_and_a_drawn_failure_after_service() -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    spec = SimServer(
        "b",
        base_ms=40,
        service="constant",
        failure_probability=1.0,
        schedule=(Phase(start_s=0, duration_s=5, outage=True),),
    )
    backend = SimulatedBackend(spec, rng=random.Random(1), clock=clock, sleep=sleep)
    backend.begin()

    with pytest.raises(BackendDown):
        await backend.handle()
    assert slept == [] and backend.arrived == 0 and backend.refused == 1
    clock.now += 5
    with pytest.raises(SimulatedFailure):
        await backend.handle()
    assert slept == [0.04] and backend.failed == 1 and backend.in_service == 0


async def test_handle_rejects_a_bad_item_count() -> None:
    backend = SimulatedBackend(SimServer("b"), rng=random.Random(1), clock=FakeClock())

    with pytest.raises(ValueError, match=r"^items:"):
        await backend.handle(0)


# --- --backend ------------------------------------------------------------------------------


def test_a_backend_option_is_parsed_into_a_sim_server() -> None:
    server = parse_backend("id=b1,speed=2,workers=4,base_ms=100,service=constant,failure_rate=0.01,weight=3")

    assert server == SimServer(
        "b1", speed=2.0, workers=4, base_ms=100.0, service="constant", failure_probability=0.01, weight=3
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("speed=2", "--backend.id"),
        ("id=b1,colour=red", "--backend.colour"),
        ("id=b1,workers=two", "--backend.workers"),
        ("id=b1,workers=0", "--backend.workers"),
        ("id=b1,base_ms=-5", "--backend.base_ms"),
        ("id=b1,failure_rate=2", "--backend.failure_rate"),
        ("id=b1,service=normal", "--backend.service"),
        ("id=b1,speed=1,speed=2", "--backend.speed"),
    ],
)
def test_a_bad_backend_option_names_its_key(text: str, key: str) -> None:
    with pytest.raises(UsageError, match=f"^{key}:"):
        parse_backend(text)


# --- arrivals ---------------------------------------------------------------------------------


def test_arrival_times_depend_on_the_seed_alone() -> None:
    arrivals = Arrivals(rate_per_s=200, duration_s=5)

    first = arrival_times(arrivals, random.Random(7))
    assert first == arrival_times(arrivals, random.Random(7))
    assert first != arrival_times(arrivals, random.Random(8))
    assert first == sorted(first) and first[-1] <= 5
    assert len(first) == pytest.approx(1000, rel=0.1)


def test_a_request_count_stops_arrivals_first() -> None:
    assert len(arrival_times(Arrivals(rate_per_s=200, requests=50, duration_s=100), random.Random(1))) == 50


def test_a_ramp_raises_the_rate_linearly() -> None:
    times = arrival_times(Arrivals(rate_per_s=100, rate_end_per_s=500, duration_s=20), random.Random(3))

    first = sum(1 for t in times if t < 4)  # mean rate 140/s over the first 4 s
    last = sum(1 for t in times if t >= 16)  # mean rate 460/s over the last 4 s
    assert first == pytest.approx(560, rel=0.15)
    assert last == pytest.approx(1840, rel=0.1)
    assert len(times) == pytest.approx(6000, rel=0.05)


def test_planned_requests_counts_open_loop_arrivals() -> None:
    plan = TrafficPlan("route", "sim", Arrivals(rate_per_s=50, duration_s=2), seed=4)

    assert isinstance(plan.traffic, Arrivals)
    assert planned_requests(plan) == len(arrival_times(plan.traffic, random.Random(4)))


def test_a_bad_plan_names_its_field() -> None:
    with pytest.raises(ValueError, match=r"^mode:"):
        TrafficPlan("teleport", "sim", Arrivals(rate_per_s=1, requests=1))
    with pytest.raises(ValueError, match=r"^batch:"):
        TrafficPlan("batch", "sim", Arrivals(rate_per_s=1, requests=1))


def test_client_shares_split_the_arrivals_by_the_seed_alone() -> None:
    first = client_shares(3_000, 3, seed=5)

    assert first == client_shares(3_000, 3, seed=5) and first != client_shares(3_000, 3, seed=6)
    assert set(first) == {0, 1, 2}
    assert all(abs(first.count(c) - 1_000) < 100 for c in range(3))
    assert client_shares(10, 1, seed=5) == [0] * 10


def test_a_bad_share_names_its_field() -> None:
    arrivals = Arrivals(rate_per_s=1, requests=1)
    with pytest.raises(ValueError, match=r"^clients:"):
        TrafficPlan("route", "sim", arrivals, clients=0)
    with pytest.raises(ValueError, match=r"^client:"):
        TrafficPlan("route", "sim", arrivals, client=3, clients=3)
    with pytest.raises(ValueError, match=r"^client:"):
        TrafficPlan("route", "sim", arrivals, client=-1, clients=3)


@pytest.mark.parametrize(
    "traffic",
    [Arrivals(rate_per_s=50, duration_s=2, max_in_flight=9), ClosedLoop(users=4, think_ms=5, requests=30)],
    ids=["open", "closed"],
)
def test_a_client_job_round_trips_through_its_file(traffic: Any) -> None:
    job = ClientJob(
        target="127.0.0.1:5",
        decisions="local",
        plan=TrafficPlan("route", "sim", traffic, seed=4, timeout_ms=250.0, client=1, clients=3),
        addresses={"a": "127.0.0.1:6", "b": "127.0.0.1:7"},
        go_path="/tmp/go.json",
        out_path="/tmp/client1.jsonl",
        ready_timeout_s=30.0,
        client=ClientSettings(retry=False, fallback=False),
    )

    assert ClientJob.from_json(job.to_json()) == job
    with pytest.raises(ValueError, match="not a client job"):
        ClientJob.from_json('{"target": "x"}')


def test_client_records_round_trip_through_their_file(tmp_path: Path) -> None:
    records = (RequestRecord(0.25, "a", 12.5, True, False), RequestRecord(0.5, "", 0.0, False, False))
    result = TrafficResult(records, dropped=1, local=1, duration_s=0.3)

    sources = DecisionSources(FakeClock())
    sources.add("fallback", 100.25)
    write_records(tmp_path / "c.jsonl", result, {"route_tables": {"decisions": 1.0}}, sources)
    head, back = read_records(tmp_path / "c.jsonl")

    assert back == list(records)
    assert DecisionSources.from_json(head["decisions"]).totals()["fallback"] == 1
    assert head["counters"]["dropped"] == 1 and head["counters"]["local"] == 1 and head["duration_s"] == 0.3
    assert head["stats"] == {"route_tables": {"decisions": 1.0}}
    assert not (tmp_path / "c.jsonl.tmp").exists()


# --- [batch] ----------------------------------------------------------------------------------


def test_the_batch_table_splits_worker_settings_from_operation_settings() -> None:
    settings = parse_batch(
        {
            "operation": "import",
            "workers": 2,
            "item_cost": 0.2,
            "max_batch_size": 50,
            "min_batch_size": 5,
            "cooldown_ms": 1000,
        },
        pool="sim",
        controllers=["threshold", "latency_target"],
        params={"latency_target": {"target_latency_ms": 400}},
    )

    assert (settings.operation, settings.workers, settings.item_cost) == ("import", 2, 0.2)
    assert settings.default_batch_size == 5
    assert settings.operation_config("latency_target", {"target_latency_ms": 400}, "sim") == {
        "max_batch_size": 50,
        "min_batch_size": 5,
        "cooldown_ms": 1000,
        "target_latency_ms": 400,
        "mode": "latency_target",
        "load_source": "pool",
        "pool": "sim",
    }


@pytest.mark.parametrize(
    ("table", "params", "key"),
    [
        ({"workers": 0}, {}, "batch.workers"),
        ({"item_cost": -1}, {}, "batch.item_cost"),
        ({"mode": "threshold"}, {}, "batch.mode"),
        ({"max_batch_size": 5, "min_batch_size": 10}, {}, "batch.min_batch_size"),
        ({"batch_colour": 1}, {}, "batch.batch_colour"),
        ({}, {"latency_target": {"backoff_ratio": 2}}, "params.latency_target.backoff_ratio"),
        ({}, {}, "params.latency_target.target_latency_ms"),  # latency_target needs a target
    ],
)
def test_a_bad_batch_setting_names_its_key(table: dict, params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        parse_batch(table, pool="sim", controllers=["threshold", "latency_target"], params=params)


def test_batch_figures_are_per_item_and_leave_out_the_warmup() -> None:
    records = [
        BatchRecord(0.5, "b", 10, 100.0, True, 20.0),
        BatchRecord(1.0, "b", 10, 100.0, True, 30.0),
        BatchRecord(2.0, "b", 20, 400.0, False, None),
        BatchRecord(3.0, "b", 5, 50.0, True, 90.0),
    ]

    s = summarize_batches(records, warmup_s=0.9)

    assert s is not None and s.batches == 3 and s.items == 15
    assert s.mean_size == pytest.approx(35 / 3)
    assert s.p50_item_ms == 10.0 and s.p99_item_ms == 20.0 and s.p99_batch_ms == 400.0
    assert s.success_rate == pytest.approx(2 / 3)
    assert s.items_per_s == pytest.approx(15 / (3.05 - 1.0))
    assert summarize_batches(records, warmup_s=10) is None


# --- the config evaluate writes ------------------------------------------------------------


SCENARIO = {
    "name": "t",
    "seed": 9,
    "mode": "slot",
    "strategies": ["fixed", "aimd"],
    "load_report_interval_ms": 250,
    "timeout_ms": 800,
    "pool": {"max_concurrency": 8, "max_wait_ms": 200},
    "params": {"aimd": {"min_limit": 2, "max_limit": 16}},
    "traffic": {"rate_per_s": 50, "duration_s": 2},
    "backends": [{"id": "b", "count": 2, "workers": 4}],
}


def test_the_service_config_is_valid_and_carries_the_strategy() -> None:
    spec = parse_scenario(SCENARIO, "test")

    parsed = parse_config(tomllib.loads(service_config(spec, "aimd", None)))  # the service's own parser

    [pool] = parsed.pools
    assert pool.settings.name == "sim" and pool.servers == ()
    assert pool.settings.limit_algorithm == "aimd" and dict(pool.settings.limit_params) == {
        "min_limit": 2,
        "max_limit": 16,
    }
    assert pool.settings.max_concurrency == 8 and pool.settings.load_report_ttl_ms == 10_000  # as the simulator's
    assert parsed.seed == 9 and not parsed.monitor.enabled
    plan = traffic_plan(spec, None)
    assert plan.mode == "slot" and plan.slot_wait_s == 0.2 and plan.timeout_s == 0.8


def test_the_push_interval_reaches_the_service_config_only_when_set() -> None:
    route = {**SCENARIO, "mode": "route", "strategies": ["p2c"], "params": {}, "pool": {}}
    default = parse_config(tomllib.loads(service_config(parse_scenario(route, "test"), "p2c", None)))
    quick = parse_scenario({**route, "route_push_interval_ms": 50}, "test")

    parsed = parse_config(tomllib.loads(service_config(quick, "p2c", None)))

    assert default.limits.route_push_interval_ms == 10 and parsed.limits.route_push_interval_ms == 50


def test_toml_writing_round_trips() -> None:
    tables = {
        "a": {"s": 'quote " and \\ back', "i": 3, "f": 0.1, "b": True, "l": [1, 2], "t": {"x": 1, "odd key": "y"}}
    }

    assert tomllib.loads(to_toml(tables)) == tables
    with pytest.raises(ValueError):
        to_toml({"a": {"x": math.nan}})


def test_the_launcher_runs_the_command_itself() -> None:
    argv = launch_argv(["echo", "hi"], parent_pid=123)

    assert argv[-2:] == ["echo", "hi"] and argv[3] == "123"


@pytest.mark.parametrize("name", ["overload", "batch-ramp", "batch-surges"])
def test_the_shipped_scenarios_give_valid_service_configs_for_every_strategy(name: str) -> None:
    from loadwarden.backend_sim import load_scenario
    from loadwarden.backend_sim._evaluate import check_batch

    spec = load_scenario(Path(__file__).resolve().parents[3] / "scenarios" / f"{name}.toml").for_evaluate()
    batch = check_batch(spec)

    assert (batch is not None) == (spec.mode == "batch")
    for strategy in spec.strategies:
        parsed = parse_config(tomllib.loads(service_config(spec, strategy, batch)))
        [pool] = parsed.pools
        if spec.mode == "slot":
            assert pool.settings.limit_algorithm == strategy
        else:
            [operation] = parsed.operations
            assert operation.mode == spec.strategy_of(strategy)  # a variant runs its strategy
            assert operation.load_source == "pool" and operation.pool == "sim"
            assert parsed.planning.enabled == (strategy in spec.variants)
            assert parsed.monitor.enabled and parsed.monitor.memory_weight == 0  # the pool score is the CPU alone


# --- through the SDK, and outages -----------------------------------------------------------


def test_the_traffic_client_has_the_sdks_defaults_unless_turned_off() -> None:
    defaults = client_options(ClientSettings(), "route")
    off = client_options(ClientSettings(breaker=False, retry=False, fallback=False), "route")

    assert defaults["breaker"] == BreakerConfig() and defaults["retry"] == RetryConfig()
    assert "slot_fallback" not in defaults and defaults["timeout_s"] > 0
    assert (
        off["breaker"] is None and off["retry"] is None and "slot_fallback" not in off
    )  # route: refused by the client
    assert client_options(ClientSettings(fallback=False), "slot")["slot_fallback"] == "fail_closed"
    assert ClientSettings().describe() == "breaker on, retries on, fallback on"


def test_decision_sources_count_by_time_from_the_start() -> None:
    clock = FakeClock()
    sources = DecisionSources(clock)
    sources.add("service", 99.0)  # before the start: counted at 0
    clock.now = 101.0
    sources.restart()  # forgets it; times count from 101
    for at, source in ((101.0, "service"), (102.005, "fallback"), (102.5, "fallback"), (103.2, "service")):
        sources.add(source, at)

    assert sources.totals() == {"service": 2, "local": 0, "fallback": 2, "refused": 0, "failed": 0}
    assert sources.between(1.0, 2.0) == {"service": 0, "local": 0, "fallback": 2, "refused": 0, "failed": 0}
    assert sources.first("service", 1.6) == pytest.approx(2.2)
    assert sources.first("fallback", 2.0) is None
    series = sources.series(1.0, 2.5)
    assert series["t_s"] == [0.0, 1.0, 2.0] and series["fallback"] == [0.0, 2.0, 0.0] and series["service"][2] == 1
    merged = DecisionSources(clock)
    merged.merge([DecisionSources.from_json(sources.to_json()), sources])
    assert merged.totals()["fallback"] == 4
    with pytest.raises(ValueError, match="unknown decision source"):
        DecisionSources.from_json({"psychic": [[1, 1]]})


def _selection(**flags: Any) -> Selection:
    return Selection("" if flags.get("fallback") else "d1", "a", "127.0.0.1:9", "p2c", False, **flags)


def test_the_recording_client_counts_every_decision_and_can_refuse_the_fallback(monkeypatch: Any) -> None:
    answers: list[Any] = [_selection(), _selection(fallback=True), _selection(local=True), UnavailableError("gone")]

    async def select(self: AsyncClient, pool: str, **_: Any) -> Selection:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(AsyncClient, "select", select)

    async def run() -> tuple[dict[str, int], dict[str, int]]:
        using = RecordingClient("127.0.0.1:1", breaker=None, retry=None)  # never dialled: select is the fake
        for _ in range(3):
            await using.select("api")
        with pytest.raises(UnavailableError):
            await using.select("api")
        refusing = RecordingClient("127.0.0.1:1", fallback=False, breaker=None, retry=None)
        answers.append(_selection(fallback=True))
        with pytest.raises(UnavailableError, match="fallback = false"):
            await refusing.select("api")
        await using.close()
        await refusing.close()
        return using.sources.totals(), refusing.sources.totals()

    using, refusing = asyncio.run(run())

    assert using == {"service": 1, "local": 1, "fallback": 1, "refused": 0, "failed": 1}
    assert refusing["refused"] == 1 and sum(refusing.values()) == 1


def test_the_recording_client_counts_slots_by_who_answered(monkeypatch: Any) -> None:
    from datetime import UTC, datetime

    lease = Lease("local-1", "api", 0.0, datetime.now(UTC), None, None, "", 0.0, fallback=True)
    answers: list[Any] = [
        lease,
        SlotDenied("full", denial="AT_CAPACITY", pool="api"),
        SlotDenied("down", denial="CONTROL_PLANE_UNAVAILABLE", pool="api"),
    ]

    async def acquire_slot(self: AsyncClient, pool: str, **_: Any) -> Lease:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(AsyncClient, "acquire_slot", acquire_slot)

    async def run() -> dict[str, int]:
        client = RecordingClient("127.0.0.1:1", breaker=None, retry=None)
        await client.acquire_slot("api")
        for _ in range(2):
            with pytest.raises(SlotDenied):
                await client.acquire_slot("api")
        await client.close()
        return client.sources.totals()

    assert asyncio.run(run()) == {"service": 1, "local": 0, "fallback": 1, "refused": 1, "failed": 0}


def test_a_restarted_service_gets_the_backends_in_its_config() -> None:
    spec = parse_scenario({**SCENARIO, "backends": [{"id": "b", "count": 2, "weight": 3}]}, "test")

    parsed = parse_config(tomllib.loads(service_config(spec, "aimd", None, servers={"b-0": "h:1", "b-1": "h:2"})))

    [pool] = parsed.pools
    assert [(s.id, s.address, s.weight) for s in pool.servers] == [("b-0", "h:1", 3), ("b-1", "h:2", 3)]
    assert pool.settings.limit_algorithm == "aimd"  # the rest as the first start's


def _outage_report(ready_s: float | None) -> Report:
    spec = parse_scenario({**SCENARIO, "mode": "route", "strategies": ["p2c"], "params": {}, "pool": {}}, "test")
    records = [
        RequestRecord(t / 10, "b-0" if t < 20 or t >= 40 else "", 5.0 + t, t < 20 or t >= 40, False) for t in range(60)
    ]
    clock = FakeClock()
    sources = DecisionSources(clock)
    for t in range(60):
        sources.add("service" if t < 20 or t >= 43 else "refused", 100.0 + t / 10)
    outage = Outage(0, "kill_service", 2.0, 2.0, 11, -9, 3.5 if ready_s else None, ready_s, 12 if ready_s else None)
    extra = {"outages": outage_extra([outage], sources, 6.0)}
    run = StrategyRun("p2c", records, ("b-0", "b-1"), extra=extra)
    return Report(spec, (run,), kind="evaluate", meta={"client": ClientSettings(fallback=False).as_dict()})


def test_an_outage_shows_what_the_requests_arriving_in_it_saw() -> None:
    report = _outage_report(ready_s=4.0)

    [figures] = outages(report)
    [recorded] = report.runs[0].extra["outages"]

    assert recorded["decisions"]["refused"] == 20 and recorded["decisions"]["service"] == 0
    assert recorded["back_to_service_s"] == pytest.approx(0.3, abs=0.011)  # one 10 ms bin
    assert (figures.requests, figures.success_rate, figures.back) == (20, 0.0, True)
    assert math.isnan(figures.p99_ms)  # none reached a backend
    text = outages_markdown(report)
    assert "SDK breaker on, retries on, fallback off" in text
    assert "| p2c | 2.00–4.00 | 20 | 0.00 | – | 0 | 0 | 20 | 0 | 0.30 |" in text
    assert report_dict(report)["runs"][0]["outages"][0]["success_rate"] == 0.0


def test_an_outage_without_a_restart_lasts_until_the_end() -> None:
    report = _outage_report(ready_s=None)

    [figures] = outages(report)

    assert not figures.back and figures.until_s == 6.0 and figures.back_to_service_s is None
    assert figures.requests == 40 and figures.success_rate == pytest.approx(0.5)
    assert "2.00–end (not restarted)" in outages_markdown(report)
