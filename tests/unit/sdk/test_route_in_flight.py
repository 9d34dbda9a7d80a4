"""RouteTables' in-flight reports: what a client deciding locally tells the service of its
requests in flight, and how it reads the other clients' share from the table.

Pure data: a fake clock and a seeded RNG, no service, no sleeps.
"""

from __future__ import annotations

import random

import pytest

from loadwarden.sdk._local import (
    IN_FLIGHT_INTERVAL_S,
    IN_FLIGHT_REFRESH_S,
    MAX_IN_FLIGHT_SERVERS,
    MAX_UNHELD_REPORTS,
    RouteTables,
)
from loadwarden.v1 import decision_pb2 as pb
from tests.unit.sdk.test_route_tables import WATCHED, FakeClock, change, server, table


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tables(clock: FakeClock) -> RouteTables:
    routes = RouteTables(clock=clock, rng=random.Random(7))
    assert routes.apply(table(1, server("s1"), server("s2"), strategy="least_connections"), WATCHED)
    return routes


def counts(report: list[pb.LocalInFlight]) -> dict[str, tuple[dict[str, int], bool]]:
    return {e.pool: (dict(zip(e.server_ids, e.counts, strict=True)), e.complete) for e in report}


def test_nothing_to_report_before_any_decision(tables: RouteTables) -> None:
    assert tables.in_flight_due() is None
    assert tables.in_flight_report() == []
    assert tables.in_flight_due() is None


def test_the_first_report_says_every_count_then_only_the_changes(tables: RouteTables, clock: FakeClock) -> None:
    first = tables.decide("api")
    second = tables.decide("api")
    assert first is not None and second is not None
    assert {first.server.id, second.server.id} == {"s1", "s2"}  # least connections spreads them
    assert tables.wake_sender  # the first move asks for the sender
    assert tables.in_flight_due() == 0.0  # never reported yet

    assert counts(tables.in_flight_report()) == {"api": ({"s1": 1, "s2": 1}, True)}
    assert not tables.wake_sender
    assert tables.in_flight_due() == pytest.approx(IN_FLIGHT_REFRESH_S)  # counts held: refreshed later

    tables.finish(first.decision_id, True, 5.0, "")
    assert tables.wake_sender
    assert tables.in_flight_due() == pytest.approx(IN_FLIGHT_INTERVAL_S)  # at most this often
    clock.now += IN_FLIGHT_INTERVAL_S
    assert tables.in_flight_due() == 0.0
    assert counts(tables.in_flight_report()) == {"api": ({first.server.id: 0}, False)}


def test_a_decision_and_its_outcome_between_two_reports_say_nothing(tables: RouteTables) -> None:
    tables.in_flight_report()  # the first (complete, empty) report is behind us
    choice = tables.decide("api")
    assert choice is not None
    tables.finish(choice.decision_id, True, 1.0, "")
    assert tables.in_flight_report() == []  # the count is back where it was reported


def test_every_count_is_said_again_each_refresh_and_after_a_loss(tables: RouteTables, clock: FakeClock) -> None:
    choice = tables.decide("api")
    assert choice is not None
    tables.in_flight_report()
    clock.now += IN_FLIGHT_REFRESH_S
    assert tables.in_flight_due() == 0.0
    assert counts(tables.in_flight_report()) == {"api": ({choice.server.id: 1}, True)}

    tables.in_flight_lost()  # e.g. the send failed
    clock.now += IN_FLIGHT_INTERVAL_S
    assert tables.in_flight_due() == 0.0
    assert counts(tables.in_flight_report()) == {"api": ({choice.server.id: 1}, True)}

    tables.stream_down()
    tables.stream_up()  # maybe another replica, or a restarted service: it knows nothing
    assert counts(tables.in_flight_report()) == {"api": ({choice.server.id: 1}, True)}


def test_the_others_share_is_the_tables_count_less_this_clients_report(tables: RouteTables) -> None:
    mine = [tables.decide("api", exclude=("s2",)) for _ in range(3)]
    assert all(c is not None and c.server.id == "s1" for c in mine)
    tables.in_flight_report()  # s1: 3 reported
    # The service adds every client's counts: 3 of this one's, 4 of others' on s1, 2 on s2.
    assert tables.apply(
        change(2, 1, server("s1", in_flight=7), server("s2", in_flight=2), strategy="least_connections"), WATCHED
    )
    s1, s2 = tables.pools["api"].servers["s1"], tables.pools["api"].servers["s2"]
    assert (s1.in_flight, s1.peer_in_flight, s1.in_flight_total) == (3, 4, 7)
    assert (s2.in_flight, s2.peer_in_flight) == (0, 2)
    # least connections weighs the whole count: s2 (2) over s1 (7)
    choice = tables.decide("api")
    assert choice is not None and choice.server.id == "s2"


def lc_change(version: int, *servers: pb.RouteServer, **fields) -> pb.RouteTable:
    return change(version, version - 1, *servers, strategy="least_connections", **fields)


def test_reports_are_numbered_in_order(tables: RouteTables) -> None:
    assert tables.in_flight_seq == 0
    tables.decide("api")
    tables.in_flight_report()
    first = tables.in_flight_seq
    tables.decide("api")
    tables.in_flight_report()
    assert tables.in_flight_seq == first + 1
    tables.in_flight_goodbye()
    assert tables.in_flight_seq == first + 2


def test_the_others_share_takes_out_the_report_the_table_holds_not_the_last_sent(
    tables: RouteTables, clock: FakeClock
) -> None:
    pool = tables.pools["api"]
    for _ in range(2):
        tables.decide("api", exclude=("s2",))
    tables.in_flight_report()  # s1: 2
    held = tables.in_flight_seq
    clock.now += IN_FLIGHT_INTERVAL_S
    tables.decide("api", exclude=("s2",))
    tables.in_flight_report()  # s1: 3, not yet at the service when it built the next table
    # Built holding the first report: 2 of this client's and 4 of others' on s1.
    assert tables.apply(lc_change(2, server("s1", in_flight=6), in_flight_seq=held), WATCHED)
    s1, s2 = pool.servers["s1"], pool.servers["s2"]
    assert (s1.in_flight, s1.peer_in_flight) == (3, 4)  # the last report sent (3) would say 3
    # The next table holds the second report; s1's entry did not change (others went 4 -> 3),
    # yet the share is taken again from the count the client holds.
    assert tables.apply(lc_change(3, server("s2", in_flight=1), in_flight_seq=held + 1), WATCHED)
    assert (s1.peer_in_flight, s2.peer_in_flight) == (3, 1)


def test_a_table_that_holds_none_of_this_clients_reports_takes_out_nothing(tables: RouteTables) -> None:
    for _ in range(2):
        tables.decide("api", exclude=("s2",))
    tables.in_flight_report()
    # The service forgot this client (or restarted): its counts are not in the table's.
    assert tables.apply(lc_change(2, server("s1", in_flight=3), in_flight_seq=0), WATCHED)
    assert tables.pools["api"].servers["s1"].peer_in_flight == 3


def test_a_complete_report_replaces_what_the_table_holds(tables: RouteTables, clock: FakeClock) -> None:
    first = tables.decide("api", exclude=("s2",))
    tables.in_flight_report()  # s1: 1 (complete: the first report)
    assert tables.apply(lc_change(2, server("s1", in_flight=1), in_flight_seq=tables.in_flight_seq), WATCHED)
    assert first is not None
    tables.finish(first.decision_id, True, 1.0, "")
    tables.decide("api", exclude=("s1",))
    tables.in_flight_lost()  # the next report says every count: s2 only
    assert counts(tables.in_flight_report()) == {"api": ({"s2": 1}, True)}
    assert tables.apply(
        lc_change(3, server("s1", in_flight=0), server("s2", in_flight=1), in_flight_seq=tables.in_flight_seq), WATCHED
    )
    pool = tables.pools["api"]
    assert pool.held == {"s2": 1}
    assert (pool.servers["s1"].peer_in_flight, pool.servers["s2"].peer_in_flight) == (0, 0)


def test_reports_no_table_holds_are_kept_within_a_bound(tables: RouteTables, clock: FakeClock) -> None:
    pool = tables.pools["api"]
    for _ in range(MAX_UNHELD_REPORTS + 10):
        choice = tables.decide("api")
        assert choice is not None
        tables.in_flight_report()
        clock.now += IN_FLIGHT_INTERVAL_S
    assert len(pool._unheld) == MAX_UNHELD_REPORTS  # the oldest count as held
    assert sum(pool.held.values()) == 10  # those 10 reports' counts: one decision each
    assert tables.apply(lc_change(2, in_flight_seq=tables.in_flight_seq), WATCHED)
    assert not pool._unheld and pool.held == {s.id: s.in_flight for s in pool.servers.values()}


def test_a_table_below_this_clients_report_leaves_no_negative_share(tables: RouteTables) -> None:
    for _ in range(2):
        tables.decide("api", exclude=("s2",))
    tables.in_flight_report()
    # built before the report arrived
    assert tables.apply(change(2, 1, server("s1", in_flight=0), strategy="least_connections"), WATCHED)
    assert tables.pools["api"].servers["s1"].peer_in_flight == 0


def test_a_deleted_pool_reports_nothing(tables: RouteTables) -> None:
    tables.decide("api")
    assert tables.apply(pb.RouteTable(pool="api", deleted=True, version=2, epoch="e1"), WATCHED)
    assert tables.in_flight_report() == []


def test_a_report_stays_within_the_contracts_bound(clock: FakeClock) -> None:
    routes = RouteTables(clock=clock, rng=random.Random(1), max_table_servers=MAX_IN_FLIGHT_SERVERS + 10)
    many = [server(f"s{i}") for i in range(MAX_IN_FLIGHT_SERVERS + 5)]
    assert routes.apply(table(1, *many, strategy="round_robin"), WATCHED)
    for _ in range(MAX_IN_FLIGHT_SERVERS + 5):
        assert routes.decide("api") is not None
    # Over the bound: as many as fit now, as changes; the rest stay due.
    first = routes.in_flight_report()
    assert sum(len(e.server_ids) for e in first) == MAX_IN_FLIGHT_SERVERS and not first[0].complete
    clock.now += IN_FLIGHT_INTERVAL_S
    assert routes.in_flight_due() == 0.0
    rest = routes.in_flight_report()
    sent = {sid for e in first + rest for sid in e.server_ids}
    assert len(sent) == MAX_IN_FLIGHT_SERVERS + 5
    clock.now += IN_FLIGHT_INTERVAL_S
    assert routes.in_flight_report() == []


def test_each_client_names_itself_differently() -> None:
    assert RouteTables().instance != RouteTables().instance


def test_a_closing_client_says_it_holds_nothing_where_it_reported_counts(tables: RouteTables) -> None:
    assert tables.in_flight_goodbye() == []  # never reported anything
    choice = tables.decide("api")
    assert choice is not None
    tables.in_flight_report()
    tables.finish(choice.decision_id, True, 1.0, "")  # its 0 not reported yet
    assert counts(tables.in_flight_goodbye()) == {"api": ({}, True)}
    assert tables.in_flight_due() is None and tables.in_flight_goodbye() == []
