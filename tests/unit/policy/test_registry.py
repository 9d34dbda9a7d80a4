"""One registry pattern for strategies, limit algorithms and batch controllers."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import pytest

from loadwarden.policy import InvalidArgument, Registry
from loadwarden.policy.batching import BATCH_CONTROLLERS, LatencyTargetController, ThresholdController, build_controller
from loadwarden.policy.limits import LIMITS
from loadwarden.policy.strategies import STRATEGIES


@pytest.mark.parametrize(
    ("registry", "field", "kinds"),
    [
        (STRATEGIES, "pool.strategy", "strategies"),
        (LIMITS, "pool.limit_algorithm", "algorithms"),
        (BATCH_CONTROLLERS, "pool.mode", "modes"),
    ],
)
def test_an_unknown_name_is_refused_with_the_valid_ones(registry: Registry[Any], field: str, kinds: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        registry.get_entry("magic", "pool")
    assert err.value.field == field
    assert f"valid {kinds}: {', '.join(sorted(registry))}" in str(err.value)


@pytest.mark.parametrize("registry", [STRATEGIES, LIMITS, BATCH_CONTROLLERS])
def test_every_entry_has_its_name_and_a_frozen_params_dataclass(registry: Registry[Any]) -> None:
    assert len(registry) >= 2
    for name, cls in registry.items():
        assert cls.name == name
        assert dataclasses.is_dataclass(cls.Params) and vars(cls.Params)["__dataclass_params__"].frozen


def test_batch_controllers_are_built_from_their_params_like_the_other_families() -> None:
    threshold = build_controller(
        "threshold", {"min_size": 10, "max_size": 100, "low_percent": 50.0, "high_percent": 80.0}, 50, "op"
    )
    assert isinstance(threshold, ThresholdController)
    assert threshold.target(30.0)[0] == 100 and threshold.target(90.0)[0] == 10
    latency = build_controller(
        "latency_target",
        {"min_size": 1, "max_size": 8, "target_ms": 100.0, "step": 2, "backoff_ratio": 0.5},
        4,
        "op",
    )
    assert isinstance(latency, LatencyTargetController)
    latency.observe(4, 50.0, True)
    assert latency.target(None)[0] == 6


def test_bad_params_name_their_field() -> None:
    with pytest.raises(InvalidArgument, match=re.escape("op.mode_params.nope: unknown parameter")):
        build_controller("threshold", {"nope": 1}, 5, "op")
    with pytest.raises(InvalidArgument) as err:
        build_controller(
            "latency_target",
            {"min_size": 1, "max_size": 8, "target_ms": 100.0, "step": 2, "backoff_ratio": 1.5},
            4,
            "op",
        )
    assert err.value.field == "op.mode_params.backoff_ratio"


def test_a_registry_refuses_an_entry_that_does_not_fit_the_pattern() -> None:
    @dataclasses.dataclass
    class Loose:
        pass

    class Unfrozen:
        name: ClassVar[str] = "unfrozen"
        Params = Loose

    registry: Registry[Any] = Registry(("thing", "things"), "thing", "thing_params", [])
    with pytest.raises(TypeError, match="frozen"):
        registry["unfrozen"] = Unfrozen
    with pytest.raises(TypeError, match="named"):
        registry["other"] = Unfrozen
    assert "unfrozen" not in registry
