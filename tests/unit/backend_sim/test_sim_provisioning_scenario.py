"""The scenario keys of a trace and of provisioning: read, checked, every mistake named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadwarden.backend_sim import ScenarioError, load_scenario, parse_scenario

# --- the scenario file -------------------------------------------------------------------


def _write_trace(tmp_path: Path, rows: str = "0,10\n3600,50\n7200,20\n") -> Path:
    path = tmp_path / "traces" / "t.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("t_s,rate\n" + rows, encoding="utf-8")
    return path


def _raw(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "strategies": ["least_connections"],
        "traffic": {"kind": "trace", "trace": "traces/t.csv", "time_scale": 60},
        "backends": [{"id": "srv", "workers": 2, "base_ms": 100}],
        "provisioning": {"lead_time_s": 300, "evaluate_last_s": 3600},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def test_a_provisioning_scenario_reads_its_trace_beside_the_file(tmp_path: Path) -> None:
    _write_trace(tmp_path)
    spec = parse_scenario(_raw(), str(tmp_path / "s.toml"))
    assert spec.provisioning is not None and spec.provisioning.modes == ("fixed", "reactive", "predictive")
    assert spec.traffic.kind == "trace" and spec.traffic.duration_s == 120
    assert spec.evaluation_window == (3600, 7200) and spec.warmup_s == 60
    assert spec.traffic.rate_per_s == pytest.approx((30 * 3600 + 35 * 3600) / 60 / 120)
    short = spec.with_overrides(duration_s=90)  # --duration-s: the first 90 simulated s
    assert short.evaluation_window == (1800, 5400) and short.warmup_s == 30


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"traffic": {"trace": "traces/none.csv"}}, "traffic.trace", "cannot read"),
        ({"traffic": {"trace": ""}}, "traffic.trace", "must be a file path"),
        ({"traffic": {"trace": None}}, "traffic.trace", "is required"),
        ({"traffic": {"time_scale": 0}}, "traffic.time_scale", "must be a finite number > 0"),
        ({"traffic": {"time_scale": "fast"}}, "traffic.time_scale", "must be a finite number > 0"),
        ({"traffic": {"time_scale": None}}, "traffic.time_scale", "is required"),
        ({"traffic": {"rate_scale": -1}}, "traffic.rate_scale", "must be a finite number > 0"),
        ({"traffic": {"rate_scale": 1e9}}, "traffic.rate_scale", "more than 10,000,000"),
        ({"traffic": {"interpolation": "cubic"}}, "traffic.interpolation", "must be one of linear, step"),
        ({"traffic": {"duration_s": 121}}, "traffic.duration_s", "at most the trace's 120 simulated s"),
        ({"traffic": {"requests": 100}}, "traffic.requests", 'does not apply to kind = "trace"'),
        ({"traffic": {"rate_per_s": 100}}, "traffic.rate_per_s", 'does not apply to kind = "trace"'),
        ({"traffic": {"colour": 1}}, "traffic.colour", "unknown key"),
        ({"provisioning": {"colour": 1}}, "provisioning.colour", "unknown key"),
        ({"provisioning": {"modes": ["fixed", "hpa"]}}, "provisioning.modes[1]", "must be one of"),
        ({"provisioning": {"modes": ["fixed", "fixed"]}}, "provisioning.modes[1]", "listed twice"),
        ({"provisioning": {"modes": []}}, "provisioning.modes", "non-empty list"),
        ({"provisioning": {"target": 1.5}}, "provisioning.target", "<= 1"),
        ({"provisioning": {"interval_s": 0}}, "provisioning.interval_s", "> 0"),
        ({"provisioning": {"lead_time_s": 0}}, "provisioning.lead_time_s", "> 0"),
        ({"provisioning": {"forecast_bound": "mean"}}, "provisioning.forecast_bound", "must be one of value, upper"),
        ({"provisioning": {"scale_down_window_s": 1e6}}, "provisioning.scale_down_window_s", "[0, 86400]"),
        ({"provisioning": {"min_servers": 5, "max_servers": 4}}, "provisioning.min_servers", "<= max_servers"),
        ({"provisioning": {"forecast_step_s": 1000}}, "provisioning.forecast_step_s", "whole multiple"),
        ({"provisioning": {"forecast_every_s": 1000}}, "provisioning.forecast_every_s", "whole multiple"),
        ({"provisioning": 5}, "provisioning", "must be a table"),
        ({"strategies": ["p2c", "least_connections"]}, "strategies", "one strategy"),
        ({"decisions": ["central", "local"]}, "decisions", "central decisions only"),
        ({"warmup_s": 5}, "warmup_s", "set by provisioning.evaluate_last_s"),
        ({"backends": [{"id": "a"}, {"id": "b"}]}, "backends", "one [[backends]] table"),
        ({"backends": [{"id": "srv", "count": 3}]}, "backends[0].count", "set by the provisioning modes"),
    ],
)
def test_a_mistake_names_its_key(tmp_path: Path, changes: dict[str, Any], key: str, words: str) -> None:
    _write_trace(tmp_path)
    raw = _raw(**changes)
    for table in ("traffic", "provisioning"):
        if isinstance(raw.get(table), dict):
            raw[table] = {k: v for k, v in raw[table].items() if v is not None}
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw, str(tmp_path / "s.toml"))
    assert caught.value.key == key, str(caught.value)
    assert words in caught.value.problem, str(caught.value)


def test_a_bad_row_of_the_trace_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    path = _write_trace(tmp_path, "0,10\n300,-5\n")
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(_raw(), str(tmp_path / "s.toml"))
    assert caught.value.key == "traffic.trace"
    assert caught.value.problem == f"{path}: line 3: rate: must be >= 0, got '-5'"
    _write_trace(tmp_path, "0,10\n300,5\n200,5\n")
    with pytest.raises(ScenarioError, match=r"traffic\.trace: .*t\.csv: line 4: t_s: must be greater"):
        parse_scenario(_raw(), str(tmp_path / "s.toml"))


def test_trace_keys_belong_to_a_trace_and_provisioning_to_a_trace(tmp_path: Path) -> None:
    _write_trace(tmp_path)
    source = str(tmp_path / "s.toml")
    open_traffic = {"strategies": ["p2c"], "traffic": {"rate_per_s": 10, "requests": 10}, "backends": [{"id": "a"}]}
    with pytest.raises(ScenarioError) as caught:
        parse_scenario({**open_traffic, "traffic": {"rate_per_s": 10, "requests": 10, "time_scale": 60}}, source)
    assert caught.value.key == "traffic.time_scale" and 'applies to kind = "trace" only' in caught.value.problem
    with pytest.raises(ScenarioError) as caught:
        parse_scenario({**open_traffic, "provisioning": {}}, source)
    assert caught.value.key == "provisioning" and 'needs traffic.kind = "trace"' in caught.value.problem


def test_evaluate_refuses_a_trace_and_provisioning(tmp_path: Path) -> None:
    _write_trace(tmp_path)
    source = str(tmp_path / "s.toml")
    spec = parse_scenario(_raw(), source)
    with pytest.raises(ScenarioError) as caught:
        spec.for_evaluate()
    assert caught.value.key == "provisioning" and "loadwarden simulate only" in caught.value.problem
    bare = _raw(backends=[{"id": "b", "count": 2}])
    del bare["provisioning"]
    played = parse_scenario(bare, source)  # a trace alone plays against the file's backends
    assert played.provisioning is None and played.traffic.kind == "trace"
    with pytest.raises(ScenarioError) as caught:
        played.for_evaluate()
    assert caught.value.key == "traffic.kind" and "loadwarden simulate only" in caught.value.problem


def test_the_shipped_scenario_loads() -> None:
    spec = load_scenario(Path(__file__).resolve().parents[3] / "scenarios" / "diurnal.toml").for_simulate()
    assert spec.provisioning is not None and spec.traffic.duration_s == pytest.approx(6719.1667, abs=1e-3)
    start, end = spec.evaluation_window
    assert end - start == 604_800 and spec.strategies == ("least_connections",)
