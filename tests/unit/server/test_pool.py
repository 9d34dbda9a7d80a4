"""Outlier ejection, panic threshold and slow start: pure, with a fake clock."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument
from loadwarden.policy._settings import OutlierSettings, parse_pool
from loadwarden.server import DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import OutcomeReport


def make(clock: ManualClock, n: int = 4, **settings: Any) -> DecisionCore:
    core = DecisionCore(clock=clock, rng=random.Random(5))
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in range(1, n + 1)]
    core.configure_pool(PoolSettings(name="p", **settings), specs)
    return core


def route(core: DecisionCore, fails: set[str], n: int) -> Counter[str]:
    """Makes n selections and reports each at once: failure on servers in ``fails``."""
    got: Counter[str] = Counter()
    for _ in range(n):
        d = core.select("p")
        got[d.server.id] += 1
        core.report_outcomes([OutcomeReport(d.decision_id, d.server.id not in fails, 5.0)])
    return got


def test_failing_server_is_ejected_after_threshold_and_returns() -> None:
    clock = ManualClock()
    core = make(clock, outlier=OutlierSettings(consecutive_failures=5, base_ejection_time_ms=10_000))
    route(core, {"s1"}, 20)  # round robin: s1 gets 5 picks, all failing -> ejected on the 5th
    s1 = core.pool("p").servers["s1"]
    assert s1.ejections_total == 1 and s1.ejected_until == pytest.approx(clock.monotonic() + 10.0)
    assert route(core, {"s1"}, 300)["s1"] == 0  # no new picks while ejected
    clock.advance(10.001)
    assert route(core, set(), 40)["s1"] == 10  # back in rotation
    assert s1.ejected_until == 0.0


def test_success_resets_the_consecutive_count() -> None:
    clock = ManualClock()
    core = make(clock, n=1, outlier=OutlierSettings(consecutive_failures=3))
    for ok in (False, False, True, False, False, True):
        d = core.select("p")
        core.report_outcomes([OutcomeReport(d.decision_id, ok, 1.0)])
    assert core.pool("p").servers["s1"].ejections_total == 0


def test_repeated_ejections_grow_and_are_capped() -> None:
    clock = ManualClock()
    outlier = OutlierSettings(consecutive_failures=1, base_ejection_time_ms=1_000, max_ejection_time_ms=2_500)
    core = make(clock, n=2, outlier=outlier)
    pool = core.pool("p")
    s1 = pool.servers["s1"]
    lengths = []
    for _ in range(4):
        s1.consecutive_failures = 1
        assert pool.maybe_eject(s1, clock.monotonic())
        lengths.append(round(s1.ejected_until - clock.monotonic(), 3))
        clock.advance(lengths[-1] + 0.001)
        pool.eligible(clock.monotonic())  # the ejection ends here
    assert lengths == [1.0, 2.0, 2.5, 2.5]
    clock.advance(3.0)  # healthy for longer than the cap: back to 1x
    s1.consecutive_failures = 1
    pool.maybe_eject(s1, clock.monotonic())
    assert s1.ejected_until - clock.monotonic() == pytest.approx(1.0)


def test_max_ejection_percent_caps_ejections() -> None:
    clock = ManualClock()
    core = make(clock, n=4, outlier=OutlierSettings(consecutive_failures=1, max_ejection_percent=50))
    route(core, {"s1", "s2", "s3"}, 40)
    ejected = [s.id for s in core.pool("p").servers.values() if s.ejected_until > clock.monotonic()]
    assert len(ejected) == 2


def test_panic_threshold_keeps_a_mostly_failing_pool_serving() -> None:
    clock = ManualClock()
    outlier = OutlierSettings(consecutive_failures=1, max_ejection_percent=100, panic_threshold_percent=50)
    core = make(clock, n=4, outlier=outlier)
    route(core, {"s1", "s2", "s3"}, 12)
    pool = core.pool("p")
    assert sum(s.ejected_until > clock.monotonic() for s in pool.servers.values()) == 3
    got = route(core, {"s1", "s2", "s3"}, 40)
    assert pool.panic
    assert set(got) == {"s1", "s2", "s3", "s4"}  # 1 of 4 healthy < 50 %: ejection ignored


def test_ejection_can_be_disabled() -> None:
    clock = ManualClock()
    core = make(clock, outlier=OutlierSettings(disabled=True))
    assert route(core, {"s1"}, 400)["s1"] == 100


def test_slow_start_ramps_a_new_server() -> None:
    clock = ManualClock()
    core = make(clock, n=2, slow_start_ms=10_000)
    route(core, set(), 10)  # s1 and s2 start ramping now
    clock.advance(20)  # both fully ramped
    core.register_server("p", ServerSpec("s3", "h:3"))
    early = route(core, set(), 210)  # s3 at 10 % weight: 1 of 21
    assert early["s3"] == 10
    assert core.pool("p").servers["s3"].effective_weight == pytest.approx(0.1)
    clock.advance(5)  # halfway
    route(core, set(), 1)
    assert core.pool("p").servers["s3"].effective_weight == pytest.approx(0.5)
    clock.advance(5)
    assert route(core, set(), 300)["s3"] == 100


def test_server_returning_from_drain_ramps_again() -> None:
    clock = ManualClock()
    core = make(clock, n=2, slow_start_ms=1_000)
    route(core, set(), 2)
    clock.advance(2)
    core.drain_server("p", "s1", True)
    route(core, set(), 2)
    core.drain_server("p", "s1", False)
    route(core, set(), 1)
    assert core.pool("p").servers["s1"].effective_weight == pytest.approx(0.1)


def test_status_shows_ejection() -> None:
    from loadwarden.server.rpc._convert import load_status
    from loadwarden.v1 import common_pb2

    clock = ManualClock()
    core = make(clock, n=2, outlier=OutlierSettings(consecutive_failures=1))
    route(core, {"s1"}, 2)
    pool = load_status(core, "p").pools[0]
    s1 = next(s for s in pool.servers if s.id == "s1")
    assert s1.state == common_pb2.SERVER_STATE_EJECTED and s1.ejections_total == 1
    assert s1.ejected_until.seconds > 0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"outlier_detection": {"consecutive_failures": -1}}, "pools.p.outlier_detection.consecutive_failures"),
        ({"outlier_detection": {"max_ejection_percent": 101}}, "pools.p.outlier_detection.max_ejection_percent"),
        ({"outlier_detection": {"base_ejection_time_ms": 5}}, "pools.p.outlier_detection.base_ejection_time_ms"),
        (
            {"outlier_detection": {"base_ejection_time_ms": 5000, "max_ejection_time_ms": 1000}},
            "pools.p.outlier_detection.max_ejection_time_ms",
        ),
        ({"outlier_detection": {"typo": 1}}, "pools.p.outlier_detection.typo"),
        ({"outlier_detection": 3}, "pools.p.outlier_detection"),
        ({"slow_start_ms": -1}, "pools.p.slow_start_ms"),
    ],
)
def test_bad_outlier_settings_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_pool("p", "pools", values, "pools.p", 10)
    assert err.value.field == field


def test_outlier_settings_parse_with_defaults() -> None:
    settings, _ = parse_pool("p", "pools", {"outlier_detection": {"consecutive_failures": 3}}, "pools.p", 10)
    assert settings.outlier == OutlierSettings(consecutive_failures=3)
