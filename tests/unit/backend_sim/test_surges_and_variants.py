"""Traffic surges that repeat, ``[variants]`` of the service's config, and the batch figures
through the peaks: pure, seeded, no processes (``tests/e2e/test_evaluate_batch_predictive.py``
runs them for real).
"""

from __future__ import annotations

import copy
import random
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from loadwarden.backend_sim import (
    Arrivals,
    RequestRecord,
    Scenario,
    ScenarioError,
    SimServer,
    Surges,
    load_scenario,
    parse_scenario,
    simulate,
)
from loadwarden.backend_sim._batch_mode import (
    FORECAST_REASON,
    BatchRecord,
    BatchSummary,
    PeakSummary,
    peak_windows,
    render_peaks_markdown,
    summarize_batches,
    summarize_peaks,
)
from loadwarden.backend_sim._evaluate import (
    Evaluation,
    batch_markdown,
    check_batch,
    check_service_configs,
    merged_config,
    service_config,
)
from loadwarden.backend_sim._evaluate_client import ClientJob
from loadwarden.backend_sim._report import Report
from loadwarden.backend_sim._traffic import TrafficPlan, arrival_times
from loadwarden.server.app._config import parse_config

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"

BATCH: dict[str, Any] = {
    "name": "surging",
    "mode": "batch",
    "strategies": ["threshold", "threshold_predictive"],
    "warmup_s": 20,
    "batch": {"operation": "import", "workers": 2, "cooldown_ms": 1000},
    "traffic": {
        "load": 0.2,
        "surge_load": 1.0,
        "surge_every_s": 30,
        "surge_duration_s": 10,
        "surge_start_s": 15,
        "duration_s": 120,
    },
    "backends": [{"id": "b", "count": 4, "workers": 2, "base_ms": 100}],
    "variants": {
        "threshold_predictive": {
            "strategy": "threshold",
            "service_config": {
                "admin": {"history_interval_ms": 250, "history_retention_s": 600},
                "planning": {
                    "enabled": True,
                    "step_s": 1,
                    "interval_s": 1,
                    "horizon_s": 10,
                    "history_s": 600,
                    "seasons_s": [30],
                    "operations": {"import": {"predictive": True}},
                },
            },
        }
    },
}


def changed(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``base`` with the value at ``path`` set (tables made on the way)."""
    raw = copy.deepcopy(base)
    here = raw
    for part in path[:-1]:
        here = here.setdefault(part, {})
    here[path[-1]] = value
    return raw


# --- surges -----------------------------------------------------------------------------------


def test_a_surge_covers_its_stretch_of_every_period() -> None:
    surges = Surges(rate_per_s=90, every_s=60, duration_s=15, start_s=45)

    assert [surges.covers(t) for t in (0, 44.9, 45, 59.9, 60, 104.9, 105, 119.9, 120)] == [
        *(False, False, True, True, False, False, True, True, False)
    ]
    assert surges.windows(200) == [(45, 60), (105, 120), (165, 180)]
    assert surges.windows(180, before_s=5) == [(40, 60), (100, 120), (160, 180)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"every_s": -1}, "every_s"),
        ({"duration_s": 60}, "duration_s"),
        ({"start_s": -1}, "start_s"),
    ],
)
def test_bad_surges_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        Surges(**{"rate_per_s": 10, "every_s": 60, "duration_s": 15, **kwargs})


def test_arrivals_take_the_surge_rate_during_each_surge() -> None:
    surges = Surges(rate_per_s=80, every_s=20, duration_s=5, start_s=10)
    arrivals = Arrivals(rate_per_s=20, duration_s=100, surges=surges)

    assert arrivals.varies and arrivals.peak_rate_per_s == 80
    assert [arrivals.rate_at(t) for t in (0, 10, 14.9, 15, 30)] == [20, 80, 80, 20, 80]
    assert arrivals.expected_requests == pytest.approx(20 * 100 + 5 * 5 * 60)  # surges at 10, 30, 50, 70, 90
    times = arrival_times(arrivals, random.Random(4))
    assert times == arrival_times(arrivals, random.Random(4))  # the seed alone
    in_surges = sum(surges.covers(t) for t in times)
    assert in_surges / 25 == pytest.approx(80, rel=0.1)  # 25 s of surges
    assert (len(times) - in_surges) / 75 == pytest.approx(20, rel=0.1)


def test_a_surge_cut_by_the_end_and_a_ramp_between_surges_count_exactly() -> None:
    surges = Surges(rate_per_s=100, every_s=40, duration_s=10, start_s=35)
    arrivals = Arrivals(rate_per_s=10, rate_end_per_s=30, duration_s=40, surges=surges)

    # The ramp's mean is 20/s over 40 s; the surge (35-40 s) replaces a ramp from 27.5 to 30.
    assert arrivals.expected_requests == pytest.approx(20 * 40 + (100 - 28.75) * 5)
    assert arrivals.rate_at(20) == pytest.approx(20) and arrivals.rate_at(36) == 100


def test_arrivals_without_surges_are_drawn_as_before() -> None:
    constant = Arrivals(rate_per_s=30, duration_s=5)
    rng = random.Random(7)
    expected, t = [], 0.0
    while (t := t + rng.expovariate(30)) <= 5:
        expected.append(t)

    assert arrival_times(constant, random.Random(7)) == expected
    assert not constant.varies and constant.peak_rate_per_s == 30


def test_the_simulator_plays_the_surges() -> None:
    surges = Surges(rate_per_s=150, every_s=10, duration_s=2, start_s=4)
    scenario = Scenario(
        servers=(SimServer("a", workers=4, base_ms=10),),
        arrivals=Arrivals(rate_per_s=50, duration_s=40, surges=surges),
        seed=3,
    )

    times = [r.time_s for r in simulate(scenario, "round_robin").records]

    in_surges = sum(surges.covers(t) for t in times)
    assert in_surges / 8 == pytest.approx(150, rel=0.15)
    assert (len(times) - in_surges) / 32 == pytest.approx(50, rel=0.15)


def test_a_client_job_carries_the_surges() -> None:
    arrivals = Arrivals(rate_per_s=20, duration_s=9, surges=Surges(60, 4, 1.5, 2))
    job = ClientJob("127.0.0.1:5", "central", TrafficPlan("route", "sim", arrivals), {"a": "x"}, "g", "o", 5.0)

    assert ClientJob.from_json(job.to_json()) == job


def test_the_scenario_resolves_the_surges_against_the_capacity() -> None:
    spec = parse_scenario(BATCH, "x.toml")

    assert spec.capacity_per_s == 80
    assert spec.traffic.surges == Surges(rate_per_s=80.0, every_s=30, duration_s=10, start_s=15)
    arrivals = spec.traffic.arrivals()
    assert isinstance(arrivals, Arrivals) and arrivals.surges == spec.traffic.surges
    assert spec.traffic.rate_at(16) == 80 and spec.traffic.rate_at(26) == 16
    by_rate = {**BATCH["traffic"], "rate_per_s": 16, "surge_rate_per_s": 70}
    del by_rate["load"], by_rate["surge_load"]
    assert parse_scenario({**BATCH, "traffic": by_rate}, "x.toml").traffic.surges == Surges(70, 30, 10, 15)
    shorter = parse_scenario(changed(BATCH, ("evaluate", "surge_duration_s"), 5), "x.toml").for_evaluate()
    assert shorter.traffic.surges == Surges(80.0, 30, 5, 15)


@pytest.mark.parametrize(
    ("traffic", "key", "words"),
    [
        ({"surge_every_s": None}, "traffic.surge_every_s", "is required with surges"),
        ({"surge_duration_s": None}, "traffic.surge_duration_s", "is required with surges"),
        ({"surge_load": None}, "traffic.surge_load", "is required with surges"),
        ({"surge_duration_s": 30}, "traffic.surge_duration_s", "must be less than traffic.surge_every_s (30)"),
        ({"surge_load": 0}, "traffic.surge_load", "must be"),
        ({"surge_start_s": -2}, "traffic.surge_start_s", "must be"),
        ({"surge_every_s": "60"}, "traffic.surge_every_s", "must be"),
        ({"surge_rate_per_s": 50}, "traffic.surge_load", "set one of traffic.surge_load"),
        ({"surge_load": None, "surge_rate_per_s": 50}, "traffic.surge_rate_per_s", "goes with traffic.rate_per_s"),
        ({"surge_nope": 1}, "traffic.surge_nope", "unknown key; valid keys: "),
        ({"kind": "closed", "users": 3, "load": None}, "traffic.surge_load", 'applies to kind = "open" only'),
    ],
)
def test_bad_surges_name_the_key(traffic: dict[str, Any], key: str, words: str) -> None:
    table = {k: v for k, v in {**BATCH["traffic"], **traffic}.items() if v is not None}

    with pytest.raises(ScenarioError) as caught:
        parse_scenario({**BATCH, "traffic": table}, "x.toml")

    assert caught.value.key == key and words in caught.value.problem, str(caught.value)


def test_a_surge_rate_goes_with_its_kind_of_rate() -> None:
    traffic = {"rate_per_s": 10, "surge_load": 1, "surge_every_s": 30, "surge_duration_s": 10, "duration_s": 60}

    with pytest.raises(ScenarioError, match=r"traffic\.surge_load: goes with traffic\.load"):
        parse_scenario({**BATCH, "traffic": traffic}, "x.toml")


def test_the_unknown_traffic_key_lists_the_surge_keys() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(changed(BATCH, ("traffic", "nope"), 1), "x.toml")

    for key in ("surge_load", "surge_rate_per_s", "surge_every_s", "surge_duration_s", "surge_start_s"):
        assert key in caught.value.problem


# --- [variants] ---------------------------------------------------------------------------------


def test_a_variant_runs_its_strategy_with_its_service_config_merged_in() -> None:
    spec = parse_scenario(BATCH, "x.toml")
    batch = check_batch(spec)
    assert batch is not None

    assert spec.strategies == ("threshold", "threshold_predictive")
    assert spec.strategy_of("threshold_predictive") == "threshold" and spec.strategy_of("threshold") == "threshold"
    plain = tomllib.loads(service_config(spec, "threshold", batch))
    variant = tomllib.loads(service_config(spec, "threshold_predictive", batch))
    assert "planning" not in plain and "admin" not in plain
    assert variant["operations"] == plain["operations"]
    assert variant["operations"]["import"]["mode"] == "threshold"
    assert variant["planning"]["operations"] == {"import": {"predictive": True}}
    assert {k: v for k, v in variant.items() if k not in ("planning", "admin")} == plain
    parsed = parse_config(variant)  # the service's own parser
    assert parsed.planning.enabled and parsed.planning.operation("import").predictive
    assert parsed.admin.history_interval_ms == 250
    check_service_configs(spec, batch)
    assert spec.variants["threshold_predictive"].as_dict()["service_config"]["planning"]["seasons_s"] == [30]


def test_a_variant_merges_into_a_section_the_run_writes_key_by_key() -> None:
    raw = changed(BATCH, ("variants", "threshold_predictive", "service_config", "service"), {"shutdown_grace_ms": 900})
    spec = parse_scenario(raw, "x.toml")

    written = tomllib.loads(service_config(spec, "threshold_predictive", check_batch(spec)))

    assert written["service"] == {"seed": 1, "shutdown_grace_ms": 900}
    assert merged_config({"a": {"b": 1, "c": [1]}}, {"a": {"c": (2, 3)}, "d": {"e": {"f": 1}}}) == {
        "a": {"b": 1, "c": [2, 3]},
        "d": {"e": {"f": 1}},
    }


def test_a_variant_in_mode_route_sets_the_pools_strategy() -> None:
    raw = {
        "strategies": ["p2c", "fast_p2c"],
        "traffic": {"rate_per_s": 50, "duration_s": 2},
        "backends": [{"id": "a", "count": 2}],
        "params": {"p2c": {"choice_count": 3}},
        "variants": {"fast_p2c": {"strategy": "p2c", "service_config": {"limits": {"route_push_interval_ms": 20}}}},
    }
    spec = parse_scenario(raw, "x.toml")

    written = tomllib.loads(service_config(spec, "fast_p2c", None))

    assert written["pools"]["sim"]["strategy"] == "p2c"
    assert written["pools"]["sim"]["strategy_params"] == {"choice_count": 3}
    assert written["limits"]["route_push_interval_ms"] == 20
    assert spec.for_evaluate().strategies == ("p2c", "fast_p2c")
    with pytest.raises(ScenarioError, match=r"strategies\[1\]: 'fast_p2c' is a variant .*loadwarden simulate"):
        spec.for_simulate()


@pytest.mark.parametrize(
    ("path", "value", "key", "words"),
    [
        (("variants",), 5, "variants", "must be a table"),
        (("variants", "tp"), 5, "variants.tp", "must be a table"),
        (("variants", "tp"), {}, "variants.tp.strategy", "is required"),
        (("variants", "tp"), {"strategy": "p2c"}, "variants.tp.strategy", "unknown batch controller 'p2c'"),
        (("variants", "tp"), {"strategy": 5}, "variants.tp.strategy", "must be a strategy name"),
        (("variants", "tp"), {"strategy": "threshold", "colour": 1}, "variants.tp.colour", "unknown key"),
        (("variants", "threshold"), {"strategy": "threshold"}, "variants.threshold", "names a strategy"),
        (("variants", "p2c"), {"strategy": "threshold"}, "variants.p2c", "names a strategy"),
        (("variants", "a b"), {"strategy": "threshold"}, "variants.a b", "1-64 letters"),
        (
            ("variants", "tp"),
            {"strategy": "threshold", "service_config": 3},
            "variants.tp.service_config",
            "must be a table",
        ),
        (
            ("variants", "tp"),
            {"strategy": "threshold", "service_config": {"planning": 1}},
            "variants.tp.service_config.planning",
            "must be a table (a section of loadwarden.toml)",
        ),
        (
            ("variants", "tp"),
            {"strategy": "threshold", "service_config": {"pools": {"sim": {}}}},
            "variants.tp.service_config.pools",
            "is written by the run from [pool]",
        ),
        (
            ("variants", "tp"),
            {"strategy": "threshold", "service_config": {"operations": {}}},
            "variants.tp.service_config.operations",
            "is written by the run from [batch]",
        ),
        (("strategies",), ["threshold", "tq"], "strategies[1]", "variants: threshold_predictive"),
        (("strategies",), ["threshold_predictive", "threshold_predictive"], "strategies[1]", "listed twice"),
    ],
)
def test_a_bad_variant_names_the_key(path: tuple[str, ...], value: Any, key: str, words: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(changed(BATCH, path, value), "x.toml")

    assert caught.value.key == key and words in caught.value.problem, str(caught.value)


@pytest.mark.parametrize(
    ("planning", "key", "words"),
    [
        ({"step_s": 7}, "variants.threshold_predictive.service_config.planning.step_s", "must divide every season"),
        ({"colour": 1}, "variants.threshold_predictive.service_config.planning.colour", "unknown key"),
        (
            {"operations": {"import": {"lead_s": 99}}},
            "variants.threshold_predictive.service_config.planning.operations.import.lead_s",
            "at most planning.horizon_s",
        ),
        (
            {"operations": {"imprt": {"predictive": True}}},
            "variants.threshold_predictive.service_config.planning.operations.imprt",
            "names no operation of the run: it registers 'import'",
        ),
        ({"history_s": None}, "variants.threshold_predictive.service_config", "planning.history_s: must be at most"),
    ],
)
def test_the_variants_service_config_is_checked_by_the_services_parser(
    planning: dict[str, Any], key: str, words: str
) -> None:
    raw = copy.deepcopy(BATCH)
    table = raw["variants"]["threshold_predictive"]["service_config"]
    # history_s = None leaves it out: the service's default (a day) is past the retention (600 s).
    table["planning"] = {k: v for k, v in {**table["planning"], **planning}.items() if v is not None}
    spec = parse_scenario(raw, "x.toml")  # the service's rules are checked before the runs start

    with pytest.raises(ScenarioError) as caught:
        check_service_configs(spec, check_batch(spec))

    assert caught.value.key == key and words in caught.value.problem, str(caught.value)
    assert str(caught.value).startswith("x.toml: ")


def test_the_shipped_batch_surges_scenario_is_valid_for_evaluate() -> None:
    spec = load_scenario(SCENARIOS / "batch-surges.toml").for_evaluate()
    batch = check_batch(spec)
    assert batch is not None

    check_service_configs(spec, batch)
    assert spec.strategies == ("threshold", "latency_target", "threshold_predictive")
    assert spec.traffic.surges == Surges(rate_per_s=80.0, every_s=60, duration_s=15, start_s=45)
    windows = peak_windows(spec.traffic.surges, 600, before_s=batch.peak_before_s, warmup_s=spec.warmup_s)
    assert windows == tuple((s - 5, s + 15) for s in (285, 345, 405, 465, 525, 585))  # 6 surges after 4 min
    with pytest.raises(ScenarioError, match=r"batch-surges\.toml: strategies\[2\]: 'threshold_predictive' is a"):
        spec.for_simulate()


# --- the figures through the peaks -------------------------------------------------------------


def test_peak_before_s_applies_to_surges_that_leave_room_for_it() -> None:
    assert check_batch(parse_scenario(changed(BATCH, ("batch", "peak_before_s"), 19), "x.toml")) is not None
    with pytest.raises(ScenarioError, match=r"batch.peak_before_s: must be less than the time between two surges"):
        check_batch(parse_scenario(changed(BATCH, ("batch", "peak_before_s"), 20), "x.toml"))
    without = changed(BATCH, ("batch", "peak_before_s"), 5)
    without["traffic"] = {"load": 0.5, "duration_s": 10}
    with pytest.raises(ScenarioError, match=r"batch.peak_before_s: applies to traffic with surges"):
        check_batch(parse_scenario(without, "x.toml"))
    with pytest.raises(ScenarioError, match=r"batch.peak_before_s: must be"):
        parse_scenario(changed(BATCH, ("batch", "peak_before_s"), -1), "x.toml")


def test_the_peak_windows_start_after_the_warmup_and_end_by_the_end() -> None:
    surges = Surges(rate_per_s=80, every_s=30, duration_s=10, start_s=15)

    assert peak_windows(surges, 120, before_s=5, warmup_s=20) == ((40, 55), (70, 85), (100, 115))
    assert peak_windows(surges, 114, before_s=5, warmup_s=0) == ((10, 25), (40, 55), (70, 85))


def test_batch_figures_through_the_peaks_are_over_the_windows_alone() -> None:
    records = [
        BatchRecord(1.0, "b", 40, 400.0, True, 30.0),  # outside every window
        BatchRecord(10.0, "b", 20, 300.0, True, 60.0, True),
        BatchRecord(12.0, "b", 10, 900.0, True, 95.0),
        BatchRecord(14.5, "b", 5, 1500.0, False, 95.0),
        BatchRecord(30.0, "b", 8, 200.0, True, 90.0, True),
        BatchRecord(35.0, "b", 60, 100.0, True, 20.0),  # at a window's end: outside
    ]
    requests = [
        RequestRecord(9.0, "b", 5000.0, True, False),  # before the first window
        RequestRecord(11.0, "b", 250.0, True, False),
        RequestRecord(12.0, "", 0.0, False, False),  # reached no backend: counted, no latency
        RequestRecord(31.0, "b", 700.0, False, False),
    ]
    windows = ((10.0, 15.0), (30.0, 35.0))

    peaks = summarize_peaks(records, requests, windows)

    assert peaks.requests == 3 and peaks.requests_p99_ms == 700.0
    s = peaks.batch
    assert s is not None and s.batches == 4 and s.items == 38 and s.forecast_batches == 2
    assert s.items_per_s == pytest.approx(38 / 10)  # items of successful batches over 10 s of windows
    assert s.p99_batch_ms == 1500.0 and s.p99_item_ms == 300.0 and s.mean_size == pytest.approx(43 / 4)
    assert s.sizes == ()
    whole = summarize_batches(records)
    assert whole is not None and whole.batches == 6 and whole.forecast_batches == 2 and len(whole.sizes) == 6
    as_dict = peaks.as_dict()
    assert as_dict["windows"] == [[10.0, 15.0], [30.0, 35.0]]
    assert isinstance(as_dict["batch"], dict) and "sizes" not in as_dict["batch"]
    assert as_dict["batch"]["forecast_batches"] == 2
    empty = summarize_peaks(records, requests, ((50.0, 55.0),))
    assert empty.batch is None and empty.requests == 0 and empty.requests_p99_ms is None
    assert empty.as_dict()["batch"] is None


def test_the_peaks_table_follows_the_batch_table() -> None:
    summary = BatchSummary(10, 100, 12.5, 10.0, 1.0, 5.0, 20.0, 300.0, ((0.0, 10),), 3)
    peaks = {
        "threshold": PeakSummary(((35.0, 55.0), (95.0, 115.0)), summary, 50, 812.25),
        "latency_target": PeakSummary(((35.0, 55.0), (95.0, 115.0)), None, 40, None),
    }
    spec = parse_scenario(BATCH, "x.toml")
    evaluation = Evaluation(
        Report(spec, (), kind="evaluate"), {"threshold": summary, "latency_target": None}, {}, peaks, 5.0
    )

    text = batch_markdown(evaluation)

    head, tail = text.split("Through the peaks: ")
    assert "| threshold | 10 | 10.0 | 12.5 | 5.00 | 20.00 | 300.0 | 100.0 % |" in head
    assert tail.startswith("2 surges after the warm-up, each from 5 s before it starts to its end (20 s each, ")
    assert "| threshold | 10 | 10.0 | 12.5 | 5.00 | 20.00 | 300.0 | 100.0 % | 3 | 812.2 |" in tail
    assert "| latency_target | 0 | - | - | - | - | - | - | - | - |" in tail
    assert "no surge ends after the warm-up" in render_peaks_markdown(
        {"threshold": PeakSummary((), None, 0, None)}, 5.0
    )
    assert "Through the peaks" not in batch_markdown(Evaluation(Report(spec, (), kind="evaluate"), {"x": summary}))


def test_a_batch_sized_from_the_forecast_is_flagged() -> None:
    assert FORECAST_REASON == "forecast load"  # the kernel's words (loadwarden.policy Operation._ahead)
    assert BatchRecord(0.0, "b", 1, 1.0, True, None).forecast is False


def test_the_readmes_variant_example_is_valid_for_evaluate() -> None:
    text = (SCENARIOS / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S) if "[variants." in b]
    assert blocks

    for block in blocks:
        spec = parse_scenario(tomllib.loads(block), "README.md").for_evaluate()
        check_service_configs(spec, check_batch(spec))
        assert spec.variants
