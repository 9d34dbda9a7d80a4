"""Every scenario-file error message, word for word, against those of the hand-written parser.

``data/scenario_messages.json`` was written by the parser before validation moved to
pydantic (commit cb1cd00), with this module run as a script over the same corpus:
the shipped scenarios as bases, each key of every section (top level, ``[traffic]``,
``[[backends]]``, ``[[backends.schedule]]``, ``[params]``, ``[pool]``, ``[batch]``,
``[simulate]``, ``[evaluate]``, load-time overrides) changed one at a time to wrong
types, out-of-range and odd values, plus cross-field mistakes. A file the parser
accepts is recorded as ``OK`` and a digest of the spec it gives (and of its two
sections applied), so accepted values must still read the same. The pydantic tables
must give the same answer for each case, but for those in ``CHANGED`` and long
values, now cut (``_cut``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from loadwarden.backend_sim import ScenarioError, ScenarioSpec, parse_scenario
from loadwarden.policy import shown

GOLDEN = Path(__file__).with_name("data") / "scenario_messages.json"
SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"

_DROP = object()  # a mutation that removes the key
_LONG = "x" * 100
_BAD: list[Any] = ["x", "", 1.5, True, -1, 0, 2**63, math.inf, math.nan, [], ["a"], {}, {"a": 1}, None]
_FEW: list[Any] = ["x", -1, 0, 1.5, True, [], {}]

# The bases, by name: the shipped files (named after their stem, as load_scenario does) and two small ones.
_CENTRAL: dict[str, Any] = {
    "name": "central",
    "strategies": ["round_robin", "p2c"],
    "traffic": {"rate_per_s": 100, "requests": 1000},
    "backends": [{"id": "a", "count": 2}, {"id": "b", "speed": 2}],
}
_CLOSED: dict[str, Any] = {
    "name": "closed",
    "strategies": ["least_connections"],
    "warmup_s": 1,
    "traffic": {"kind": "closed", "users": 8, "think_ms": 5, "duration_s": 10},
    "backends": [{"id": "a", "count": 3, "workers": 2}],
    "simulate": {"users": 16},
}
_OUTAGE: dict[str, Any] = {
    "name": "outage",
    "strategies": ["p2c"],
    "traffic": {"rate_per_s": 50, "duration_s": 20},
    "backends": [{"id": "a", "count": 3}],
    "evaluate": {"faults": [{"kind": "kill_service", "at_s": 8, "restart_after_s": 5}]},
}


def _bases() -> dict[str, dict[str, Any]]:
    bases = {
        path.stem: {"name": path.stem, **tomllib.loads(path.read_text(encoding="utf-8"))}
        for path in sorted(SCENARIOS.glob("*.toml"))
    }
    return {**bases, "central": _CENTRAL, "closed": _CLOSED, "outage": _OUTAGE}


# Values worth trying beside _BAD, by key: bounds, whole floats, near misses.
_EXTRA: dict[str, list[Any]] = {
    "name": ["a b", "x" * 64, "x" * 65, "ok.name-1_2", 5, _LONG],
    "description": [5, "any text"],
    "seed": [3.0, 2**63 - 1, 2.5, "1"],
    "mode": ["route", "slot", "batch", "ROUTE"],
    "strategies": [["p2c"], ["p2c", "p2c"], ["nope"], [1], ["fixed"], ["q_learning"], ["threshold"], "p2c", [None]],
    "decisions": [["central"], ["local"], ["central", "local", "central"], ["edge"], [1], "central,local", [None]],
    "clients": [1, 64, 65, 3.0, 2.5],
    "route_push_interval_ms": [4, 5, 50, 60_000, 60_001, 250.0, 2.5, "250"],
    "warmup_s": [0, 1e9, -0.0],
    "timeout_ms": [1e-9, 1e12],
    "load_report_interval_ms": [1, 3_600_000, 3_600_000.5, 0.99, _LONG],
    "kind": ["open", "closed", "OPEN"],
    "load": [2.0, 1e-9, 1e9],
    "rate_per_s": [1e9, 1e-9, _LONG],
    "load_end": [2.0, 1e9],
    "rate_end_per_s": [1e9, 50],
    "duration_s": [1e9, 1e-9],
    "requests": [1, 10_000_000, 10_000_001, 5.0, 5.5],
    "max_in_flight": [1, 10_000_000, 10_000_001, 2.0],
    "users": [1, 1_000_000, 1_000_001, 4.0],
    "think_ms": [1e9, -0.0],
    "id": ["a b", "slow", "fast", "b-10", "x" * 64, "x" * 65, "z"],
    "count": [1, 100_000, 100_001, 2.0, 2.5],
    "speed": [1e-9, 1e9],
    "workers": [100_000, 100_001, 3.0],
    "base_ms": [1e-9, 1e9],
    "service": ["constant", "exponential", "gamma"],
    "failure_rate": [1, 1.0001, 0.5],
    "weight": [1000, 1001, 2.0],
    "schedule": [[{}], [{"start_s": 0}], [[]], [5], [{"start_s": 0, "duration_s": 1}], {"start_s": 0}],
    "start_s": [30, 34.9, 35, -0.0],
    "service_ms": [1e-9],
    "slowdown": [0.5, 1e9],
    "outage": [False, 1],
    "breaker": [False, 1, "on"],
    "retry": [False, 0],
    "fallback": [False, "false"],
    "at_s": [0, 19.9, 20, 1e9, 13],
    "restart_after_s": [1e-9, 1e9, 11.9, 12, 3],
}
_TOP = [
    "name", "description", "seed", "mode", "strategies", "decisions", "clients", "route_push_interval_ms",
    "warmup_s", "timeout_ms", "load_report_interval_ms", "nope",
]  # fmt: skip
_TABLES = ["params", "pool", "traffic", "backends", "batch", "simulate", "evaluate"]
_TRAFFIC = [
    "kind", "load", "rate_per_s", "load_end", "rate_end_per_s", "duration_s", "requests", "max_in_flight",
    "users", "think_ms", "nope",
]  # fmt: skip
_BACKEND = ["id", "count", "speed", "workers", "base_ms", "service", "failure_rate", "weight", "schedule", "nope"]
_PHASE = ["start_s", "duration_s", "service_ms", "slowdown", "outage", "nope"]
_POOL = [
    "strategy", "strategy_params", "limit_algorithm", "limit_params", "servers", "load_report_ttl_ms",
    "require_load_report", "max_concurrency", "max_queue_length", "max_wait_ms", "lease_ttl_ms", "rate_limit",
    "rate_burst", "outlier_detection", "slow_start_ms", "nope",
]  # fmt: skip
_BATCH = [
    "operation", "workers", "item_cost", "pause_ms", "min_batch_size", "max_batch_size", "default_batch_size",
    "cooldown_ms", "mode", "load_source", "pool", "nope",
]  # fmt: skip
_SECTION = [
    *("seed", "strategies", "decisions", "clients", "route_push_interval_ms", "warmup_s", "timeout_ms"),
    *("load_report_interval_ms", "backends", "params", "pool", "traffic", "batch"),
    *("requests", "duration_s", "load", "rate_per_s", "users", "max_in_flight"),
    *("max_backends_per_process", "startup_timeout_s", "name", "mode", "description", "nope"),
    *("client", "faults"),
]
_CLIENT = ["breaker", "retry", "fallback", "nope"]
_FAULT = ["kind", "at_s", "restart_after_s", "nope"]
_KILL = {"kind": "kill_service", "at_s": 5, "restart_after_s": 2}


def _values(key: str, values: list[Any]) -> list[Any]:
    return [*values, *_EXTRA.get(key, [])]


def _set(raw: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with the value at ``path`` set (``_DROP``: removed, one past a list: appended)."""
    changed = copy.deepcopy(raw)
    here: Any = changed
    for part in path[:-1]:
        if isinstance(here, dict) and part not in here:
            here[part] = {}
        here = here[part]
    if value is _DROP:
        here.pop(path[-1], None)
    elif isinstance(here, list) and path[-1] == len(here):
        here.append(copy.deepcopy(value))
    else:
        here[path[-1]] = copy.deepcopy(value)
    return changed


def corpus() -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """name -> (the source: the base's file name, the mapping, the load-time overrides)."""
    bases = _bases()
    cases: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}

    def add(base: str, path: tuple[str | int, ...], values: list[Any]) -> None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        for value in values:
            shown = "<drop>" if value is _DROP else repr(value)
            cases[f"{base}:{where}={shown}"] = (f"{base}.toml", _set(bases[base], path, value), {})

    for base in ("heterogeneous", "central"):
        for key in _TOP:
            add(base, (key,), _values(key, [*_BAD, _DROP]))
        for table in _TABLES:
            add(base, (table,), [*_FEW, None, _DROP])
    for base in ("heterogeneous", "one-slow", "closed", "large"):
        for key in _TRAFFIC:
            add(base, ("traffic", key), _values(key, [*_BAD, _DROP] if base != "large" else _FEW))
    for base, index in (("heterogeneous", 1), ("central", 0)):
        for key in _BACKEND:
            add(base, ("backends", index, key), _values(key, [*_BAD, _DROP]))
        add(base, ("backends", index), _FEW)
        add(base, ("backends", index + 1), [{"id": "fast"}, {"id": "c", "count": 100_000}, {}])
    add("large", ("backends", 0, "count"), [99_000, 99_001, 100_000])
    for key in _PHASE:
        add("one-slow", ("backends", 1, "schedule", 0, key), _values(key, [*_BAD, _DROP]))
    add("one-slow", ("backends", 1, "schedule", 0), _FEW)
    add("one-slow", ("backends", 1, "schedule", 1), [{"start_s": 0, "duration_s": 5}, {"start_s": 34, "duration_s": 1}])
    add("one-slow", ("backends", 1, "schedule", 1), [{"start_s": 35, "duration_s": 1}, {"start_s": 0}, 5])
    add("one-slow", ("backends", 1, "schedule"), [[], _FEW, [{"start_s": 1, "duration_s": 1, "slowdown": 0}]])
    # [params]: strategy names, their tables and a key in each, in every mode.
    for base, name, key in (
        ("heterogeneous", "q_linear", "epsilon"),
        ("heterogeneous", "p2c", "sample_size"),
        ("heterogeneous", "peak_ewma", "decay_ms"),
        ("overload", "aimd", "backoff_ratio"),
        ("overload", "gradient2", "min_limit"),
        ("batch-ramp", "latency_target", "target_latency_ms"),
        ("batch-ramp", "threshold", "low_threshold_percent"),
    ):
        add(base, ("params", name), _FEW)
        add(base, ("params", name, key), [*_FEW, 2, 0.5, 1e9])
        add(base, ("params", name, "nope"), [1])
    for base, name in (("heterogeneous", "fixed"), ("overload", "p2c"), ("batch-ramp", "aimd"), ("central", "nope")):
        add(base, ("params", name), [{}])
    add("batch-ramp", ("params", "latency_target", "mode"), ["threshold"])
    add("batch-ramp", ("params", "threshold", "workers"), [2])
    # [pool]: the reserved keys and the kernel's own.
    for base in ("one-slow", "overload"):
        for key in _POOL:
            add(base, ("pool", key), [*_FEW, 10, "10/second"])
        add(base, ("pool", "outlier_detection", "nope"), [1])
        add(base, ("pool", "outlier_detection", "consecutive_failures"), [*_FEW, 3])
    add("overload", ("pool", "max_concurrency"), [_DROP])
    # [batch]: worker keys, operation settings, set-by-the-run keys.
    for key in _BATCH:
        add("batch-ramp", ("batch", key), [*_FEW, 2, 200, "import"])
    add("batch-ramp", ("batch",), [*_FEW, None])
    add("heterogeneous", ("batch",), [{}, {"workers": 2}])
    # [simulate] and [evaluate]: every key they take, a few they do not, and their tables.
    for base in ("heterogeneous", "central"):
        for section in ("simulate", "evaluate"):
            for key in _SECTION:
                add(base, (section, key), _values(key, _FEW) if base == "heterogeneous" else _FEW)
            for key in ("requests", "duration_s", "load", "rate_per_s", "kind", "users", "nope"):
                add(base, (section, "traffic", key), _FEW)
            add(base, (section, "backends"), [[{"id": "a", "speed": -1}], [{"id": "q"}], [{"id": "b", "count": 11}]])
            add(base, (section, "params", "q_linear", "epsilon"), [2, "x"])
            add(base, (section, "params", "nope"), [{}])
            add(base, (section, "pool", "max_queue_length"), [-3])
            add(base, (section, "pool", "strategy"), ["p2c"])
            add(base, (section,), [*_FEW, None])
    # [evaluate.client] and [[evaluate.faults]] (evaluate options since the pydantic tables:
    # recorded when they were added), and the same keys where they do not belong.
    for base in ("heterogeneous", "central"):
        add(base, ("faults",), [[], [_KILL], 5])
        add(base, ("client",), [{}, {"breaker": False}])
        for key in _CLIENT:
            add(base, ("evaluate", "client", key), _values(key, _FEW))
        add(base, ("evaluate", "faults"), [[_KILL], [_KILL, _KILL], [_KILL, {**_KILL, "at_s": 7}], [{}], [_KILL, 5]])
    for key in _FAULT:
        add("outage", ("evaluate", "faults", 0, key), _values(key, [*_BAD, _DROP]))
    add("outage", ("evaluate", "faults", 0), _FEW)
    add("outage", ("evaluate", "faults", 1), [{"kind": "kill_service", "at_s": t} for t in (12, 13, 19)])
    add("outage", ("evaluate", "duration_s"), [8, 13, 30])
    add("heterogeneous", ("simulate", "strategies"), [["q_learning", "p2c"]])
    add("large", ("simulate", "strategies"), [["q_learning"], ["p2c"]])
    add("overload", ("evaluate", "decisions"), [["local"]])
    add("batch-ramp", ("simulate", "batch", "workers"), [0, 2])
    add("batch-ramp", ("evaluate", "batch", "nope"), [1])
    # Cross-field mistakes: each is valid key by key.
    mixed: dict[str, tuple[str, dict[str, Any]]] = {
        "closed traffic with a load": ("closed", {"traffic": {**_CLOSED["traffic"], "load": 0.5}}),
        "closed traffic with a bad load": ("closed", {"traffic": {**_CLOSED["traffic"], "load": "x"}}),
        "open traffic with users": ("central", {"traffic": {"rate_per_s": 10, "requests": 9, "users": "x"}}),
        "both load and rate": ("central", {"traffic": {"rate_per_s": 10, "requests": 9, "load": -1}}),
        "neither load nor rate": ("central", {"traffic": {"requests": 9}}),
        "neither duration nor requests": ("central", {"traffic": {"rate_per_s": 10}}),
        "closed without users": ("closed", {"traffic": {"kind": "closed", "duration_s": 3}}),
        "ramp without duration": ("central", {"traffic": {"rate_per_s": 10, "requests": 9, "rate_end_per_s": 2}}),
        "load ramp without duration": ("central", {"traffic": {"load": 1, "requests": 9, "load_end": 2}}),
        "rate end with load": ("central", {"traffic": {"load": 1, "duration_s": 9, "rate_end_per_s": 2}}),
        "load end with rate": ("central", {"traffic": {"rate_per_s": 1, "duration_s": 9, "load_end": "x"}}),
        "too many expected requests": ("central", {"traffic": {"rate_per_s": 1e6, "duration_s": 11}}),
        "ramp to too many requests": (
            "central",
            {"traffic": {"rate_per_s": 1, "rate_end_per_s": 2e6, "duration_s": 11}},
        ),
        "duplicate backend ids": ("central", {"backends": [{"id": "a"}, {"id": "a", "speed": "x"}]}),
        "duplicate expanded ids": ("central", {"backends": [{"id": "a", "count": 2}, {"id": "a-1"}]}),
        "expanded id too long": ("central", {"backends": [{"id": "x" * 63, "count": 2}]}),
        "too many backends": ("central", {"backends": [{"id": "a", "count": 60_000}, {"id": "b", "count": 40_001}]}),
        "q_learning beyond 10 backends": (
            "central",
            {"strategies": ["q_learning"], "backends": [{"id": "b", "count": 11}]},
        ),
        "q_learning params beyond 10 backends": (
            "central",
            {"params": {"q_learning": {}}, "backends": [{"id": "b", "count": 11}]},
        ),
        "clients without local": ("central", {"clients": "x"}),
        "local in mode slot": ("overload", {"decisions": ["local"], "clients": 2}),
        "local in mode slot, bad clients": ("overload", {"decisions": ["local"], "clients": "x"}),
        "batch in mode route": ("central", {"batch": 5}),
        "aimd without max_concurrency": ("central", {"mode": "slot", "strategies": ["aimd"]}),
        "slot with a routing strategy": ("central", {"mode": "slot", "strategies": ["p2c", "fixed"]}),
        "clients in a section only": ("central", {"evaluate": {"decisions": ["central", "local"]}, "clients": 4}),
        "clients in a section, bad": ("central", {"evaluate": {"decisions": ["local"]}, "clients": 0}),
        "two mistakes": ("central", {"seed": "x", "traffic": {"rate_per_s": 0, "requests": 9}}),
        "overlapping phases": (
            "one-slow",
            {"backends": [{"id": "a", "schedule": [{"start_s": 5, "duration_s": 5}, {"start_s": 0, "duration_s": 6}]}]},
        ),
    }
    for name, (base, changes) in mixed.items():
        cases[name] = (f"{base}.toml", {**copy.deepcopy(bases[base]), **copy.deepcopy(changes)}, {})
    # Load-time overrides (the command line's): keys, traffic keys, tables, None to remove.
    overrides: dict[str, dict[str, Any]] = {
        "colour": {"colour": "red"},
        "name": {"name": "other"},
        "requests": {"requests": -1},
        "requests ok": {"requests": 500},
        "traffic table": {"traffic": {"rate_per_s": 0}},
        "traffic not a table": {"traffic": 5},
        "seed": {"seed": "x"},
        "strategies": {"strategies": ["nope"]},
        "decisions": {"decisions": "central", "clients": None},
        "clients": {"clients": 99},
        "drop duration": {"duration_s": None},
        "simulate": {"simulate": {"seed": 2}},
    }
    for name, given in overrides.items():
        for base in ("heterogeneous", "central"):
            cases[f"{base}: overrides {name}"] = (f"{base}.toml", copy.deepcopy(bases[base]), given)
    return cases


# Spec fields added after the golden file was written: left out of the digest when unset
# (None, or an empty mapping).
_NEWER_FIELDS = ("provisioning", "variants")
# Traffic fields added after it, as the Traffic's repr shows them when unset.
_NEWER_TRAFFIC_REPR = (", surges=None",)


def _digest(spec: ScenarioSpec) -> str:
    def summary(one: ScenarioSpec) -> str:
        values = {
            f.name: getattr(one, f.name)
            for f in fields(one)
            if f.name not in ("raw", "overrides")
            and not (f.name in _NEWER_FIELDS and getattr(one, f.name) in (None, {}))
        }
        text = repr(_plain(values))
        for unset in _NEWER_TRAFFIC_REPR:
            text = text.replace(unset, "")
        return text

    text = summary(spec)
    later = ""
    for section in ("simulate", "evaluate"):
        try:
            text += summary(spec.for_simulate() if section == "simulate" else spec.for_evaluate())
        except ScenarioError as exc:  # a section left unchecked at load (not in the file) may fail
            later += f"; for_{section}: {exc}"
    return hashlib.sha256(text.encode()).hexdigest()[:16] + later


def _plain(value: Any) -> Any:
    if isinstance(value, dict) or type(value).__name__ == "mappingproxy":
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def answer(source: str, raw: dict[str, Any], overrides: dict[str, Any]) -> str:
    try:
        spec = parse_scenario(raw, source, **overrides)
    except ScenarioError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - recorded: the parser must name a key instead
        return f"crash: {type(exc).__name__}: {exc}"
    return f"OK {_digest(spec)}"


def messages() -> dict[str, str]:
    return {name: answer(*case) for name, case in corpus().items()}


# Better now: load-time overrides with a traffic that is no table name it (the parser
# crashed with a TypeError); with two mistakes, a value's own (clients = "x") is named
# before one between keys (local decisions in mode slot), as validation checks values
# before relations; and a long value is cut as every other message cuts it (``_cut``).
CHANGED = {
    "central: overrides traffic not a table": "central.toml: traffic: must be a table, got 5",
    "heterogeneous: overrides traffic not a table": "heterogeneous.toml: traffic: must be a table, got 5",
    "local in mode slot, bad clients": "overload.toml: clients: must be an integer in [1, 64], got 'x'",
}


def _cut(message: str) -> str:
    """``message`` with the corpus's long strings shown as ``shown`` shows them."""
    for long in (_LONG, "x" * 65):
        message = message.replace(repr(long), shown(long))
    return message


def test_every_message_is_the_hand_written_parsers() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    expected = {name: _cut(message) for name, message in golden.items()} | CHANGED
    got = messages()
    assert got.keys() == expected.keys()
    differ = {name: (expected[name], got[name]) for name in expected if got[name] != expected[name]}
    assert not differ
    assert sum(not answer.startswith("OK") for answer in got.values()) > 1_500  # mostly mistakes


if __name__ == "__main__":  # python tests/unit/backend_sim/test_scenario_messages.py > data/scenario_messages.json
    json.dump(messages(), sys.stdout, indent=0, sort_keys=True, ensure_ascii=True)
    sys.stdout.write("\n")
