"""Load history: per-interval aggregates of the LoadStatus snapshot in an embedded SQLite file.

One `History` owns one connection. Every method that touches the database is
blocking and serialised by a lock; the service calls them through
``asyncio.to_thread`` so the event loop never waits on the disk. `run` does that
for you: it takes the snapshot on the loop (where the decision state lives) and
writes it from a worker thread.

Times are wall-clock seconds since the epoch (``time.time()``), the same clock the
dashboard's ``since``/``until`` use.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

_log = logging.getLogger(__name__)

DEFAULT_QUERY_POINTS = 300
MAX_QUERY_POINTS = 5_000  # one query never answers more sample times than this
MAX_QUERY_SPAN_S = 31 * 86_400.0  # one query never spans more than this, seconds

# Version of the schema below; a file with another version is refused, never guessed at.
SCHEMA_VERSION = 2
# What turns a file of an older version into this one; each step runs in one transaction.
_MIGRATIONS = {
    1: """
ALTER TABLE pool_samples ADD COLUMN requests_total INTEGER;
ALTER TABLE pool_samples ADD COLUMN cpu_servers REAL;
ALTER TABLE pool_samples ADD COLUMN latency_ms REAL;
ALTER TABLE operation_samples ADD COLUMN decisions_total INTEGER;
ALTER TABLE operation_samples ADD COLUMN load_score REAL;
""",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    at REAL PRIMARY KEY,            -- wall seconds since the epoch
    host_load_score REAL            -- percent 0-100; NULL when the host load is off or stale
);
CREATE TABLE IF NOT EXISTS pool_samples (
    at REAL NOT NULL,
    pool TEXT NOT NULL,
    eligible_servers INTEGER NOT NULL,
    total_servers INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    active_leases INTEGER NOT NULL,
    queue_length INTEGER NOT NULL,
    concurrency_limit INTEGER NOT NULL, -- 0 means unlimited
    requests_total INTEGER,         -- requests to route or admit since the pool was made (a counter); NULL before v2
    cpu_servers REAL,               -- fresh reports' CPU summed, in servers (1.0 = one at 100 %); NULL: none
    latency_ms REAL,                -- mean of the servers' EWMA latency, over servers with outcomes; NULL: none
    PRIMARY KEY (at, pool)
);
CREATE TABLE IF NOT EXISTS server_samples (
    at REAL NOT NULL,
    pool TEXT NOT NULL,
    server TEXT NOT NULL,
    state TEXT NOT NULL,            -- SERVING, STALE, DRAINING or EJECTED
    cpu_percent REAL,               -- NULL when the server never reported its load
    memory_percent REAL,
    in_flight INTEGER NOT NULL,
    ewma_latency_ms REAL NOT NULL,
    PRIMARY KEY (at, pool, server)
);
CREATE TABLE IF NOT EXISTS operation_samples (
    at REAL NOT NULL,
    operation TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    decisions_total INTEGER,        -- GetBatchSize answers since the operation was registered (a counter)
    load_score REAL,                -- the load score last seen, percent; NULL when the answer was the fallback
    PRIMARY KEY (at, operation)
);
CREATE TABLE IF NOT EXISTS plan_samples (
    at REAL NOT NULL,
    pool TEXT NOT NULL,
    current_servers INTEGER NOT NULL,
    desired_servers INTEGER NOT NULL,  -- the capacity planner's recommendation
    reactive_servers INTEGER NOT NULL, -- the HPA rule alone
    predictive_servers INTEGER,        -- for the forecast peak; NULL without a usable forecast
    PRIMARY KEY (at, pool)
);
"""

_POOL_FIELDS = (
    "eligible_servers",
    "total_servers",
    "in_flight",
    "active_leases",
    "queue_length",
    "concurrency_limit",
    "requests_total",
    "cpu_servers",
    "latency_ms",
)
_PLAN_FIELDS = ("current_servers", "desired_servers", "reactive_servers", "predictive_servers")
_SERVER_FIELDS = ("state", "cpu_percent", "memory_percent", "in_flight", "ewma_latency_ms")
_STATE_PREFIX = "SERVER_STATE_"
_IN_CHUNK = 500  # sample times per "at IN (...)" list, well under SQLite's bound-parameter limit


def _is_sqlite_file(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\0"
    except OSError:
        return False


class History:
    """Per-interval load aggregates, kept for ``retention_s`` seconds.

    Args:
        path: SQLite file, created with its folder when missing; None keeps the
            history in memory (lost on restart).
        retention_s: How long samples are kept, seconds, > 0; `prune` drops older ones.
        clock: Wall clock, seconds since the epoch; `run` stamps samples with it.

    A damaged SQLite file is moved aside to ``<path>.corrupt-<ns>`` with a
    warning and a fresh history starts, so a damaged history never stops the
    service from starting. A file that is not SQLite at all is refused and left
    untouched: the path is more likely a mistake than our file.

    Raises:
        ValueError: ``retention_s`` is not a positive finite number, the file
            holds another schema version or is not SQLite, or ``path`` contains a NUL.
        OSError: The file cannot be opened or created (a directory, a missing
            permission, a folder that cannot be made), with the path in the message.
    """

    def __init__(self, path: str | None, *, retention_s: float, clock: Callable[[], float] = time.time) -> None:
        if not (isinstance(retention_s, (int, float)) and math.isfinite(retention_s) and retention_s > 0):
            raise ValueError(f"retention_s must be a positive number of seconds, got {retention_s!r}")
        self.path = path
        self.retention_s = float(retention_s)
        self._clock = clock
        self._lock = threading.Lock()
        if path is not None:
            if "\0" in path:
                raise ValueError("history path must not contain a NUL character")
            if Path(path).is_dir():
                raise IsADirectoryError(errno.EISDIR, f"{path} is a directory; the history needs a file path")
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise NotADirectoryError(errno.ENOTDIR, f"{Path(path).parent} is not a directory") from None
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) or path is None:
                raise OSError(f"{path}: cannot open the SQLite history: {exc}") from None
            if not _is_sqlite_file(path):  # never rename a file that is not ours, e.g. a mistyped path
                raise ValueError(f"{path} is not an SQLite database (left untouched); name a new file") from None
            aside = f"{path}.corrupt-{time.time_ns()}"
            for suffix in ("", "-wal", "-shm"):  # the write-ahead log belongs to the bad file
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path + suffix, aside + suffix)
            _log.warning("history file %s is unusable (%s); moved aside to %s; history starts empty", path, exc, aside)
            try:
                self._db = self._connect()
            except sqlite3.Error as again:
                raise OSError(f"{path}: cannot open the SQLite history: {again}") from None
        except sqlite3.Error as exc:
            raise OSError(f"{path}: cannot open the SQLite history: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        # Used from worker threads (asyncio.to_thread), one at a time under the lock.
        db = sqlite3.connect(self.path or ":memory:", check_same_thread=False, isolation_level=None)
        self._db = db
        try:
            self._open()
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> None:
        db = self._db
        if self.path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last commits, never corrupts
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != 0 and version not in _MIGRATIONS and version != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: history schema version {version}, this build reads {SCHEMA_VERSION}")
        while version in _MIGRATIONS:
            db.executescript(f"BEGIN; {_MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;")
            version += 1
        db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        """Closes the database; the History is unusable afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, snapshot: Mapping[str, Any], at: float) -> None:
        """Stores one sample taken from a LoadStatus dict.

        Args:
            snapshot: ``MessageToDict(load_status, preserving_proto_field_name=True)``.
            at: When it was taken, wall seconds since the epoch. A second sample at the
                same time replaces the first.

        Raises:
            ValueError: ``at`` is not a finite, non-negative number.
        """
        _check_time(at, "at")
        pools, servers = [], []
        for pool in snapshot.get("pools", ()):
            name = str(pool["name"])
            members = pool.get("servers", ())
            cpu, latency = _pool_load(members)
            pools.append(
                (
                    at,
                    name,
                    int(pool.get("eligible_servers", 0)),
                    len(members),
                    int(pool.get("in_flight", 0)),
                    int(pool.get("active_leases", 0)),
                    int(pool.get("queue_length", 0)),
                    int(pool.get("concurrency_limit", 0)),
                    int(pool.get("requests_total", 0)),
                    cpu,
                    latency,
                )
            )
            for server in members:
                load = server.get("load")
                servers.append(
                    (
                        at,
                        name,
                        str(server["id"]),
                        _state(server.get("state")),
                        None if load is None else float(load.get("cpu_percent", 0.0)),
                        None if load is None else float(load.get("memory_percent", 0.0)),
                        int(server.get("in_flight", 0)),
                        float(server.get("ewma_latency_ms", 0.0)),
                    )
                )
        operations = [
            (
                at,
                str(op["name"]),
                int(op.get("batch_size", 0)),
                int(op.get("decisions_total", 0)),
                None if op.get("fallback") else float(op.get("last_load_score", 0.0)),
            )
            for op in snapshot.get("operations", ())
        ]
        host = snapshot.get("host")
        host_score = None if not host or host.get("stale") else float(host.get("load_score", 0.0))
        with self._write() as db:
            for table in ("samples", "pool_samples", "server_samples", "operation_samples"):
                db.execute(f"DELETE FROM {table} WHERE at = ?", (at,))
            db.execute("INSERT INTO samples VALUES (?, ?)", (at, host_score))
            db.executemany("INSERT INTO pool_samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", pools)
            db.executemany("INSERT INTO server_samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", servers)
            db.executemany("INSERT INTO operation_samples VALUES (?, ?, ?, ?, ?)", operations)

    def record_plan(self, at: float, plans: Iterable[tuple[str, int, int, int, int | None]]) -> None:
        """Stores the capacity planner's recommendations made at ``at``: ``(pool, current,
        desired, reactive, predictive or None)`` each; a second record at the same time replaces it.

        Raises:
            ValueError: ``at`` is not a finite, non-negative number.
        """
        _check_time(at, "at")
        rows = [(at, *plan) for plan in plans]
        with self._write() as db:
            db.execute("DELETE FROM plan_samples WHERE at = ?", (at,))
            db.executemany("INSERT INTO plan_samples VALUES (?, ?, ?, ?, ?, ?)", rows)

    def pool_rows(self, pool: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """``(at, total_servers, in_flight, requests_total, cpu_servers, latency_ms)`` of ``pool``
        in ``[since, until]``, oldest first: what the capacity planner forecasts from (any span)."""
        _check_span(since, until)
        with self._lock:
            return self._db.execute(
                "SELECT at, total_servers, in_flight, requests_total, cpu_servers, latency_ms FROM pool_samples"
                " WHERE pool = ? AND at BETWEEN ? AND ? ORDER BY at",
                (pool, since, until),
            ).fetchall()

    def operation_rows(self, operation: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """``(at, decisions_total, load_score)`` of ``operation`` in ``[since, until]``, oldest first."""
        _check_span(since, until)
        with self._lock:
            return self._db.execute(
                "SELECT at, decisions_total, load_score FROM operation_samples"
                " WHERE operation = ? AND at BETWEEN ? AND ? ORDER BY at",
                (operation, since, until),
            ).fetchall()

    def prune(self, now: float) -> int:
        """Drops samples older than ``now - retention_s``; returns how many sample times went."""
        _check_time(now, "now")
        cutoff = now - self.retention_s
        with self._write() as db:
            gone = db.execute("DELETE FROM samples WHERE at < ?", (cutoff,)).rowcount
            for table in ("pool_samples", "server_samples", "operation_samples", "plan_samples"):
                db.execute(f"DELETE FROM {table} WHERE at < ?", (cutoff,))
        return int(gone)

    def query(
        self, since: float, until: float, *, pool: str | None = None, limit: int = DEFAULT_QUERY_POINTS
    ) -> dict[str, Any]:
        """Samples taken in ``[since, until]``, as series aligned on ``times``.

        When more than ``limit`` samples fall in the range, evenly spaced ones are
        answered (always the newest) and ``downsampled`` is true.

        Args:
            since: Start, wall seconds since the epoch, >= 0.
            until: End, wall seconds since the epoch, >= since, at most
                `MAX_QUERY_SPAN_S` after ``since``.
            pool: Only this pool under ``pools``; None answers every pool.
            limit: Most sample times answered, 1 to `MAX_QUERY_POINTS`.

        Returns:
            ``{"since", "until", "downsampled", "times": [t...], "host_load_score": [...],
            "pools": {name: {field: [...], "servers": {id: {field: [...]}}}},
            "operations": {name: {"batch_size": [...]}}}``; every series has one
            entry per time, None where that sample lacks it.

        Raises:
            ValueError: A bad range or limit; the message says which and why.
        """
        check_range(since, until)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_POINTS:
            raise ValueError(f"limit must be an integer in 1-{MAX_QUERY_POINTS}, got {limit!r}")
        with self._lock:
            db = self._db
            rows = db.execute(
                "SELECT at, host_load_score FROM samples WHERE at BETWEEN ? AND ? ORDER BY at", (since, until)
            ).fetchall()
            downsampled = len(rows) > limit
            rows = _evenly(rows, limit)
            times = [r[0] for r in rows]
            index = {t: i for i, t in enumerate(times)}
            out: dict[str, Any] = {
                "since": since,
                "until": until,
                "downsampled": downsampled,
                "times": times,
                "host_load_score": [r[1] for r in rows],
                "pools": {},
                "operations": {},
            }
            if not times:
                return out
            n = len(times)
            pools: dict[str, Any] = out["pools"]

            def pool_series(name: str) -> dict[str, Any]:
                return pools.setdefault(name, _empty(_POOL_FIELDS, n) | {"servers": {}})

            for at, name, *values in self._rows("pool_samples", ("pool", *_POOL_FIELDS), times, downsampled, pool):
                _put(pool_series(name), _POOL_FIELDS, index[at], values)
            for at, name, server, *values in self._rows(
                "server_samples", ("pool", "server", *_SERVER_FIELDS), times, downsampled, pool
            ):
                servers = pool_series(name)["servers"]
                _put(servers.setdefault(server, _empty(_SERVER_FIELDS, n)), _SERVER_FIELDS, index[at], values)
            for at, name, *values in self._plan_rows(times[0], times[-1], pool):
                i = _nearest(times, at)
                _put(pool_series(name).setdefault("plan", _empty(_PLAN_FIELDS, n)), _PLAN_FIELDS, i, values)
            ops: dict[str, Any] = out["operations"]
            for at, name, size in self._rows("operation_samples", ("operation", "batch_size"), times, downsampled):
                ops.setdefault(name, _empty(("batch_size",), n))["batch_size"][index[at]] = size
        return out

    def _rows(
        self, table: str, cols: tuple[str, ...], times: list[float], thinned: bool, pool: str | None = None
    ) -> Iterator[Any]:
        """``(at, *cols)`` rows of ``table`` taken at exactly ``times`` (sorted), of ``pool`` when given.

        Unthinned, ``times`` are every sample in their span: one range scan of the
        primary key. Thinned, only the picked times are read, so a long range costs
        ``limit`` samples, not every sample in it.
        """
        if thinned:
            chunks = [(f"at IN ({','.join('?' * len(c))})", c) for c in _chunks(times, _IN_CHUNK)]
        else:
            chunks = [("at BETWEEN ? AND ?", [times[0], times[-1]])]
        by_pool, pool_args = (" AND pool = ?", [pool]) if pool is not None else ("", [])
        for where, args in chunks:
            yield from self._db.execute(
                f"SELECT at, {', '.join(cols)} FROM {table} WHERE {where}{by_pool}", [*args, *pool_args]
            )

    def _plan_rows(self, since: float, until: float, pool: str | None) -> list[Any]:
        by_pool, args = (" AND pool = ?", [pool]) if pool is not None else ("", [])
        return self._db.execute(
            f"SELECT at, pool, {', '.join(_PLAN_FIELDS)} FROM plan_samples WHERE at BETWEEN ? AND ?{by_pool}"
            " ORDER BY at",
            [since, until, *args],
        ).fetchall()

    async def run(self, snapshot_json: Callable[[], Mapping[str, Any]], interval_s: float) -> None:
        """Records a snapshot every ``interval_s`` seconds, and prunes, until cancelled.

        The snapshot is taken on the calling event loop; the writes run in a worker
        thread. A failed write is logged and the next interval tries again.

        Raises:
            ValueError: ``interval_s`` is not a positive finite number.
        """
        if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        while True:
            now = self._clock()
            try:
                snapshot = snapshot_json()
                await asyncio.to_thread(self._record_and_prune, snapshot, now)
            except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
                _log.warning("load history: sample at %.3f not recorded: %s", now, exc)
            await asyncio.sleep(interval_s)

    def _record_and_prune(self, snapshot: Mapping[str, Any], now: float) -> None:
        self.record(snapshot, now)
        self.prune(now)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, in one transaction: committed, or rolled back when the body raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def check_range(since: float, until: float) -> None:
    """Raises ValueError unless ``0 <= since <= until <= since + MAX_QUERY_SPAN_S``, all finite."""
    _check_time(since, "since")
    _check_time(until, "until")
    if until < since:
        raise ValueError(f"until ({until}) is before since ({since})")
    if until - since > MAX_QUERY_SPAN_S:
        raise ValueError(f"the range spans {until - since:.0f} s, at most {MAX_QUERY_SPAN_S:.0f} s may be asked")


def _check_span(since: float, until: float) -> None:
    _check_time(since, "since")
    _check_time(until, "until")
    if until < since:
        raise ValueError(f"until ({until}) is before since ({since})")


def _check_time(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds since the epoch, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def _pool_load(servers: Iterable[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """A pool's CPU in servers (fresh reports only: a stale one is unknown, not idle) and the
    mean EWMA latency of the servers that have one; None for either when no server has it."""
    cpu = [
        float(s["load"].get("cpu_percent", 0.0)) / 100.0
        for s in servers
        if s.get("load") is not None and _state(s.get("state")) != "STALE"
    ]
    latency = [float(s["ewma_latency_ms"]) for s in servers if float(s.get("ewma_latency_ms", 0.0)) > 0]
    return (sum(cpu) if cpu else None), (sum(latency) / len(latency) if latency else None)


def _nearest(times: list[float], at: float) -> int:
    """Index of the sample time at or just before ``at`` (the first one when ``at`` is earlier)."""
    return max(0, bisect.bisect_right(times, at) - 1)


def _state(value: object) -> str:
    text = str(value or "UNSPECIFIED")
    return text.removeprefix(_STATE_PREFIX)


def _evenly(rows: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``rows``, evenly spaced, keeping the last."""
    if len(rows) <= limit:
        return rows
    step = (len(rows) - 1) / (limit - 1) if limit > 1 else 0.0
    picks = sorted({len(rows) - 1 - round(i * step) for i in range(limit)})
    return [rows[i] for i in picks]


def _chunks(items: list[float], size: int) -> Iterator[list[float]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _empty(fields: Iterable[str], n: int) -> dict[str, list[Any]]:
    return {f: [None] * n for f in fields}


def _put(series: dict[str, Any], fields: Iterable[str], i: int, values: Iterable[Any]) -> None:
    for field, value in zip(fields, values, strict=True):
        series[field][i] = value
