"""The scenario file's JSON Schema: checked against the files we ship and the parser it describes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from loadwarden.backend_sim import ScenarioError, parse_scenario, scenario_schema
from loadwarden.backend_sim._scenario_tables import PUSH_INTERVAL_RANGE, hook_options, section_keys
from loadwarden.server import ConfigError, CoreLimits

from .test_scenario_file import FULL
from .test_scenario_messages import corpus

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return scenario_schema()


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _where(error: jsonschema.ValidationError) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path).lstrip(".")


def test_it_is_a_2020_12_schema_with_a_title_and_a_description(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "LoadwardenScenario" and "scenarios/README.md" in schema["description"]
    assert set(schema["required"]) == {"backends", "traffic", "strategies"}


def test_every_key_is_described_with_no_null(schema: dict[str, Any]) -> None:
    tables = {"": schema, **schema["$defs"]}
    undescribed = [
        f"{name}.{key}"
        for name, table in tables.items()
        for key, spec in table["properties"].items()
        if not spec.get("description")
    ]
    assert not undescribed
    assert '"null"' not in str(schema).replace("'", '"')  # TOML has no null: an absent key is the default


def test_it_lists_the_keys_the_parser_takes(schema: dict[str, Any]) -> None:
    defs = schema["$defs"]
    assert set(schema["properties"]) == {
        *("name", "description", "seed", "mode", "strategies", "decisions", "clients", "route_push_interval_ms"),
        *("warmup_s", "timeout_ms", "load_report_interval_ms", "params", "pool", "traffic", "backends", "batch"),
        *("simulate", "evaluate", "provisioning", "variants"),
    }
    assert set(defs["Traffic"]["properties"]) == set(defs["TrafficOverride"]["properties"])
    assert "required" not in defs["TrafficOverride"]
    for section in ("simulate", "evaluate"):
        taken = section_keys(section, tuple(hook_options(section))).model_fields
        assert set(defs[section.title()]["properties"]) == set(taken)
        assert "required" not in defs[section.title()]
    assert {"max_backends_per_process", "startup_timeout_s", "client", "faults"} <= set(defs["Evaluate"]["properties"])
    assert not {"client", "faults"} & set(defs["Simulate"]["properties"])  # evaluate only: no service in simulate
    assert set(defs["Client"]["properties"]) == {"breaker", "retry", "fallback"}
    assert set(defs["Fault"]["properties"]) == {"kind", "at_s", "restart_after_s"}
    assert set(defs["Fault"]["required"]) == {"kind", "at_s"}
    assert set(defs["VariantTable"]["properties"]) == {"strategy", "service_config"}
    assert defs["VariantTable"]["required"] == ["strategy"]
    surge_keys = {"surge_load", "surge_rate_per_s", "surge_every_s", "surge_duration_s", "surge_start_s"}
    assert surge_keys <= set(defs["Traffic"]["properties"])


def test_strategies_may_name_variants_only_where_the_file_has_them(
    validator: jsonschema.Draft202012Validator,
) -> None:
    raw: dict[str, Any] = {
        "mode": "batch",
        "strategies": ["threshold", "threshold_predictive"],
        "traffic": {"load": 0.5, "duration_s": 10},
        "backends": [{"id": "a"}],
        "variants": {"threshold_predictive": {"strategy": "threshold", "service_config": {"planning": {}}}},
    }
    parse_scenario(raw, "x.toml")
    assert validator.is_valid(raw)
    without = {k: v for k, v in raw.items() if k != "variants"}
    with pytest.raises(ScenarioError):
        parse_scenario(without, "x.toml")
    assert [_where(e) for e in validator.iter_errors(without)] == ["strategies[1]"]
    reserved = {**raw, "variants": {"tp": {"strategy": "threshold", "service_config": {"pools": {}}}}}
    assert [_where(e) for e in validator.iter_errors(reserved)] == ["variants.tp.service_config"]


def _scenario_readme_blocks() -> list[str]:
    text = (REPO / "scenarios" / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_every_scenario_we_ship_satisfies_it(validator: jsonschema.Draft202012Validator) -> None:
    files = {str(path.relative_to(REPO)): path.read_text(encoding="utf-8") for path in REPO.glob("scenarios/*.toml")}
    files |= {f"scenarios/README.md block {i}": block for i, block in enumerate(_scenario_readme_blocks())}
    files["test_scenario_file.FULL"] = FULL
    assert len(files) >= 7
    for where, text in files.items():
        errors = [f"{_where(e)}: {e.message}" for e in validator.iter_errors(tomllib.loads(text))]
        assert not errors, where


def _toml_writable(value: Any) -> bool:
    """TOML has no null, and a key is a string."""
    if value is None:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _toml_writable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_toml_writable(v) for v in value)
    return True


def _shadowed(raw: dict[str, Any]) -> bool:
    """A section writing a traffic key both directly and in its traffic table: the parser reads
    the direct one only, and never checks the other (the schema does)."""
    for section in ("simulate", "evaluate"):
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get("traffic"), dict) and set(table) & set(table["traffic"]):
            return True
    return False


def test_it_never_rejects_a_file_the_parser_accepts(validator: jsonschema.Draft202012Validator) -> None:
    accepted = rejected_by_both = 0
    for name, (source, raw, overrides) in corpus().items():
        if overrides or not _toml_writable(raw) or _shadowed(raw):
            continue
        try:
            parse_scenario(raw, source)
        except ScenarioError:
            rejected_by_both += not validator.is_valid(raw)
            continue
        accepted += 1
        errors = [f"{_where(e)}: {e.message}" for e in validator.iter_errors(raw)]
        assert not errors, name
    assert accepted > 300
    assert rejected_by_both > 1_500  # and it sees most mistakes itself, before the parser does


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"seed": -1}, "seed"),
        ({"mode": "fast"}, "mode"),
        ({"name": "a b"}, "name"),
        ({"strategies": []}, "strategies"),
        ({"strategies": ["fastest"]}, "strategies[0]"),
        ({"decisions": ["edge"]}, "decisions[0]"),
        ({"clients": 65}, "clients"),
        ({"route_push_interval_ms": 4}, "route_push_interval_ms"),
        ({"bogus": 1}, ""),
        ({"traffic": {"rate_per_s": -5, "requests": 10}}, "traffic.rate_per_s"),
        ({"traffic": {"kind": "burst", "requests": 10}}, "traffic.kind"),
        ({"traffic": {"rps": 5}}, "traffic"),
        ({"backends": []}, "backends"),
        ({"backends": [{"id": "a", "workers": 0}]}, "backends[0].workers"),
        ({"backends": [{"id": "a", "failure_rate": 1.5}]}, "backends[0].failure_rate"),
        ({"backends": [{"speed": 2}]}, "backends[0]"),
        (
            {"backends": [{"id": "a", "schedule": [{"start_s": 0, "duration_s": 0}]}]},
            "backends[0].schedule[0].duration_s",
        ),
        (
            {"backends": [{"id": "a", "schedule": [{"start_s": 0, "duration_s": 1, "outage": 1}]}]},
            "backends[0].schedule[0].outage",
        ),
        ({"params": {"fastest": {}}}, "params"),
        ({"pool": {"strategy": "p2c"}}, "pool"),
        ({"mode": "batch", "strategies": ["threshold"], "batch": {"workers": 65}}, "batch.workers"),
        ({"mode": "batch", "strategies": ["threshold"], "batch": {"mode": "threshold"}}, "batch"),
        ({"simulate": {"requests": 0}}, "simulate.requests"),
        ({"simulate": {"max_backends_per_process": 3}}, "simulate"),
        ({"evaluate": {"startup_timeout_s": 0}}, "evaluate.startup_timeout_s"),
        ({"evaluate": {"traffic": {"kind": "burst"}}}, "evaluate.traffic.kind"),
        ({"evaluate": {"backends": [{"id": "a", "weight": 0}]}}, "evaluate.backends[0].weight"),
        ({"evaluate": {"client": {"breaker": 1}}}, "evaluate.client.breaker"),
        ({"evaluate": {"client": {"timeout_s": 1}}}, "evaluate.client"),
        ({"evaluate": {"faults": [{"kind": "kill", "at_s": 1}]}}, "evaluate.faults[0].kind"),
        ({"evaluate": {"faults": [{"kind": "kill_service", "at_s": -1}]}}, "evaluate.faults[0].at_s"),
        ({"evaluate": {"faults": [{"at_s": 1}]}}, "evaluate.faults[0]"),
        ({"faults": [{"kind": "kill_service", "at_s": 1}]}, ""),
        ({"simulate": {"faults": []}}, "simulate"),
    ],
)
def test_it_names_the_key_a_mistake_is_in(
    validator: jsonschema.Draft202012Validator, changes: dict[str, Any], where: str
) -> None:
    raw = {"strategies": ["round_robin"], "traffic": {"rate_per_s": 100, "requests": 1000}, "backends": [{"id": "a"}]}
    raw |= changes
    with pytest.raises(ScenarioError):
        parse_scenario(raw, "x.toml")  # the parser refuses it too
    errors = list(validator.iter_errors(raw))
    assert [_where(error) for error in errors] == [where], [error.message for error in errors]


def test_the_push_interval_bounds_are_the_services() -> None:
    """The scenario checks route_push_interval_ms itself; its range must stay the service's."""
    low, high = PUSH_INTERVAL_RANGE
    for value in (low, high):
        CoreLimits(route_push_interval_ms=value)
    for value in (low - 1, high + 1):
        with pytest.raises(ConfigError):
            CoreLimits(route_push_interval_ms=value)
