"""The pool keeps its eligible list until something it depends on changes: pure, fake clock.

Every test compares the kept answer with what a fresh computation gives, so a
missed invalidation shows up as a wrong server set, not as a slow test.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from loadwarden.policy._model import LoadSample
from loadwarden.policy._settings import OutlierSettings
from loadwarden.server import DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import LoadReportIn

SAMPLE = LoadSample(10.0, 10.0, 0, 5.0, 0.0)


def make(clock: ManualClock, n: int = 4, **settings: Any) -> DecisionCore:
    core = DecisionCore(clock=clock, rng=random.Random(3))
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in range(1, n + 1)]
    core.configure_pool(PoolSettings(name="p", **settings), specs)
    return core


def ids(core: DecisionCore) -> list[str]:
    pool = core.pool("p")
    return [s.id for s in pool.eligible(core.clock.monotonic())]


def fresh_ids(core: DecisionCore) -> list[str]:
    """What a computation from scratch says right now."""
    pool = core.pool("p")
    pool.invalidate()
    return [s.id for s in pool.eligible(core.clock.monotonic())]


def report(core: DecisionCore, *server_ids: str) -> None:
    core.report_load([LoadReportIn("p", sid, SAMPLE) for sid in server_ids])


def test_same_list_object_while_nothing_changes() -> None:
    clock = ManualClock()
    core = make(clock)
    pool = core.pool("p")
    first = pool.eligible(clock.monotonic())
    clock.advance(100.0)  # no load reports at all: nothing can go stale
    assert pool.eligible(clock.monotonic()) is first


def test_drain_and_undrain_take_effect_at_once() -> None:
    clock = ManualClock()
    core = make(clock)
    ids(core)
    core.drain_server("p", "s2", True)
    assert ids(core) == ["s1", "s3", "s4"] == fresh_ids(core)
    core.drain_server("p", "s2", False)
    assert ids(core) == ["s1", "s2", "s3", "s4"]


def test_report_goes_stale_exactly_after_its_ttl_and_a_new_report_brings_it_back() -> None:
    clock = ManualClock()
    core = make(clock, load_report_ttl_ms=1_000)
    report(core, "s1", "s2", "s3", "s4")
    assert ids(core) == ["s1", "s2", "s3", "s4"]
    clock.advance(0.5)
    report(core, "s1", "s2", "s3")  # s4 keeps its old report
    clock.advance(0.5)
    assert ids(core) == ["s1", "s2", "s3", "s4"] == fresh_ids(core)  # at the TTL: not yet stale
    clock.advance(0.001)
    assert ids(core) == ["s1", "s2", "s3"] == fresh_ids(core)
    report(core, "s4")
    assert ids(core) == ["s1", "s2", "s3", "s4"]


def test_servers_added_removed_and_reweighted_are_seen() -> None:
    clock = ManualClock()
    core = make(clock, n=2)
    ids(core)
    core.register_server("p", ServerSpec("s3", "h:3"))
    assert ids(core) == ["s1", "s2", "s3"]
    core.deregister_server("p", "s1")
    assert ids(core) == ["s2", "s3"]
    core.register_server("p", ServerSpec("s2", "h:2", weight=7))
    assert [s.effective_weight for s in core.pool("p").eligible(clock.monotonic())] == [7.0, 1.0]


def test_ejection_starts_and_ends_on_time() -> None:
    clock = ManualClock()
    core = make(clock, outlier=OutlierSettings(consecutive_failures=1, base_ejection_time_ms=2_000))
    pool = core.pool("p")
    ids(core)
    s1 = pool.servers["s1"]
    s1.consecutive_failures = 1
    assert pool.maybe_eject(s1, clock.monotonic())
    assert ids(core) == ["s2", "s3", "s4"]
    clock.advance(1.999)
    assert ids(core) == ["s2", "s3", "s4"]
    clock.advance(0.001)  # ejected_until reached: back
    assert ids(core) == ["s1", "s2", "s3", "s4"] == fresh_ids(core)


def test_slow_start_weights_follow_time_while_ramping() -> None:
    clock = ManualClock()
    core = make(clock, n=1, slow_start_ms=10_000)
    pool = core.pool("p")
    weights = []
    for _ in range(3):
        weights.append(pool.eligible(clock.monotonic())[0].effective_weight)
        clock.advance(5.0)
    assert weights == [0.1, 0.5, 1.0]


def test_exclusions_are_not_kept() -> None:
    clock = ManualClock()
    core = make(clock, n=3)
    pool = core.pool("p")
    assert [s.id for s in pool.eligible(clock.monotonic(), exclude={"s2"})] == ["s1", "s3"]
    assert ids(core) == ["s1", "s2", "s3"]


# --- round robin over a kept list ------------------------------------------------


def test_round_robin_rotation_fast_path_picks_like_smooth_weighted_round_robin() -> None:
    clock = ManualClock()
    core = make(clock, n=5)
    picks = [core.select("p").server.id for _ in range(12)]
    assert picks == ["s1", "s2", "s3", "s4", "s5"] * 2 + ["s1", "s2"]


def test_round_robin_continues_after_the_last_pick_when_the_list_changes() -> None:
    clock = ManualClock()
    core = make(clock, n=4)
    assert [core.select("p").server.id for _ in range(2)] == ["s1", "s2"]
    core.drain_server("p", "s4", True)
    assert [core.select("p").server.id for _ in range(4)] == ["s3", "s1", "s2", "s3"]


def test_round_robin_shares_evenly_when_every_call_excludes_something() -> None:
    clock = ManualClock()
    core = make(clock, n=4)
    got = Counter(core.select("p", exclude={"s4"}).server.id for _ in range(300))
    assert got == {"s1": 100, "s2": 100, "s3": 100}


def test_round_robin_with_unequal_weights_keeps_shares_and_interleaves() -> None:
    clock = ManualClock()
    core = DecisionCore(clock=clock, rng=random.Random(1))
    specs = [ServerSpec("a", "h:1", 5), ServerSpec("b", "h:2"), ServerSpec("c", "h:3")]
    core.configure_pool(PoolSettings(name="p"), specs)
    picks = "".join(core.select("p").server.id for _ in range(700))  # the kept candidate list, every call
    assert {s: picks.count(s) for s in "abc"} == {"a": 500, "b": 100, "c": 100}
    assert "aaaaaaa" not in picks


def test_a_server_that_never_reported_goes_stale_after_its_first_report_runs_out() -> None:
    clock = ManualClock()
    core = make(clock, n=2, load_report_ttl_ms=1_000)  # require_load_report off: never-reported is routable
    assert ids(core) == ["s1", "s2"]
    report(core, "s2")  # its first report: the kept answer had no TTL to watch for it
    clock.advance(1.001)
    assert ids(core) == ["s1"] == fresh_ids(core)
