"""Scenario files: every key parsed, every bad value named, overrides applied in order."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from loadwarden.backend_sim import (
    Arrivals,
    ClosedLoop,
    Phase,
    ScenarioError,
    SimServer,
    load_scenario,
    parse_scenario,
)
from loadwarden.backend_sim._scenario_file import decision_overrides
from loadwarden.policy.strategies import STRATEGIES

REPO = Path(__file__).resolve().parents[3]

FULL = """
name = "full"
description = "every key"
seed = 7
mode = "route"
strategies = ["round_robin", "q_linear", "peak_ewma"]
warmup_s = 2.5
timeout_ms = 800
load_report_interval_ms = 250

[params.q_linear]
epsilon = 0.05
sample_size = 4

[pool]
load_report_ttl_ms = 2000
outlier_detection = { disabled = true }

[traffic]
kind = "open"
load = 0.5
load_end = 1.5
duration_s = 30
requests = 5000
max_in_flight = 64

[[backends]]
id = "a"
count = 3
speed = 2
workers = 4
base_ms = 20
service = "constant"
failure_rate = 0.01
weight = 3

[[backends.schedule]]
start_s = 10
duration_s = 5
service_ms = 400
slowdown = 2

[[backends.schedule]]
start_s = 20
duration_s = 1
outage = true

[[backends]]
id = "z"

[simulate]
requests = 9000
strategies = ["p2c"]

[simulate.params.q_linear]
epsilon = 0.2

[evaluate]
duration_s = 12
max_backends_per_process = 50
startup_timeout_s = 20

[evaluate.traffic]
max_in_flight = 32

[evaluate.client]
retry = false

[[evaluate.faults]]
kind = "kill_service"
at_s = 4
restart_after_s = 2.5

[[evaluate.faults]]
kind = "kill_service"
at_s = 8
"""

MINIMAL: dict[str, Any] = {
    "strategies": ["round_robin"],
    "traffic": {"rate_per_s": 100, "requests": 1000},
    "backends": [{"id": "a"}],
}


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parse(**changes: Any) -> Any:
    """MINIMAL with top-level keys replaced (None removes one)."""
    raw = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return parse_scenario(raw, "x.toml")


def error(**changes: Any) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse(**changes)
    return caught.value


# --- good files -------------------------------------------------------------------


def test_every_key_is_read(tmp_path: Path) -> None:
    spec = load_scenario(write(tmp_path, FULL))

    assert (spec.name, spec.description, spec.seed, spec.mode) == ("full", "every key", 7, "route")
    assert spec.strategies == ("round_robin", "q_linear", "peak_ewma")
    assert spec.strategy_params("q_linear") == {"epsilon": 0.05, "sample_size": 4}
    assert spec.strategy_params("round_robin") == {}
    assert (spec.warmup_s, spec.timeout_ms, spec.load_report_interval_ms) == (2.5, 800.0, 250.0)
    assert dict(spec.pool) == {"load_report_ttl_ms": 2000, "outlier_detection": {"disabled": True}}
    assert spec.source == str(tmp_path / "s.toml") and spec.section is None
    # count expansion: ids a-0..a-2 share every setting; z takes the defaults
    assert [s.id for s in spec.servers] == ["a-0", "a-1", "a-2", "z"]
    a0 = spec.servers[0]
    assert (a0.speed, a0.workers, a0.base_ms, a0.service, a0.failure_probability, a0.weight) == (
        2.0,
        4,
        20.0,
        "constant",
        0.01,
        3,
    )
    assert a0.schedule == (Phase(10, 5, service_ms=400, slowdown=2), Phase(20, 1, outage=True))
    assert spec.servers[3] == SimServer("z")
    # load resolves against capacity: 3 x (4 workers x speed 2 x 1000 / 20 ms) + 1000 / 10 ms
    capacity = 3 * 400 + 100
    assert spec.capacity_per_s == pytest.approx(capacity)
    t = spec.traffic
    assert (t.kind, t.load, t.load_end, t.duration_s, t.requests, t.max_in_flight) == ("open", 0.5, 1.5, 30, 5000, 64)
    assert t.rate_per_s == pytest.approx(0.5 * capacity) and t.rate_end_per_s == pytest.approx(1.5 * capacity)
    assert t.rate_at(15) == pytest.approx(capacity) and t.rate_at(60) == pytest.approx(1.5 * capacity)


def test_the_scenario_for_the_simulator_carries_everything(tmp_path: Path) -> None:
    spec = load_scenario(write(tmp_path, FULL))

    scenario = spec.scenario()

    assert scenario.servers == spec.servers and scenario.seed == 7
    assert spec.traffic.rate_per_s is not None
    assert scenario.arrivals == Arrivals(spec.traffic.rate_per_s, 5000, 30.0, spec.traffic.rate_end_per_s, 64)
    assert (scenario.timeout_ms, scenario.load_report_interval_ms) == (800.0, 250.0)
    assert scenario.pool_settings == {"load_report_ttl_ms": 2000, "outlier_detection": {"disabled": True}}
    assert spec.pool_config("q_linear") == {
        "load_report_ttl_ms": 2000,
        "outlier_detection": {"disabled": True},
        "strategy": "q_linear",
        "strategy_params": {"epsilon": 0.05, "sample_size": 4},
    }


def test_sections_apply_over_the_file_and_keep_the_rest(tmp_path: Path) -> None:
    spec = load_scenario(write(tmp_path, FULL))

    sim = spec.for_simulate()
    ev = spec.for_evaluate()

    assert sim.section == "simulate" and sim.strategies == ("p2c",) and sim.traffic.requests == 9000
    assert sim.traffic.duration_s == 30 and sim.strategy_params("q_linear") == {"epsilon": 0.2, "sample_size": 4}
    assert sim.options == {}
    assert ev.section == "evaluate" and ev.strategies == spec.strategies
    assert (ev.traffic.duration_s, ev.traffic.max_in_flight, ev.traffic.requests) == (12, 32, 5000)
    assert ev.options.keys() == {"max_backends_per_process", "startup_timeout_s", "client", "faults"}
    assert (ev.options["max_backends_per_process"], ev.options["startup_timeout_s"]) == (50, 20.0)
    client = ev.options["client"]
    assert (client.breaker, client.retry, client.fallback) == (True, False, True)
    assert [(f.kind, f.at_s, f.restart_after_s) for f in ev.options["faults"]] == [
        ("kill_service", 4.0, 2.5),
        ("kill_service", 8.0, None),
    ]
    assert spec.traffic.requests == 5000  # the base spec is unchanged


def test_load_overrides_win_over_sections(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)

    spec = load_scenario(path, seed=3, strategies=["least_connections"], requests=100)

    assert spec.seed == 3 and spec.strategies == ("least_connections",) and spec.traffic.requests == 100
    sim = spec.for_simulate()
    assert sim.seed == 3 and sim.strategies == ("least_connections",) and sim.traffic.requests == 100
    later = sim.with_overrides(duration_s=None, load_end=None, traffic={"max_in_flight": 5})
    assert later.section == "simulate" and later.traffic.duration_s is None and later.traffic.max_in_flight == 5
    assert later.traffic.requests == 100  # earlier overrides stay


def test_defaults_and_name_from_the_file_stem(tmp_path: Path) -> None:
    text = '[traffic]\nrate_per_s = 5\nduration_s = 2\n[[backends]]\nid = "x"\nstrategies = ["p2c"]\n'
    text = 'strategies = ["p2c"]\n' + text.replace('strategies = ["p2c"]\n', "")
    spec = load_scenario(write(tmp_path, text, "my-scenario.toml"))

    assert (spec.name, spec.description, spec.seed, spec.mode) == ("my-scenario", "", 1, "route")
    assert (spec.warmup_s, spec.timeout_ms, spec.load_report_interval_ms) == (0.0, None, 1000.0)
    assert spec.traffic.max_in_flight == 1000 and spec.traffic.requests is None and spec.traffic.kind == "open"
    assert dict(spec.pool) == {} and dict(spec.batch) == {} and dict(spec.params) == {}


def test_closed_loop_traffic() -> None:
    spec = parse(traffic={"kind": "closed", "users": 12, "think_ms": 5, "duration_s": 3})

    t = spec.traffic
    assert (t.kind, t.users, t.think_ms, t.rate_per_s, t.max_in_flight) == ("closed", 12, 5.0, None, None)
    assert spec.scenario().arrivals == ClosedLoop(12, 5.0, None, 3.0)


def test_slot_and_batch_modes_check_their_own_registries() -> None:
    slot = parse(
        mode="slot",
        strategies=["fixed", "aimd", "gradient2"],
        pool={"max_concurrency": 8},
        params={"aimd": {"backoff_ratio": 0.8}},
    )
    batch = parse(
        mode="batch",
        strategies=["threshold", "latency_target"],
        params={"latency_target": {"target_latency_ms": 200}},
        batch={"operation": "import"},
    )

    assert slot.strategies == ("fixed", "aimd", "gradient2")
    assert slot.pool_config("aimd") == {
        "max_concurrency": 8,
        "limit_algorithm": "aimd",
        "limit_params": {"backoff_ratio": 0.8},
    }
    assert batch.strategies == ("threshold", "latency_target") and dict(batch.batch) == {"operation": "import"}


def test_shipped_scenarios_load(tmp_path: Path) -> None:
    for name in ("heterogeneous", "one-slow", "large"):
        spec = load_scenario(REPO / "scenarios" / f"{name}.toml")
        assert spec.name == name and spec.mode == "route"
        spec.for_simulate()
        spec.for_evaluate()
    het = load_scenario(REPO / "scenarios" / "heterogeneous.toml")
    assert [s.speed for s in het.servers] == [1, 1, 2, 2, 4] and het.traffic.load == 0.8
    assert set(het.strategies) == set(STRATEGIES)
    one_slow = load_scenario(REPO / "scenarios" / "one-slow.toml")
    assert len(one_slow.servers) == 11 and one_slow.timeout_ms == 1000
    assert [p.service_ms for s in one_slow.servers for p in s.schedule] == [2000]
    large = load_scenario(REPO / "scenarios" / "large.toml").for_simulate()
    assert len(large.servers) == 1000 and large.traffic.requests == 1_000_000


# --- bad files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"strategies": ["round_robin", "nope"]}, "strategies[1]", "unknown routing strategy 'nope'"),
        ({"strategies": ["p2c", "p2c"]}, "strategies[1]", "listed twice"),
        ({"strategies": []}, "strategies", "non-empty list"),
        ({"strategies": "p2c"}, "strategies", "non-empty list"),
        ({"strategies": None}, "strategies", "is required"),
        ({"traffic": {"rate_per_s": -5, "requests": 10}}, "traffic.rate_per_s", "must be a finite number > 0, got -5"),
        ({"traffic": {"rate_per_s": math.inf, "requests": 10}}, "traffic.rate_per_s", "finite"),
        ({"traffic": {"load": 0.5, "rate_per_s": 5, "requests": 10}}, "traffic.load", "exactly one"),
        ({"traffic": {"requests": 10}}, "traffic.rate_per_s", "exactly one"),
        ({"traffic": {"rate_per_s": 5}}, "traffic.duration_s", "or both"),
        ({"traffic": {"rate_per_s": 5, "requests": 0}}, "traffic.requests", "integer in [1, 10000000]"),
        ({"traffic": {"rate_per_s": 5, "requests": 2.5}}, "traffic.requests", "integer"),
        ({"traffic": {"rate_per_s": 5, "requests": 9, "rate_end_per_s": 9}}, "traffic.rate_end_per_s", "duration_s"),
        ({"traffic": {"load": 1, "requests": 9, "rate_end_per_s": 9}}, "traffic.rate_end_per_s", "load_end"),
        ({"traffic": {"rate_per_s": 5, "requests": 9, "load_end": 2}}, "traffic.load_end", "rate_end_per_s"),
        ({"traffic": {"rate_per_s": 5, "requests": 9, "max_in_flight": 0}}, "traffic.max_in_flight", "integer"),
        ({"traffic": {"rate_per_s": 5, "requests": 9, "users": 3}}, "traffic.users", "closed"),
        ({"traffic": {"kind": "closed", "requests": 9}}, "traffic.users", "is required"),
        ({"traffic": {"kind": "closed", "users": 2, "requests": 9, "rate_per_s": 1}}, "traffic.rate_per_s", "open"),
        ({"traffic": {"kind": "closed", "users": 2, "requests": 9, "think_ms": -1}}, "traffic.think_ms", ">= 0"),
        ({"traffic": {"kind": "burst", "requests": 9}}, "traffic.kind", "open, closed"),
        ({"traffic": {"rate_per_s": 5, "requests": 9, "rps": 1}}, "traffic.rps", "unknown key; valid keys: duration_s"),
        ({"traffic": None}, "traffic", "is required"),
        ({"traffic": 5}, "traffic", "must be a table"),
        ({"backends": None}, "backends", "is required"),
        ({"backends": []}, "backends", "non-empty"),
        ({"backends": [{"speed": 2}]}, "backends[0].id", "is required"),
        ({"backends": [{"id": 7}]}, "backends[0].id", "must be a string"),
        ({"backends": [{"id": "bad id"}]}, "backends[0].id", "must contain only"),
        ({"backends": [{"id": "a"}, {"id": "a"}]}, "backends[1].id", "duplicate backend id 'a'"),
        ({"backends": [{"id": "a", "count": 2}, {"id": "a-1"}]}, "backends[1].id", "duplicate backend id 'a-1'"),
        ({"backends": [{"id": "a", "count": 0}]}, "backends[0].count", "integer in [1, 100000]"),
        ({"backends": [{"id": "a", "speed": "fast"}]}, "backends[0].speed", "finite number > 0"),
        ({"backends": [{"id": "a", "speed": True}]}, "backends[0].speed", "finite number > 0"),
        ({"backends": [{"id": "a", "workers": 1.5}]}, "backends[0].workers", "integer"),
        ({"backends": [{"id": "a", "base_ms": 0}]}, "backends[0].base_ms", "> 0"),
        ({"backends": [{"id": "a", "service": "gamma"}]}, "backends[0].service", "exponential, constant"),
        ({"backends": [{"id": "a", "failure_rate": 1.5}]}, "backends[0].failure_rate", "<= 1"),
        ({"backends": [{"id": "a", "weight": 0}]}, "backends[0].weight", "[1, 1000]"),
        ({"backends": [{"id": "a", "colour": "red"}]}, "backends[0].colour", "unknown key; valid keys: base_ms"),
        ({"backends": [{"id": "a", "schedule": {}}]}, "backends[0].schedule", "list"),
        ({"backends": [{"id": "a", "schedule": [{"duration_s": 1}]}]}, "backends[0].schedule[0].start_s", "required"),
        (
            {"backends": [{"id": "a", "schedule": [{"start_s": 0, "duration_s": 1, "outage": 1}]}]},
            "backends[0].schedule[0].outage",
            "true or false",
        ),
        (
            {"backends": [{"id": "a", "schedule": [{"start_s": 0, "duration_s": 1, "when": 1}]}]},
            "backends[0].schedule[0].when",
            "unknown key",
        ),
        (
            {"backends": [{"id": "a", "schedule": [{"start_s": 0, "duration_s": 5}, {"start_s": 4, "duration_s": 1}]}]},
            "backends[0].schedule[1].start_s",
            "overlaps backends[0].schedule[0]",
        ),
        ({"bogus": 1}, "bogus", "unknown key; valid keys: backends, batch, clients, decisions, description"),
        ({"name": "a b"}, "name", "letters, digits"),
        ({"seed": -1}, "seed", "integer"),
        ({"mode": "fast"}, "mode", "route, slot, batch"),
        ({"warmup_s": -1}, "warmup_s", ">= 0"),
        ({"timeout_ms": 0}, "timeout_ms", "> 0"),
        ({"load_report_interval_ms": 0.5}, "load_report_interval_ms", ">= 1"),
        ({"params": {"q_linear": {"epsilon": 2}}}, "params.q_linear.epsilon", "[0, 1]"),
        ({"params": {"q_linear": {"eps": 0.1}}}, "params.q_linear.eps", "unknown parameter"),
        ({"params": {"p2c": {"sample": "x"}}}, "params.p2c.sample", "unknown parameter"),
        ({"params": {"fixed": {}}}, "params.fixed", "unknown routing strategy 'fixed' (mode route)"),
        ({"params": {"q_linear": 3}}, "params.q_linear", "must be a table"),
        ({"pool": {"strategy": "p2c"}}, "pool.strategy", "strategies"),
        ({"pool": {"servers": []}}, "pool.servers", "backends"),
        ({"pool": {"max_queue_length": -3}}, "pool.max_queue_length", "integer"),
        ({"pool": {"bogus": 1}}, "pool.bogus", "unknown key"),
        ({"pool": {"outlier_detection": {"nope": 1}}}, "pool.outlier_detection.nope", "unknown key"),
        ({"batch": {"x": 1}}, "batch", "mode batch only"),
        ({"simulate": {"speed": 3}}, "simulate.speed", "unknown key"),
        ({"simulate": {"max_backends_per_process": 3}}, "simulate.max_backends_per_process", "unknown key"),
        ({"simulate": {"requests": -1}}, "simulate.requests", "integer"),
        ({"simulate": {"traffic": {"requests": -1}}}, "simulate.traffic.requests", "integer"),
        ({"simulate": {"strategies": ["nope"]}}, "simulate.strategies[0]", "unknown routing strategy"),
        ({"simulate": {"pool": 3}}, "simulate.pool", "must be a table"),
        ({"simulate": 3}, "simulate", "must be a table"),
        ({"evaluate": {"max_backends_per_process": 0}}, "evaluate.max_backends_per_process", "integer"),
        ({"evaluate": {"startup_timeout_s": -1}}, "evaluate.startup_timeout_s", "> 0"),
        ({"decisions": ["central", "edge"]}, "decisions[1]", "must be one of central, local, got 'edge'"),
        ({"decisions": ["local", "local"]}, "decisions[1]", "listed twice"),
        ({"decisions": []}, "decisions", "non-empty list"),
        ({"decisions": "local"}, "decisions", "non-empty list"),
        ({"decisions": ["local"], "clients": 0}, "clients", "integer in [1, 64]"),
        ({"decisions": ["local"], "clients": 65}, "clients", "integer in [1, 64]"),
        ({"decisions": ["local"], "clients": 2.5}, "clients", "integer"),
        ({"clients": 3}, "clients", 'applies when decisions lists "local"'),
        ({"route_push_interval_ms": 4}, "route_push_interval_ms", "integer in [5, 60000]"),
        ({"route_push_interval_ms": 2.5}, "route_push_interval_ms", "integer in [5, 60000]"),
        ({"evaluate": {"route_push_interval_ms": 0}}, "evaluate.route_push_interval_ms", "integer"),
        ({"decisions": ["central"], "clients": 3}, "clients", 'applies when decisions lists "local"'),
        ({"evaluate": {"decisions": ["remote"]}}, "evaluate.decisions[0]", "must be one of central, local"),
        ({"decisions": ["local"], "simulate": {"clients": -1}}, "simulate.clients", "integer in [1, 64]"),
        (
            {"mode": "slot", "strategies": ["fixed"], "pool": {"max_concurrency": 4}, "decisions": ["local"]},
            "decisions",
            'applies to mode "route" only',
        ),
        ({"evaluate": {"client": {"breaker": "no"}}}, "evaluate.client.breaker", "must be true or false, got 'no'"),
        ({"evaluate": {"client": {"retry": 0}}}, "evaluate.client.retry", "must be true or false, got 0"),
        ({"evaluate": {"client": {"fallback": None}}}, "evaluate.client.fallback", "must be true or false"),
        ({"evaluate": {"client": {"timeout_s": 1}}}, "evaluate.client.timeout_s", "valid keys: breaker, fallback"),
        ({"evaluate": {"client": [1]}}, "evaluate.client", "must be a table, got [1]"),
        ({"evaluate": {"faults": {"at_s": 1}}}, "evaluate.faults", "must be a list of [[evaluate.faults]] tables"),
        ({"evaluate": {"faults": [3]}}, "evaluate.faults[0]", "must be a table, got 3"),
        ({"evaluate": {"faults": [{"at_s": 1}]}}, "evaluate.faults[0].kind", "is required"),
        ({"evaluate": {"faults": [{"kind": "kill", "at_s": 1}]}}, "evaluate.faults[0].kind", "one of kill_service"),
        ({"evaluate": {"faults": [{"kind": "kill_service"}]}}, "evaluate.faults[0].at_s", "is required"),
        ({"evaluate": {"faults": [{"kind": "kill_service", "at_s": -1}]}}, "evaluate.faults[0].at_s", ">= 0"),
        (
            {"evaluate": {"faults": [{"kind": "kill_service", "at_s": 1, "restart_after_s": 0}]}},
            "evaluate.faults[0].restart_after_s",
            "must be a finite number > 0, got 0",
        ),
        (
            {"evaluate": {"faults": [{"kind": "kill_service", "at_s": 1, "signal": 9}]}},
            "evaluate.faults[0].signal",
            "unknown key; valid keys: at_s, kind, restart_after_s",
        ),
        (
            {
                "traffic": {"rate_per_s": 5, "duration_s": 10},
                "evaluate": {"faults": [{"kind": "kill_service", "at_s": 10}]},
            },
            "evaluate.faults[0].at_s",
            "past the traffic's end (10 s)",
        ),
        (
            {"evaluate": {"faults": [{"kind": "kill_service", "at_s": 1}, {"kind": "kill_service", "at_s": 5}]}},
            "evaluate.faults[0].restart_after_s",
            "is required: faults[1] needs the service back first",
        ),
        (
            {
                "evaluate": {
                    "faults": [
                        {"kind": "kill_service", "at_s": 5, "restart_after_s": 2},
                        {"kind": "kill_service", "at_s": 6},
                    ]
                }
            },
            "evaluate.faults[1].at_s",
            "must be >= 7: faults are listed in time order",
        ),
        ({"faults": [{"kind": "kill_service", "at_s": 1}]}, "faults", "evaluate only; write it as [[evaluate.faults]]"),
        ({"client": {"breaker": False}}, "client", "evaluate only; write it as [evaluate.client]"),
        ({"simulate": {"faults": []}}, "simulate.faults", "no service to kill"),
        ({"simulate": {"client": {}}}, "simulate.client", "write it as [evaluate.client]"),
    ],
)
def test_bad_values_name_their_key(changes: dict[str, Any], key: str, fragment: str) -> None:
    caught = error(**changes)

    assert caught.key == key
    assert fragment in caught.problem
    assert str(caught) == f"x.toml: {key}: {caught.problem}"
    assert isinstance(caught, ValueError)


def test_decisions_default_to_central_and_local_brings_three_clients() -> None:
    central = parse()
    both = parse(decisions=["central", "local"])
    five = parse(decisions=["local"], clients=5)

    assert (central.decisions, central.clients) == (("central",), None)
    assert (both.decisions, both.clients) == (("central", "local"), 3)
    assert (five.decisions, five.clients) == (("local",), 5)
    assert both.runs() == [("round_robin", "central"), ("round_robin", "local")]


def test_decisions_and_clients_take_section_and_command_line_overrides() -> None:
    raw = {**MINIMAL, "strategies": ["p2c", "q_linear"], "evaluate": {"decisions": ["central", "local"], "clients": 4}}
    spec = parse_scenario(raw, "x.toml")

    assert spec.decisions == ("central",) and spec.for_simulate().decisions == ("central",)
    evaluate = spec.for_evaluate()
    assert (evaluate.decisions, evaluate.clients) == (("central", "local"), 4)
    assert evaluate.runs() == [("p2c", "central"), ("p2c", "local"), ("q_linear", "central"), ("q_linear", "local")]
    # --decisions central drops the file's clients; --clients alone keeps the file's modes.
    only_central = parse_scenario(raw, "x.toml", **decision_overrides("central", None)).for_evaluate()
    assert (only_central.decisions, only_central.clients) == (("central",), None)
    two = parse_scenario(raw, "x.toml", **decision_overrides(None, 2)).for_evaluate()
    assert (two.decisions, two.clients) == (("central", "local"), 2)
    local = parse_scenario(MINIMAL, "x.toml", **decision_overrides(" local , central ", None))
    assert (local.decisions, local.clients) == (("local", "central"), 3)
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(MINIMAL, "x.toml", **decision_overrides("central", 3))
    assert caught.value.key == "clients"
    with pytest.raises(ScenarioError) as empty:
        parse_scenario(MINIMAL, "x.toml", **decision_overrides(",", None))
    assert empty.value.key == "decisions"


def test_strategies_are_checked_against_the_mode_and_the_backend_count() -> None:
    slot = error(mode="slot", strategies=["round_robin"])
    adaptive = error(mode="slot", strategies=["aimd"])
    batch = error(mode="batch", strategies=["latency_target"])
    q_learning = error(strategies=["q_learning"], backends=[{"id": "b", "count": 11}])

    assert slot.key == "strategies[0]" and "unknown limit algorithm 'round_robin'" in slot.problem
    assert "aimd, fixed, gradient2" in slot.problem
    assert adaptive.key == "pool.max_concurrency" and "needs it > 0" in adaptive.problem
    assert batch.key == "params.latency_target.target_latency_ms"
    assert q_learning.key == "strategies[0]" and "11 backends" in q_learning.problem
    assert "serves at most 10 servers" in q_learning.problem
    assert parse(strategies=["q_learning"], backends=[{"id": "b", "count": 10}]).strategies == ("q_learning",)


def test_unknown_override_keys_are_rejected() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(MINIMAL, "x.toml", colour="red")
    assert caught.value.key == "colour" and str(caught.value).startswith("x.toml: colour: unknown key")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as missing:
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError) as garbled:
        load_scenario(write(tmp_path, "name = [", "bad.toml"))

    assert missing.value.key == "file" and str(missing.value).startswith(f"{tmp_path / 'nope.toml'}: file: cannot read")
    assert garbled.value.key == "file" and "invalid TOML" in garbled.value.problem


def test_the_outage_scenario_kills_the_service_mid_run_in_evaluate_only() -> None:
    spec = load_scenario(REPO / "scenarios" / "control-plane-outage.toml")

    evaluate = spec.for_evaluate()
    [fault] = evaluate.options["faults"]
    assert (fault.kind, fault.restart_after_s) == ("kill_service", 5.0)
    assert evaluate.traffic.duration_s is not None and 0 < fault.at_s < fault.at_s + 5 < evaluate.traffic.duration_s
    assert 3 <= len(spec.servers) <= 5 and "client" not in evaluate.options  # the SDK's defaults
    assert spec.for_simulate().options == {}


def test_faults_and_the_client_are_evaluate_options_only(tmp_path: Path) -> None:
    spec = load_scenario(write(tmp_path, FULL))

    assert spec.options == {} and spec.for_simulate().options == {}  # the simulator has no service to kill
    assert parse().for_evaluate().options == {}  # none given: the SDK's defaults, no faults
    # A shorter run that leaves a fault behind its end is refused, naming the fault.
    with pytest.raises(ScenarioError) as caught:
        spec.for_evaluate().with_overrides(duration_s=6)
    assert caught.value.key == "evaluate.faults[1].at_s" and "past the traffic's end (6 s)" in caught.value.problem


def test_a_bad_override_section_fails_at_load_time(tmp_path: Path) -> None:
    text = FULL.replace("duration_s = 12", "duration_s = -12")

    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, text))

    assert caught.value.key == "evaluate.duration_s"
    assert str(caught.value).startswith(f"{tmp_path / 's.toml'}: evaluate.duration_s: must be")
