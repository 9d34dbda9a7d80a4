"""RouteTables: pushed tables checked whole, changes by base version, local decisions and ejections.

Pure data: a fake clock and a seeded RNG, no service, no sleeps.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from loadwarden.sdk._local import LOCAL_ID_PREFIX, LocalChoice, RouteTables
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb

WATCHED = ("api",)
SERVING, DRAINING, EJECTED = common.SERVER_STATE_SERVING, common.SERVER_STATE_DRAINING, common.SERVER_STATE_EJECTED


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def server(sid: str, *, weight: int = 1, state: Any = SERVING, eligible: bool = True, **fields) -> pb.RouteServer:
    return pb.RouteServer(
        id=sid,
        address=f"10.0.0.{sid[-1]}:80",
        weight=weight,
        effective_weight=float(weight),
        state=state,
        eligible=eligible,
        **fields,
    )


def table(version: int = 1, *servers: pb.RouteServer, strategy: str = "round_robin", **fields) -> pb.RouteTable:
    fields.setdefault("strategy_params_json", "{}")
    return pb.RouteTable(
        pool="api",
        version=version,
        epoch="e1",
        full=True,
        strategy=strategy,
        servers=servers or [server("s1"), server("s2"), server("s3")],
        consecutive_failures=3,
        base_ejection_time_ms=30_000,
        panic_threshold_percent=50,
        **fields,
    )


def change(version: int, base: int, *servers: pb.RouteServer, removed: tuple[str, ...] = (), **fields) -> pb.RouteTable:
    fields.setdefault("strategy", "round_robin")
    return pb.RouteTable(
        pool="api",
        version=version,
        epoch="e1",
        full=False,
        base_version=base,
        servers=servers,
        removed_server_ids=removed,
        strategy_params_json="{}",
        consecutive_failures=3,
        base_ejection_time_ms=30_000,
        panic_threshold_percent=50,
        **fields,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tables(clock: FakeClock) -> RouteTables:
    return RouteTables(clock=clock, rng=random.Random(5), stale_after_s=5.0, max_table_servers=50)


def decided(tables: RouteTables, exclude: tuple[str, ...] = ()) -> LocalChoice:
    choice = tables.decide("api", exclude)
    assert choice is not None
    return choice


def chosen(tables: RouteTables, n: int = 30, exclude: tuple[str, ...] = ()) -> set[str]:
    out = set()
    for _ in range(n):
        choice = tables.decide("api", exclude)
        assert choice is not None
        out.add(choice.server.id)
        tables.finish(choice.decision_id, True, 1.0, "")
    return out


def test_no_table_means_no_local_decision(tables: RouteTables) -> None:
    assert tables.decide("api") is None and not tables.has("api")


def test_a_whole_table_is_decided_from_with_its_version(tables: RouteTables) -> None:
    assert tables.apply(table(4), WATCHED)
    choice = tables.decide("api")
    assert choice is not None and choice.version == 4 and choice.strategy == "round_robin" and not choice.stale
    assert choice.decision_id.startswith(LOCAL_ID_PREFIX)
    assert chosen(tables) == {"s1", "s2", "s3"}


def test_a_change_applies_to_its_base_only(tables: RouteTables) -> None:
    tables.apply(table(1), WATCHED)
    assert tables.apply(change(2, 1, server("s1", state=DRAINING, eligible=False)), WATCHED)
    assert chosen(tables) == {"s2", "s3"}
    assert not tables.apply(change(4, 3, server("s1")), WATCHED)  # not our version: ignored, wait for the whole table
    assert tables.ignored == 1 and chosen(tables) == {"s2", "s3"}
    assert tables.apply(change(3, 2, server("s4"), removed=("s2",)), WATCHED)
    assert chosen(tables) == {"s3", "s4"}
    assert tables.pools["api"].version == 3


def test_a_new_epoch_needs_a_whole_table(tables: RouteTables) -> None:
    tables.apply(table(7), WATCHED)
    other = change(2, 1, server("s1", state=DRAINING, eligible=False))
    other.epoch = "e2"
    assert not tables.apply(other, WATCHED)
    restarted = table(1, server("s9"))
    restarted.epoch = "e2"
    assert tables.apply(restarted, WATCHED) and chosen(tables) == {"s9"}


def bad_tables() -> list[tuple[str, pb.RouteTable]]:
    cases = [
        ("bad id", table(5, server("s1"), pb.RouteServer(id="bad id", address="a:1", weight=1, effective_weight=1))),
        ("duplicate id", table(5, server("s1"), server("s1"))),
        ("weight 0", table(5, pb.RouteServer(id="s1", address="a:1", weight=0, effective_weight=1.0))),
        ("weight 1001", table(5, pb.RouteServer(id="s1", address="a:1", weight=1001, effective_weight=1.0))),
        ("no address", table(5, pb.RouteServer(id="s1", address="", weight=1, effective_weight=1.0))),
        ("nan weight", table(5, pb.RouteServer(id="s1", address="a:1", weight=1, effective_weight=float("nan")))),
        ("cpu 500", table(5, server("s1", load=common.LoadReport(cpu_percent=500)))),
        ("unknown state", table(5, server("s1", state=99))),
        ("strategy", table(5, strategy="fastest")),
        ("params", table(5, strategy="p2c", strategy_params_json='{"choice_count": 99}')),
        ("params json", table(5, strategy_params_json="{oops")),
        ("learned", table(5, strategy="q_linear", learned_json='{"strategy": "q_linear"}')),
        ("learned json", table(5, strategy="q_linear", learned_json="[1, 2]")),
        ("oversized", table(5, *[server(f"s{i:03d}") for i in range(51)])),
        ("other pool", pb.RouteTable(pool="other", version=5, epoch="e1", full=True, strategy="round_robin")),
        ("old version", table(1)),
    ]
    return cases


@pytest.mark.parametrize(("name", "bad"), bad_tables(), ids=[name for name, _ in bad_tables()])
def test_a_malformed_table_is_rejected_and_the_last_good_one_stays(tables: RouteTables, name: str, bad) -> None:
    good = table(3, server("s1"), server("s2"))
    assert tables.apply(good, WATCHED)
    assert not tables.apply(bad, WATCHED)
    assert tables.rejected == 1
    assert tables.pools["api"].version == 3 and chosen(tables) == {"s1", "s2"}


def test_a_change_too_large_for_the_client_is_rejected(tables: RouteTables) -> None:
    tables.apply(table(1), WATCHED)
    assert not tables.apply(change(2, 1, *[server(f"x{i:03d}") for i in range(48)]), WATCHED)
    assert tables.rejected == 1 and len(tables.pools["api"].servers) == 3


def test_consecutive_failures_eject_a_server_locally_until_its_time_is_up(
    tables: RouteTables, clock: FakeClock
) -> None:
    tables.apply(table(1), WATCHED)
    failed = 0
    while failed < 3:
        choice = tables.decide("api")
        assert choice is not None
        ok = choice.server.id != "s2"
        failed += not ok
        tables.finish(choice.decision_id, ok, 5.0, "" if ok else "503")
    assert tables.pools["api"].locally_ejected() == ["s2"]
    assert chosen(tables) == {"s1", "s3"}
    clock.now += 30.0
    assert chosen(tables) == {"s1", "s2", "s3"}


def test_local_ejections_are_ignored_when_too_few_servers_would_remain(tables: RouteTables) -> None:
    tables.apply(table(1, server("s1"), server("s2")), WATCHED)
    for target in ("s1", "s2"):
        for _ in range(3):
            choice = tables.decide("api", tuple(s for s in ("s1", "s2") if s != target))
            assert choice is not None
            tables.finish(choice.decision_id, False, 5.0, "")
    assert tables.pools["api"].locally_ejected() == ["s1", "s2"]
    assert chosen(tables) == {"s1", "s2"}  # panic: both ejected, both still chosen


def test_decisions_say_stale_once_the_stream_is_down_long_enough(tables: RouteTables, clock: FakeClock) -> None:
    tables.apply(table(1), WATCHED)
    tables.stream_up()
    tables.stream_down()
    clock.now += 4.9
    assert not decided(tables).stale
    clock.now += 0.2
    assert decided(tables).stale and tables.stale_decisions == 1
    tables.stream_up()
    assert not decided(tables).stale


def test_outcomes_carry_the_choice_and_what_the_strategy_weighed(tables: RouteTables) -> None:
    learned = {
        "strategy": "q_linear",
        "version": 1,
        "epsilon": 0.0,
        "episodes": 9,
        "updates": 9,
        "explored": 0,
        "weights": {"cpu": -1.0, "active": -0.5, "response": -0.2, "error_rate": -1.0},
        "biases": {"s1": 0.0, "s2": -5.0, "s3": 0.0},
    }
    loaded = [
        server("s1", load=common.LoadReport(cpu_percent=10)),
        server("s2"),
        server("s3", load=common.LoadReport(cpu_percent=90)),
    ]
    tables.apply(table(3, *loaded, strategy="q_linear", learned_json=json.dumps(learned)), WATCHED)
    choice = tables.decide("api")
    assert choice is not None and choice.server.id == "s1"  # the pushed weights and biases decide
    outcome = tables.finish(choice.decision_id, False, 42.0, "503")
    assert outcome is not None and not outcome.decision_id and outcome.status == "503"
    local = outcome.local
    assert (local.pool, local.server_id, local.table_version) == ("api", "s1", 3)
    assert list(local.features) == pytest.approx([0.1, 0.0, 0.0, 0.0])
    assert tables.finish(choice.decision_id, True, 1.0, "") is None  # once only


def test_q_learning_sends_the_state_it_saw(tables: RouteTables) -> None:
    loaded = [
        server("s1", load=common.LoadReport(cpu_percent=10)),
        server("s2"),
        server("s3", load=common.LoadReport()),
    ]
    tables.apply(table(1, *loaded, strategy="q_learning"), WATCHED)
    choice = decided(tables)
    outcome = tables.finish(choice.decision_id, True, 10.0, "")
    # s2 never reported: its load cannot be encoded, so it takes the high level (seed 002)
    assert outcome is not None and outcome.local.state == "s1=0,s2=2,s3=0" and not outcome.local.features


def test_a_deleted_pool_stops_local_decisions(tables: RouteTables) -> None:
    tables.apply(table(1), WATCHED)
    assert tables.apply(pb.RouteTable(pool="api", version=2, epoch="e1", full=True, deleted=True), WATCHED)
    assert tables.decide("api") is None and not tables.has("api")


def test_decisions_never_reported_are_settled_after_their_ttl(tables: RouteTables, clock: FakeClock) -> None:
    tables.apply(table(1, server("s1")), WATCHED)
    tables.decide("api")
    s1 = tables.pools["api"].servers["s1"]
    assert s1.in_flight == 1
    clock.now += 31.0
    for _ in range(1024):
        choice = decided(tables)
        tables.finish(choice.decision_id, True, 1.0, "")
    assert s1.in_flight == 0 and tables.stats()["pending"] == 0


def test_outcomes_are_all_sent_below_the_rate_and_sampled_above_it(clock: FakeClock) -> None:
    tables = RouteTables(clock=clock, rng=random.Random(9), outcome_rate=100.0)
    tables.apply(table(1), WATCHED)

    def second(decisions: int) -> list[pb.Outcome]:
        sent = []
        for _ in range(decisions):
            choice = decided(tables)
            outcome = tables.finish(choice.decision_id, True, 1.0, "")
            if outcome is not None:
                sent.append(outcome)
            clock.now += 1.0 / decisions
        return sent

    quiet = second(80)
    assert len(quiet) == 80 and all(o.local.sample_weight == 0 for o in quiet)  # 0 reads as weight 1
    busy = [second(10_000) for _ in range(3)][1:]  # the first busy second ramps up; the next ones are steady
    for sent in busy:
        assert 80 <= len(sent) <= 125  # about the rate, whatever the traffic
        assert sum(o.local.sample_weight for o in sent) == pytest.approx(10_000, rel=0.2)  # and they stand for all
    # Left-out outcomes still settle the decision locally: nothing stays in flight.
    assert all(s.in_flight == 0 for s in tables.pools["api"].servers.values())


def test_stats_say_how_fresh_the_tables_and_the_reports_are(clock: FakeClock) -> None:
    tables = RouteTables(clock=clock, rng=random.Random(1))
    assert tables.stats()["table_gap_p99_ms"] == 0.0  # nothing taken yet
    assert tables.apply(table(1), WATCHED)
    for i, gap_s in enumerate([0.010] * 98 + [0.080, 0.200], start=2):
        clock.now += gap_s
        assert tables.apply(change(i, i - 1, server("s1", in_flight=i)), WATCHED)
    clock.now += 1.0
    assert not tables.apply(change(200, 150), WATCHED)  # ignored: no gap counted
    for _ in range(3):
        tables.decide("api")
        tables.in_flight_report()
        clock.now += 0.005
    stats = tables.stats()
    assert stats["table_gap_p50_ms"] == pytest.approx(10.0)
    assert stats["table_gap_p99_ms"] == pytest.approx(80.0)
    assert stats["report_gap_p50_ms"] == pytest.approx(5.0)


def test_stats_say_how_old_tables_are_when_taken(clock: FakeClock) -> None:
    from google.protobuf import timestamp_pb2

    wall = FakeClock()
    wall.now = 1_700_000_000.0
    tables = RouteTables(clock=clock, wall=wall, rng=random.Random(1))
    assert tables.apply(table(1), WATCHED)  # no generated_at: no age counted
    assert tables.stats()["table_age_p99_ms"] == 0.0
    for i, age_ms in enumerate([2] * 98 + [15, 40], start=2):
        built = wall.now
        wall.now += age_ms / 1000.0
        stamp = timestamp_pb2.Timestamp(seconds=int(built), nanos=round((built % 1) * 1e9))
        assert tables.apply(change(i, i - 1, server("s1", in_flight=i), generated_at=stamp), WATCHED)
    stats = tables.stats()
    assert stats["table_age_p50_ms"] == pytest.approx(2.0, abs=0.01)
    assert stats["table_age_p99_ms"] == pytest.approx(15.0, abs=0.01)
    # A table built "after" it arrived (clocks apart) counts as 0, never negative.
    wall.now -= 1.0
    stamp = timestamp_pb2.Timestamp(seconds=int(wall.now) + 5)
    assert tables.apply(change(102, 101, server("s1"), generated_at=stamp), WATCHED)
    assert min(tables.table_ages._gaps) == 0.0


def test_gaps_keep_only_the_last_ones() -> None:
    from loadwarden.sdk._local import Gaps

    gaps = Gaps(size=4)
    now = 0.0
    for gap_s in (1.0, 1.0, 1.0, 1.0, 0.001, 0.001, 0.001, 0.001, 0.001):
        now += gap_s
        gaps.mark(now)
    assert gaps.percentile_ms(100) == pytest.approx(1.0)  # ms: the four 1 s gaps are overwritten
    assert Gaps().percentile_ms(50) == 0.0
