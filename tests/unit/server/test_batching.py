"""Batch sizing with an injected load source and clock: pure, no psutil, no sleeps."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument, NotFound, ResourceExhausted
from loadwarden.policy._load import HostSample, LoadReading, LoadWeights, host_score
from loadwarden.policy._model import LoadSample
from loadwarden.policy._operations import Operation, OperationSettings, parse_operation
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import BatchReportIn, LoadReportIn
from loadwarden.server.engine._loadmonitor import HostMonitor

SEED = OperationSettings(name="data-import", min_batch_size=5, max_batch_size=100, default_batch_size=25)


def op(**kw: Any) -> Operation:
    values: dict[str, Any] = {
        "name": "data-import",
        "min_batch_size": 5,
        "max_batch_size": 100,
        "default_batch_size": 25,
    }
    values.update(kw)
    return Operation(OperationSettings(**values))


@pytest.mark.parametrize(
    ("load", "size", "level"),
    [
        (0.0, 100, "low"),
        (10.0, 100, "low"),
        (49.9, 100, "low"),
        (50.0, 100, "low"),
        (50.1, 100, "medium"),  # 100 - 0.1/30 * 95 = 99.68 -> 100
        (56.0, 81, "medium"),  # 100 - 6/30 * 95 = 81
        (65.0, 52, "medium"),  # 100 - 15/30 * 95 = 52.5 -> 52 (round half to even)
        (74.0, 24, "medium"),  # 100 - 24/30 * 95 = 24
        (79.9, 5, "medium"),  # 100 - 29.9/30 * 95 = 5.3 -> 5
        (80.0, 5, "high"),
        (95.0, 5, "high"),
        (100.0, 5, "high"),
    ],
)
def test_seed_table(load: float, size: int, level: str) -> None:
    answer = op().decide(0.0, 0.0, LoadReading(load))
    assert (answer.size, answer.level, answer.fallback) == (size, level, False)


def test_cooldown_holds_the_size_while_load_moves() -> None:
    operation = op(cooldown_ms=10_000)
    assert operation.decide(0.0, 0.0, LoadReading(90.0)).size == 5  # first change: no cooldown yet
    held = operation.decide(5.0, 5.0, LoadReading(10.0))
    assert held.size == 5 and "cooldown" in held.reason and "5000 ms more" in held.reason
    assert operation.decide(9.999, 9.999, LoadReading(10.0)).size == 5
    assert operation.decide(10.0, 10.0, LoadReading(10.0)).size == 100
    assert operation.adjustments_total == 2


def test_small_changes_are_suppressed() -> None:
    operation = op(min_step=10)
    operation.decide(0.0, 0.0, LoadReading(65.0))  # 52
    held = operation.decide(1.0, 1.0, LoadReading(68.0))  # target 43: a step of 9
    assert held.size == 52 and "min_step 10" in held.reason
    assert operation.decide(2.0, 2.0, LoadReading(70.0)).size == 37  # a step of 15


def test_failing_source_answers_the_default_with_the_reason() -> None:
    operation = op()
    operation.decide(0.0, 0.0, LoadReading(90.0))
    answer = operation.decide(1.0, 1.0, LoadReading(None, "host load monitor failed: boom"))
    assert answer.size == 25 and answer.fallback and answer.level == "unknown"
    assert "host load monitor failed: boom" in answer.reason
    assert operation.size == 5  # the learned size is kept for when the load is known again


def test_adjustments_are_events_with_previous_new_and_reason() -> None:
    operation = op()
    operation.decide(0.0, 100.0, LoadReading(90.0))
    operation.decide(1.0, 101.0, LoadReading(10.0))
    first, second = operation.events
    assert (first.previous_size, first.new_size, first.at_wall, first.load_score) == (25, 5, 100.0, 90.0)
    assert (second.previous_size, second.new_size) == (5, 100)
    assert "high threshold" in first.reason and "low threshold" in second.reason


def test_events_are_bounded() -> None:
    operation = op()
    for i in range(50):
        operation.decide(float(i), float(i), LoadReading(90.0 if i % 2 else 10.0))
    assert len(operation.events) == 20 and operation.adjustments_total == 50


def test_latency_target_grows_under_target_and_backs_off_on_breach() -> None:
    operation = op(mode="latency_target", target_latency_ms=200.0, additive_step=5)
    assert operation.decide(0.0, 0.0, LoadReading(None, "unused")).size == 25  # no load needed, no fallback
    for _ in range(3):
        operation.observe(operation.size, 150.0, True)
        operation.decide(0.0, 0.0, LoadReading(None))
    assert operation.size == 40
    operation.observe(40, 250.0, True)
    answer = operation.decide(0.0, 0.0, LoadReading(None))
    assert answer.size == 36 and not answer.fallback and "x0.9" in answer.reason  # floor(40 * 0.9)
    operation.observe(36, 10.0, False)  # a failure is a breach too
    assert operation.decide(0.0, 0.0, LoadReading(None)).size == 32


def test_latency_target_is_clamped() -> None:
    operation = op(mode="latency_target", target_latency_ms=100.0, additive_step=50)
    for _ in range(5):
        operation.observe(operation.size, 1.0, True)
        operation.decide(0.0, 0.0, LoadReading(None))
    assert operation.size == 100
    for _ in range(40):
        operation.observe(operation.size, 1_000.0, True)
        operation.decide(0.0, 0.0, LoadReading(None))
    assert operation.size == 5


def test_host_monitor_score_stale_and_failing() -> None:
    clock = ManualClock()
    samples = [HostSample(50.0, 20.0, 10.0)]

    def sampler() -> HostSample:
        if not samples:
            raise OSError("no /proc")
        return samples[0]

    monitor = HostMonitor(clock, interval_s=1.0, sampler=sampler)
    assert monitor.reading(clock.monotonic()).problem == "host load monitor has no sample yet"
    monitor.sample_now()
    assert monitor.reading(clock.monotonic()).score == pytest.approx(0.6 * 50 + 0.2 * 20 + 0.2 * 10)
    clock.advance(3.5)
    stale = monitor.reading(clock.monotonic())
    assert stale.score is None and "stale" in stale.problem  # old is unknown, never idle
    samples.clear()
    monitor.sample_now()
    failing = monitor.reading(clock.monotonic())
    assert failing.score is None and "no /proc" in failing.problem


def test_weights_are_validated_and_normalised() -> None:
    assert host_score(HostSample(100.0, 0.0, 0.0), LoadWeights(1.0, 0.0, 0.0)) == 100.0
    assert host_score(HostSample(80.0, 40.0, 0.0), LoadWeights(1.0, 1.0, 0.0)) == 60.0
    with pytest.raises(ValueError, match=re.escape("weights.cpu")):
        LoadWeights(cpu=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        LoadWeights(0.0, 0.0, 0.0)


def core_with_pool(clock: ManualClock, auto: bool = False) -> DecisionCore:
    core = DecisionCore(CoreLimits(auto_register_operations=auto, max_operations=3), clock=clock, rng=random.Random(1))
    core.configure_pool(PoolSettings(name="workers"), [ServerSpec("w1", "h:1"), ServerSpec("w2", "h:2")])
    return core


def load(cpu: float, memory: float) -> LoadSample:
    return LoadSample(cpu_percent=cpu, memory_percent=memory, active_requests=0, mean_latency_ms=0, error_rate=0)


def test_pool_source_follows_reported_backend_load() -> None:
    clock = ManualClock()
    core = core_with_pool(clock)
    core.configure_operation(
        OperationSettings(
            name="import",
            min_batch_size=10,
            max_batch_size=200,
            default_batch_size=50,
            load_source="pool",
            pool="workers",
        )
    )
    answer = core.batch_size("import")
    assert answer.fallback and "no server of pool 'workers'" in answer.reason
    core.report_load([LoadReportIn("workers", "w1", load(20, 20)), LoadReportIn("workers", "w2", load(30, 30))])
    assert core.batch_size("import").size == 200
    core.report_load([LoadReportIn("workers", "w1", load(95, 90)), LoadReportIn("workers", "w2", load(90, 90))])
    assert core.batch_size("import").size == 10
    clock.advance(11)  # reports go stale: unknown, never idle
    assert core.batch_size("import").fallback


def test_host_source_without_a_monitor_is_a_fallback() -> None:
    core = core_with_pool(ManualClock())
    core.configure_operation(OperationSettings(name="x"))
    answer = core.batch_size("x")
    assert answer.fallback and "monitor is off" in answer.reason


def test_unknown_operation_and_bounded_auto_registration() -> None:
    core = core_with_pool(ManualClock())
    with pytest.raises(NotFound) as err:
        core.batch_size("nope")
    assert err.value.field == "operation" and "auto-registration is off" in str(err.value)
    with pytest.raises(NotFound) as err:
        core.report_batches([BatchReportIn("nope", 5, 1.0, True)])
    assert err.value.field == "reports[0].operation"
    auto = core_with_pool(ManualClock(), auto=True)
    for name in ("a", "b", "c"):
        auto.batch_size(name)
    with pytest.raises(ResourceExhausted, match="max_operations"):
        auto.batch_size("d")


def test_report_batch_is_validated_whole() -> None:
    core = core_with_pool(ManualClock())
    core.configure_operation(
        OperationSettings(
            name="lt", mode="latency_target", target_latency_ms=100, default_batch_size=10, max_batch_size=50
        )
    )
    with pytest.raises(NotFound):
        core.report_batches([BatchReportIn("lt", 10, 1.0, True), BatchReportIn("missing", 10, 1.0, True)])
    assert core.batch_size("lt").size == 10  # nothing was applied
    core.report_batches([BatchReportIn("lt", 10, 1.0, True)])
    assert core.batch_size("lt").size == 11


def test_reconfigure_keeps_size_within_new_bounds() -> None:
    core = core_with_pool(ManualClock())
    operation, created = core.configure_operation(OperationSettings(name="x", max_batch_size=100))
    operation.size = 90
    _, created_again = core.configure_operation(OperationSettings(name="x", max_batch_size=60))
    assert created and not created_again and operation.size == 60
    core.delete_operation("x")
    with pytest.raises(NotFound):
        core.delete_operation("x")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"min_batch_size": 50, "max_batch_size": 10}, "op.min_batch_size"),
        ({"min_batch_size": 5, "max_batch_size": 10, "default_batch_size": 20}, "op.default_batch_size"),
        ({"low_threshold_percent": 80, "high_threshold_percent": 50}, "op.high_threshold_percent"),
        ({"low_threshold_percent": 120}, "op.low_threshold_percent"),
        ({"high_threshold_percent": -5}, "op.high_threshold_percent"),
        ({"mode": "latency_target"}, "op.target_latency_ms"),
        ({"mode": "fastest"}, "op.mode"),
        ({"load_source": "pool"}, "op.pool"),
        ({"load_source": "disk"}, "op.load_source"),
        ({"backoff_ratio": 1.5}, "op.backoff_ratio"),
        ({"target_latency_ms": -1}, "op.target_latency_ms"),
        ({"cooldown_ms": -1}, "op.cooldown_ms"),
        ({"max_batch_size": 0.5}, "op.max_batch_size"),
        ({"max_batch_size": 2_000_000}, "op.max_batch_size"),
        ({"pool": "bad name"}, "op.pool"),
        ({"batch": 3}, "op.batch"),
    ],
)
def test_bad_operation_settings_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_operation("x", "op.name", values, "op")
    assert err.value.field == field


def test_operation_defaults_and_proto_enum_names() -> None:
    settings = parse_operation(
        "x",
        "op.name",
        {"mode": "BATCH_MODE_LATENCY_TARGET", "target_latency_ms": 50, "load_source": "LOAD_SOURCE_HOST"},
        "op",
    )
    assert settings.mode == "latency_target" and settings.load_source == "host"
    assert parse_operation("x", "op.name", {"min_batch_size": 7}, "op").default_batch_size == 7
    with pytest.raises(InvalidArgument) as err:
        parse_operation("", "op.name", {}, "op")
    assert err.value.field == "op.name"
