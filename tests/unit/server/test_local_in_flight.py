"""Local clients' in-flight counts at the core: summed per server, forgotten at a TTL or
the cap, and weighed by the strategies like the core's own selections. No sockets, no sleeps."""

from __future__ import annotations

import random
from typing import Any

import pytest

from loadwarden.policy import LocalInFlight
from loadwarden.policy._decisions import IdGenerator
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import LOCAL_IN_FLIGHT_TTL_S


def make_core(clock: ManualClock, strategy: str = "least_connections", **limits: Any) -> DecisionCore:
    core = DecisionCore(CoreLimits(**limits), clock=clock, rng=random.Random(3), ids=IdGenerator("t"))
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in (1, 2, 3)]
    core.configure_pool(PoolSettings(name="api", strategy=strategy), specs)
    return core


def in_flight(core: DecisionCore) -> dict[str, int]:
    return {sid: s.client_in_flight for sid, s in core.pool("api").servers.items()}


def test_counts_of_several_clients_add_up_and_changes_replace_a_clients_own() -> None:
    core = make_core(ManualClock())
    core.report_in_flight([LocalInFlight("api", {"s1": 3, "s2": 1}, complete=True)], "app", "a")
    core.report_in_flight([LocalInFlight("api", {"s1": 2})], "app", "b")
    assert in_flight(core) == {"s1": 5, "s2": 1, "s3": 0}
    core.report_in_flight([LocalInFlight("api", {"s1": 1})], "app", "a")  # a change: s2 stays
    assert in_flight(core) == {"s1": 3, "s2": 1, "s3": 0}
    core.report_in_flight([LocalInFlight("api", {"s3": 4}, complete=True)], "app", "a")  # all of a's
    assert in_flight(core) == {"s1": 2, "s2": 0, "s3": 4}
    assert core.pool("api").servers["s3"].in_flight_total == 4


def test_the_same_instance_of_two_callers_is_two_clients() -> None:
    core = make_core(ManualClock())
    core.report_in_flight([LocalInFlight("api", {"s1": 1})], "app", "x")
    core.report_in_flight([LocalInFlight("api", {"s1": 1})], "other-app", "x")
    assert in_flight(core)["s1"] == 2


def test_strategies_weigh_the_clients_counts() -> None:
    core = make_core(ManualClock())
    assert core.select("api").server.id  # builds least_connections' index
    core.report_in_flight([LocalInFlight("api", {"s1": 5, "s2": 5, "s3": 0}, complete=True)], "app", "a")
    picks = {core.select("api").server.id for _ in range(3)}
    assert picks == {"s3"}  # s3 holds 1 of its own selections before each: still least


def test_a_silent_client_is_forgotten_at_its_ttl() -> None:
    clock = ManualClock()
    core = make_core(clock)
    core.report_in_flight([LocalInFlight("api", {"s1": 2})], "app", "gone")
    clock.advance(LOCAL_IN_FLIGHT_TTL_S - 0.01)
    core.report_in_flight([LocalInFlight("api", {"s2": 1})], "app", "alive")
    core.expire()
    assert in_flight(core) == {"s1": 2, "s2": 1, "s3": 0}
    clock.advance(0.02)
    core.expire()
    assert in_flight(core) == {"s1": 0, "s2": 1, "s3": 0}
    assert len(core.local_in_flight) == 1 and core.local_in_flight.forgotten == 1


def test_past_the_cap_the_least_recently_heard_client_is_forgotten() -> None:
    clock = ManualClock()
    core = make_core(clock, max_local_clients=2)
    for name in ("a", "b"):
        core.report_in_flight([LocalInFlight("api", {"s1": 1})], "app", name)
        clock.advance(0.1)
    core.report_in_flight([LocalInFlight("api", {"s2": 1})], "app", "a")  # a heard again: b is the oldest
    core.report_in_flight([LocalInFlight("api", {"s3": 7})], "app", "c")
    assert len(core.local_in_flight) == 2
    assert in_flight(core) == {"s1": 1, "s2": 1, "s3": 7}


def test_unknown_pools_and_servers_are_skipped() -> None:
    core = make_core(ManualClock())
    core.report_in_flight([LocalInFlight("nope", {"s1": 1}), LocalInFlight("api", {"s9": 3, "s1": 1})], "app", "a")
    assert in_flight(core) == {"s1": 1, "s2": 0, "s3": 0}


def test_a_server_registered_again_starts_from_zero_and_a_deleted_pool_takes_its_counts() -> None:
    core = make_core(ManualClock())
    core.report_in_flight([LocalInFlight("api", {"s1": 4, "s2": 1})], "app", "a")
    core.deregister_server("api", "s1")
    core.register_server("api", ServerSpec("s1", "h:1"))
    assert in_flight(core)["s1"] == 0
    core.report_in_flight([LocalInFlight("api", {"s1": 1})], "app", "a")
    assert in_flight(core)["s1"] == 1  # not 4 - 3 = -3 or 5
    core.delete_pool("api")
    core.configure_pool(PoolSettings(name="api", strategy="p2c"), [ServerSpec("s1", "h:1")])
    core.report_in_flight([LocalInFlight("api", {"s1": 2})], "app", "a")
    assert in_flight(core)["s1"] == 2


@pytest.mark.parametrize("strategy", ["p2c", "peak_ewma", "q_linear"])
def test_the_count_reaches_every_strategys_view(strategy: str) -> None:
    core = make_core(ManualClock(), strategy)
    core.report_in_flight([LocalInFlight("api", {"s2": 9})], "app", "a")
    server = core.pool("api").servers["s2"]
    assert server.in_flight_total == 9 and server.active_requests == 9


def test_each_client_keeps_the_number_of_its_latest_report_until_forgotten() -> None:
    clock = ManualClock()
    core = make_core(clock)
    book = core.local_in_flight
    assert book.seq(("app", "a")) == 0  # never heard of
    core.report_in_flight([LocalInFlight("api", {"s1": 1})], "app", "a", 4)
    core.report_in_flight([LocalInFlight("api", {"s1": 2})], "app", "b", 9)
    core.report_in_flight([LocalInFlight("api", {"s1": 0})], "app", "a", 5)
    assert (book.seq(("app", "a")), book.seq(("app", "b")), book.seq(("other", "a"))) == (5, 9, 0)
    core.report_in_flight([LocalInFlight("api", {"s2": 1})], "app", "a")  # not numbered: says nothing held
    assert book.seq(("app", "a")) == 0
    clock.advance(LOCAL_IN_FLIGHT_TTL_S + 0.01)
    core.expire()
    assert book.seq(("app", "b")) == 0  # forgotten with its counts
