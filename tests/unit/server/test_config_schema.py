"""The config file's JSON Schema: what `loadwarden config-schema` prints, checked against
the files we ship and against the parser it describes."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from loadwarden.policy import InvalidArgument, parse_operation, parse_pool
from loadwarden.server import ConfigError
from loadwarden.server.app._cli import main
from loadwarden.server.app._config import FILE_ONLY_POOL_KEYS, parse_config
from loadwarden.server.app._config_file import config_schema

from .test_config_messages import corpus

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "deploy" / "schemas" / "config.schema.json"
SHIPPED_SCENARIO = REPO / "deploy" / "schemas" / "scenario.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return config_schema()


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _readme_configs() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_the_command_prints_the_schema_and_the_shipped_copy_is_fresh(
    schema: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["config-schema"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == schema
    assert SHIPPED.read_text(encoding="utf-8") == printed, (
        "run: loadwarden config-schema -o deploy/schemas/config.schema.json"
    )
    out = tmp_path / "lw.schema.json"
    assert main(["config-schema", "config", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == printed


def test_the_scenario_schema_comes_from_the_simulator_and_its_shipped_copy_is_fresh(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from loadwarden.backend_sim import scenario_schema

    assert main(["config-schema", "scenario"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == scenario_schema()
    assert SHIPPED_SCENARIO.read_text(encoding="utf-8") == printed, (
        "run: loadwarden config-schema scenario -o deploy/schemas/scenario.schema.json"
    )


def test_a_bad_output_path_or_schema_name_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-schema", "-o", str(tmp_path / "missing" / "x.json")]) == 1
    assert "cannot write" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["config-schema", "nope"])
    assert exited.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_every_key_is_described(schema: dict[str, Any]) -> None:
    undescribed = []
    for name, table in schema["$defs"].items():
        for key, spec in table["properties"].items():
            if not spec.get("description"):
                undescribed.append(f"{name}.{key}")
    assert not undescribed
    assert set(schema["properties"]) == {
        *("service", "limits", "state", "monitor", "admin", "tls", "auth", "logging", "planning", "xds"),
        *("pools", "operations", "rls"),
    }


def test_every_config_we_ship_satisfies_it(validator: jsonschema.Draft202012Validator) -> None:
    files = {str(path.relative_to(REPO)): path.read_text(encoding="utf-8") for path in REPO.glob("examples/*.toml")}
    files |= {f"README.md block {i}": block for i, block in enumerate(_readme_configs())}
    assert len(files) >= 6
    for where, text in files.items():
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(tomllib.loads(text))
        ]
        assert not errors, where


def test_it_never_rejects_a_config_the_service_accepts(validator: jsonschema.Draft202012Validator) -> None:
    accepted = rejected_by_both = 0
    for name, raw in corpus().items():
        try:
            parse_config(raw)
        except ConfigError:
            rejected_by_both += not validator.is_valid(raw)
            continue
        accepted += 1
        assert validator.is_valid(raw), name
    assert accepted > 50
    assert rejected_by_both > 800  # and it sees most mistakes itself, before the service does


def test_it_names_the_key_a_mistake_is_in(validator: jsonschema.Draft202012Validator) -> None:
    cases = {
        "limits.max_pools": {"limits": {"max_pools": 0}},
        "state.store": {"state": {"store": "disk"}},
        "pools.api.max_queue_length": {"pools": {"api": {"max_queue_length": 100_001}}},
        "pools.api.servers.0.weight": {"pools": {"api": {"servers": [{"id": "a", "address": "h:1", "weight": 2_000}]}}},
        "pools.api.strategy": {"pools": {"api": {"strategy": "fastest"}}},
        "operations.o.mode": {"operations": {"o": {"mode": "auto"}}},
        "service": {"service": {"listn": "127.0.0.1:1"}},
    }
    for key, raw in cases.items():
        (error,) = validator.iter_errors(raw)
        assert ".".join(map(str, error.absolute_path)) == key


def _bounds(schema: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    return schema["$defs"][table]["properties"]


def _pool(values: dict[str, Any]) -> None:
    parse_pool("api", "pool.name", values, "pool", 10_000)


def _operation(values: dict[str, Any]) -> None:
    parse_operation("op", "operation.name", values, "operation")


@pytest.mark.parametrize(
    ("table", "check", "wrap"),
    [
        ("Pool", _pool, lambda key, value: {key: value}),
        ("OutlierDetection", _pool, lambda key, value: {"outlier_detection": {key: value}}),
        ("Server", _pool, lambda key, value: {"servers": [{"id": "a", "address": "h:1", key: value}]}),
        ("Operation", _operation, lambda key, value: {key: value}),
    ],
)
def test_pool_and_operation_tables_hold_to_the_kernel(
    schema: dict[str, Any], table: str, check: Any, wrap: Any
) -> None:
    """The kernel validates pools and operations; their schema must say what it accepts."""
    properties = _bounds(schema, table)
    if table == "Pool":  # the config file's own keys: the service reads them, the kernel never sees them
        properties = {key: spec for key, spec in properties.items() if key not in FILE_ONLY_POOL_KEYS}
    with pytest.raises(InvalidArgument) as unknown:
        check(wrap("nope", 1))
    assert unknown.value.problem == f"unknown key; valid keys: {', '.join(sorted(properties))}"
    spot: list[tuple[str, Any, bool]] = []
    for key, spec in properties.items():
        if "enum" in spec:
            spot += [(key, value, True) for value in spec["enum"]]
            spot.append((key, "nope", False))
        if "maximum" in spec:
            low, high = spec["minimum"], spec["maximum"]
            spot += [(key, low, True), (key, high, True), (key, high + 1, False)]
            if low - 1 != 0:  # the kernel reads 0 as "the default"
                spot.append((key, low - 1, False))
        if "exclusiveMaximum" in spec:
            low, high = spec["exclusiveMinimum"], spec["exclusiveMaximum"]
            spot += [(key, (low + high) / 2, True), (key, high, False), (key, low - 1, False)]
    assert len(spot) > 3
    for key, value, valid in spot:
        if (table, key, value) in _UNORDERED:
            continue
        values = wrap(key, value)
        context = _CONTEXT.get((table, key), {})
        if table == "OutlierDetection":
            values["outlier_detection"] |= context
        else:
            values |= context
        try:
            check(values)
        except InvalidArgument as exc:
            assert not valid, (key, value, exc.problem)
        else:
            assert valid, (key, value)


# Other keys a value needs beside it to be valid alone: bounds stay ordered, modes get what they need.
_CONTEXT: dict[tuple[str, str], dict[str, Any]] = {
    ("Pool", "limit_algorithm"): {"max_concurrency": 10},
    ("OutlierDetection", "base_ejection_time_ms"): {"max_ejection_time_ms": 86_400_000},
    ("Operation", "mode"): {"target_latency_ms": 100},
    ("Operation", "load_source"): {"pool": "api"},
    ("Operation", "min_batch_size"): {"max_batch_size": 1_000_000},
    ("Operation", "default_batch_size"): {"max_batch_size": 1_000_000},
    ("Operation", "low_threshold_percent"): {"high_threshold_percent": 100},
}
_UNORDERED = {("Operation", "low_threshold_percent", 100)}  # low must stay below high, whose bound is 100 too
