"""History: SQLite round trip, restart, retention, bounded queries, bad ranges."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from loadwarden.observability._history import MAX_QUERY_POINTS, MAX_QUERY_SPAN_S, History


def snapshot(cpu: float = 40.0, batch: int = 50, in_flight: int = 2, host: float | None = 30.0) -> dict[str, Any]:
    """A LoadStatus dict as MessageToDict(preserving_proto_field_name=True) writes it (defaults omitted)."""
    snap: dict[str, Any] = {
        "generated_at": "2026-01-01T00:00:00Z",
        "pools": [
            {
                "name": "api",
                "strategy": "round_robin",
                "eligible_servers": 1,
                "in_flight": in_flight,
                "active_leases": 3,
                "queue_length": 1,
                "concurrency_limit": 10,
                "servers": [
                    {
                        "id": "s1",
                        "address": "127.0.0.1:9001",
                        "state": "SERVER_STATE_SERVING",
                        "in_flight": in_flight,
                        "load": {"pool": "api", "server_id": "s1", "cpu_percent": cpu, "memory_percent": 61.5},
                        "ewma_latency_ms": 12.5,
                    },
                    {"id": "s2", "address": "127.0.0.1:9002", "state": "SERVER_STATE_STALE"},
                ],
            },
            {
                "name": "jobs",
                "strategy": "p2c",
                "servers": [{"id": "j1", "address": "x:1", "state": "SERVER_STATE_SERVING"}],
            },
        ],
        "operations": [{"name": "export", "batch_size": batch, "mode": "BATCH_MODE_THRESHOLD"}],
    }
    if host is not None:
        snap["host"] = {"cpu_percent": 10.0, "load_score": host}
    return snap


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "history.sqlite")


def test_record_query_round_trip(db_path: str) -> None:
    with History(db_path, retention_s=3600) as history:
        history.record(snapshot(cpu=40.0, batch=50), at=1000.0)
        history.record(snapshot(cpu=70.0, batch=20, host=None), at=1001.0)
        out = history.query(999.0, 1002.0)

    assert out["times"] == [1000.0, 1001.0]
    assert out["downsampled"] is False
    assert out["host_load_score"] == [30.0, None]
    api = out["pools"]["api"]
    assert api["eligible_servers"] == [1, 1]
    assert api["total_servers"] == [2, 2]
    assert api["active_leases"] == [3, 3]
    assert api["queue_length"] == [1, 1]
    assert api["concurrency_limit"] == [10, 10]
    s1, s2 = api["servers"]["s1"], api["servers"]["s2"]
    assert s1["cpu_percent"] == [40.0, 70.0]
    assert s1["memory_percent"] == [61.5, 61.5]
    assert s1["ewma_latency_ms"] == [12.5, 12.5]
    assert s1["state"] == ["SERVING", "SERVING"]
    assert s2["cpu_percent"] == [None, None]  # never reported: unknown, not 0
    assert s2["state"] == ["STALE", "STALE"]
    assert out["pools"]["jobs"]["in_flight"] == [0, 0]  # omitted by MessageToDict = proto default
    assert out["operations"]["export"]["batch_size"] == [50, 20]


def test_query_filters_by_pool_and_range(db_path: str) -> None:
    with History(db_path, retention_s=3600) as history:
        for i in range(5):
            history.record(snapshot(cpu=float(i)), at=100.0 + i)
        out = history.query(101.0, 103.0, pool="jobs")
        empty = history.query(0.0, 50.0)

    assert out["times"] == [101.0, 102.0, 103.0]
    assert list(out["pools"]) == ["jobs"]
    assert empty["times"] == [] and empty["pools"] == {} and empty["operations"] == {}


def test_query_is_bounded_and_keeps_the_newest(db_path: str) -> None:
    with History(db_path, retention_s=3600) as history:
        for i in range(100):
            history.record(snapshot(cpu=float(i)), at=float(i))
        out = history.query(0.0, 1000.0, limit=10)

    assert out["downsampled"] is True
    assert len(out["times"]) == 10
    assert out["times"][0] == 0.0 and out["times"][-1] == 99.0
    assert out["pools"]["api"]["servers"]["s1"]["cpu_percent"] == out["times"]


def test_a_thinned_query_reads_exactly_the_picked_samples() -> None:
    with History(None, retention_s=1e6) as history:
        for i in range(1_200):
            history.record(snapshot(cpu=i / 100, batch=i), at=float(i))
        out = history.query(0.0, 5_000.0, pool="api", limit=1_100)  # picked times span several IN lists

    assert out["downsampled"] is True and len(out["times"]) == 1_100
    assert out["pools"]["api"]["servers"]["s1"]["cpu_percent"] == [t / 100 for t in out["times"]]
    assert out["operations"]["export"]["batch_size"] == [int(t) for t in out["times"]]
    assert list(out["pools"]) == ["api"]


def test_a_sample_at_the_same_time_replaces_the_first(db_path: str) -> None:
    with History(db_path, retention_s=3600) as history:
        history.record(snapshot(cpu=10.0), at=5.0)
        history.record(snapshot(cpu=20.0), at=5.0)
        out = history.query(0.0, 10.0)
    assert out["times"] == [5.0]
    assert out["pools"]["api"]["servers"]["s1"]["cpu_percent"] == [20.0]


def test_history_survives_reopen(db_path: str) -> None:
    with History(db_path, retention_s=3600) as history:
        history.record(snapshot(cpu=33.0), at=2000.0)
    with History(db_path, retention_s=3600) as reopened:
        reopened.record(snapshot(cpu=44.0), at=2001.0)
        out = reopened.query(0.0, 3000.0)
    assert out["pools"]["api"]["servers"]["s1"]["cpu_percent"] == [33.0, 44.0]
    assert Path(db_path + "-wal").exists() or Path(db_path).stat().st_size > 0


def test_in_memory_history_works_without_a_file() -> None:
    with History(None, retention_s=60) as history:
        history.record(snapshot(), at=1.0)
        assert history.query(0.0, 2.0)["times"] == [1.0]


def test_prune_drops_rows_older_than_retention(db_path: str) -> None:
    with History(db_path, retention_s=10) as history:
        for at in (100.0, 105.0, 111.0, 115.0):
            history.record(snapshot(), at=at)
        assert history.prune(now=120.0) == 2  # cutoff 110: 100 and 105 go
        out = history.query(0.0, 200.0)
        counts = [
            history._db.execute(f"SELECT COUNT(*) FROM {t} WHERE at < 110").fetchone()[0]
            for t in ("samples", "pool_samples", "server_samples", "operation_samples")
        ]
    assert out["times"] == [111.0, 115.0]
    assert counts == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        (10.0, 5.0, "until .* is before since"),
        (math.nan, 5.0, "since must be a finite number"),
        (0.0, math.inf, "until must be a finite number"),
        (-1.0, 5.0, "since must not be negative"),
        (0.0, MAX_QUERY_SPAN_S + 1, "the range spans .* at most"),
        ("0", 5.0, "since must be a number"),
    ],
)
def test_bad_ranges_raise_with_a_message(since: Any, until: Any, message: str) -> None:
    with History(None, retention_s=60) as history, pytest.raises(ValueError, match=message):
        history.query(since, until)


@pytest.mark.parametrize("limit", [0, MAX_QUERY_POINTS + 1, 2.5])
def test_bad_limits_raise(limit: Any) -> None:
    with History(None, retention_s=60) as history, pytest.raises(ValueError, match="limit must be an integer"):
        history.query(0.0, 1.0, limit=limit)


@pytest.mark.parametrize("retention", [0, -1, math.nan])
def test_bad_retention_raises(retention: float) -> None:
    with pytest.raises(ValueError, match="retention_s must be a positive number"):
        History(None, retention_s=retention)


def test_another_schema_version_is_refused(db_path: str) -> None:
    with History(db_path, retention_s=60) as history:
        history._db.execute("PRAGMA user_version = 99")
    with pytest.raises(ValueError, match="schema version 99"):
        History(db_path, retention_s=60)


async def test_run_records_every_interval_and_prunes() -> None:
    now = [1000.0]
    history = History(None, retention_s=2.5, clock=lambda: now[0])
    taken: list[float] = []

    def snap() -> dict[str, Any]:
        taken.append(now[0])
        now[0] += 1.0  # each interval moves the fake wall clock by 1 s
        return snapshot(cpu=now[0])

    task = asyncio.create_task(history.run(snap, interval_s=0.001))
    try:
        while len(taken) < 6:
            await asyncio.sleep(0.001)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    out = await asyncio.to_thread(history.query, 0.0, 2000.0)
    history.close()
    assert out["times"], "nothing recorded"
    assert out["times"][-1] - out["times"][0] <= 2.5  # older samples were pruned
    assert out["times"] == sorted(out["times"]) and out["times"][-1] >= 1004.0


async def test_run_survives_a_bad_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    history = History(None, retention_s=60, clock=lambda: 1000.0)
    calls = [0]

    def snap() -> dict[str, Any]:
        calls[0] += 1
        return {"pools": [{"no_name": 1}]} if calls[0] == 1 else snapshot()

    task = asyncio.create_task(history.run(snap, interval_s=0.001))
    try:
        while calls[0] < 3:
            await asyncio.sleep(0.001)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "not recorded" in caplog.text
    assert (await asyncio.to_thread(history.query, 0.0, 2000.0))["times"] == [1000.0]
    history.close()


def test_a_directory_or_a_file_below_a_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        History(str(tmp_path), retention_s=60)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        History(str(tmp_path / "file" / "history.sqlite"), retention_s=60)


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "loadwarden.toml"  # e.g. a mistyped history_path
    path.write_text("[service]\n")
    with pytest.raises(ValueError, match="is not an SQLite database"):
        History(str(path), retention_s=60)
    assert path.read_text() == "[service]\n" and len(list(tmp_path.iterdir())) == 1


def test_a_damaged_sqlite_file_is_moved_aside_and_history_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.sqlite"
    History(str(path), retention_s=60).close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\xab" * (len(data) - 100))  # header intact, pages garbage
    with History(str(path), retention_s=60) as history:
        assert history.path == str(path)
    assert "moved aside" in caplog.text
    assert [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


# --- capacity planning's columns (schema 2) ----------------------------------------------

_V1_SCHEMA = """
CREATE TABLE samples (at REAL PRIMARY KEY, host_load_score REAL);
CREATE TABLE pool_samples (at REAL NOT NULL, pool TEXT NOT NULL, eligible_servers INTEGER NOT NULL,
    total_servers INTEGER NOT NULL, in_flight INTEGER NOT NULL, active_leases INTEGER NOT NULL,
    queue_length INTEGER NOT NULL, concurrency_limit INTEGER NOT NULL, PRIMARY KEY (at, pool));
CREATE TABLE server_samples (at REAL NOT NULL, pool TEXT NOT NULL, server TEXT NOT NULL, state TEXT NOT NULL,
    cpu_percent REAL, memory_percent REAL, in_flight INTEGER NOT NULL, ewma_latency_ms REAL NOT NULL,
    PRIMARY KEY (at, pool, server));
CREATE TABLE operation_samples (at REAL NOT NULL, operation TEXT NOT NULL, batch_size INTEGER NOT NULL,
    PRIMARY KEY (at, operation));
INSERT INTO samples VALUES (500.0, 12.0);
INSERT INTO pool_samples VALUES (500.0, 'api', 1, 2, 3, 0, 0, 0);
INSERT INTO operation_samples VALUES (500.0, 'export', 40);
PRAGMA user_version = 1;
"""


def test_a_version_1_file_is_migrated_keeping_its_samples(db_path: str) -> None:
    import sqlite3

    Path(db_path).parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.executescript(_V1_SCHEMA)
    with History(db_path, retention_s=3600) as history:
        history.record(snapshot(), at=1000.0)
        out = history.query(0.0, 2000.0)
        version = history._db.execute("PRAGMA user_version").fetchone()[0]
    assert version == 2
    assert out["times"] == [500.0, 1000.0]
    api = out["pools"]["api"]
    assert api["in_flight"] == [3, 2]
    assert api["requests_total"] == [None, 0]  # not recorded before version 2
    assert out["operations"]["export"]["batch_size"] == [40, 50]


def test_planning_columns_are_recorded_and_read_back() -> None:
    snap = snapshot(cpu=40.0)
    snap["pools"][0]["requests_total"] = "1234"  # MessageToDict writes uint64 as a string
    snap["operations"][0] |= {"decisions_total": "17", "last_load_score": 55.5}
    with History(None, retention_s=3600) as history:
        history.record(snap, at=1000.0)
        fallback = snapshot()
        fallback["operations"][0]["fallback"] = True
        history.record(fallback, at=1010.0)
        rows = history.pool_rows("api", 0.0, 2000.0)
        ops = history.operation_rows("export", 0.0, 2000.0)
        assert history.pool_rows("nope", 0.0, 2000.0) == []
    # CPU in servers from the fresh reports only (s2 is stale); latency over servers with outcomes.
    assert rows[0] == (1000.0, 2, 2, 1234, 0.4, 12.5)
    assert rows[1][3] == 0
    assert ops == [(1000.0, 17, 55.5), (1010.0, 0, None)]


def test_plans_are_recorded_pruned_and_queried_beside_the_pools() -> None:
    with History(None, retention_s=100) as history:
        history.record(snapshot(), at=1000.0)
        history.record(snapshot(), at=1010.0)
        history.record_plan(1005.0, [("api", 2, 3, 3, None)])
        history.record_plan(1010.0, [("api", 2, 4, 3, 4)])
        out = history.query(900.0, 1100.0, pool="api")
        assert out["pools"]["api"]["plan"] == {
            "current_servers": [2, 2],
            "desired_servers": [3, 4],  # the plan at 1005 shows at the sample before it
            "reactive_servers": [3, 3],
            "predictive_servers": [None, 4],
        }
        history.prune(1109.0)  # the plan at 1005 goes, the sample and plan at 1010 stay
        assert history.query(0.0, 2000.0)["pools"]["api"]["plan"]["desired_servers"] == [4]
        history.prune(1111.0)
        assert history.query(0.0, 2000.0)["pools"] == {}
        with pytest.raises(ValueError, match="at"):
            history.record_plan(float("nan"), [])
