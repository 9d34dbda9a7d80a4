"""WatchRoutes: routing tables pushed to the clients that decide locally.

One feed per pool, shared by every stream that watches it. Each
``limits.route_push_interval_ms`` it serializes each server's entry, the pool's
header (strategy, parameters, outlier settings, panic) and what the strategy
publishes for clients (``Strategy.published``), and compares them with the last
build. When anything changed it counts a new version and keeps the change
(servers added or changed, ids removed); the whole table of the latest version is
assembled from the kept entries only when a stream needs it. A stream sends each
pool's whole table first, then every change whose base is the version it sent
last; a stream that fell behind (it read slowly, so versions passed) gets the whole
latest table instead. Nothing queues per stream, and entries are serialized once
per build whatever the number of streams.

Tables and changes are assembled as wire bytes (a serialized header followed by
serialized ``RouteServer`` entries, field 6), the same concatenation trick the
WatchLoadStatus feed uses. A table over ``max_bytes`` ends its streams with
RESOURCE_EXHAUSTED. Streams count against the watch-stream caps (``StreamCaps``).

A stream that names its client's ``client_instance`` gets, appended to each item,
``in_flight_seq``: which of that client's in-flight reports the version's counts
held. The feed reads the watching clients' numbers when it starts a build (a pool
built in chunks may take a report in between: its counts are then a report ahead).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from google.protobuf import wrappers_pb2 as _wrappers

from loadwarden.policy import Backend, InvalidArgument, Pool, ResourceExhausted, check_name
from loadwarden.policy.strategies import STRATEGIES
from loadwarden.v1 import decision_pb2 as _pb

from ..engine._core import DecisionCore
from . import _convert as convert
from ._watch import CHUNK_SERVERS, MAX_ANSWER_BYTES, MAX_BUILD_SHARE, Pause, StreamCaps, _yield_to_loop

MAX_WATCHED_POOLS = 100  # pools one WatchRoutes stream may name
_SERVERS_FIELD = 6  # RouteTable.servers
_IN_FLIGHT_SEQ_FIELD = 17  # RouteTable.in_flight_seq
_LENGTH_DELIMITED = 2
_VARINT = 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SERVER_TAG = _varint(_SERVERS_FIELD << 3 | _LENGTH_DELIMITED)


def _server_field(entry: bytes) -> bytes:
    """``entry`` (a serialized RouteServer) as one element of RouteTable.servers, on the wire."""
    return _SERVER_TAG + _varint(len(entry)) + entry


_SEQ_TAG = _varint(_IN_FLIGHT_SEQ_FIELD << 3 | _VARINT)


def _seq_field(seq: int) -> bytes:
    """RouteTable.in_flight_seq = ``seq`` on the wire (present even when 0)."""
    return _SEQ_TAG + _varint(seq)


def check_pools(names: list[str]) -> list[str]:
    """WatchRoutesRequest.pools, checked: 1-100 distinct valid names."""
    if not 1 <= len(names) <= MAX_WATCHED_POOLS:
        raise InvalidArgument("pools", f"must name 1-{MAX_WATCHED_POOLS} pools, got {len(names)}")
    seen: set[str] = set()
    for index, name in enumerate(names):
        check_name(name, f"pools[{index}]")
        if name in seen:
            raise InvalidArgument(f"pools[{index}]", f"names pool {name!r} twice")
        seen.add(name)
    return names


def route_server(pool: Pool, server: Backend, now: float, wall_now: float, eligible: bool) -> _pb.RouteServer:
    """One server's entry of its pool's routing table."""
    entry = _pb.RouteServer(
        id=server.id,
        address=server.address,
        weight=server.weight,
        effective_weight=server.effective_weight,
        state=convert.server_state(pool, server, now),
        eligible=eligible,
        in_flight=server.in_flight_total,
        ewma_latency_ms=server.ewma_latency_ms,
        error_rate=server.error_rate,
        outcomes_total=server.outcomes_total,
    )
    if server.load is not None and server.load_wall is not None:
        entry.load.CopyFrom(convert.load_report(server.load))  # pool and server id left empty
        entry.load_reported_at.CopyFrom(convert.timestamp(server.load_wall))
    if server.ejected_until > now:
        # Rounded to the millisecond, so the wall/monotonic drift does not change it every build.
        entry.ejected_until.CopyFrom(convert.timestamp(round(wall_now + server.ejected_until - now, 3)))
    return entry


def table_header(pool: Pool) -> _pb.RouteTable:
    """The pool-wide fields of its table (no version, epoch or servers)."""
    settings = pool.settings
    _, params = STRATEGIES.params(settings.strategy, settings.strategy_params, f"pools.{pool.name}")
    published = pool.strategy.published()
    outlier = settings.outlier
    return _pb.RouteTable(
        pool=pool.name,
        strategy=settings.strategy,
        strategy_params_json=json.dumps(dataclasses.asdict(params), sort_keys=True, separators=(",", ":")),
        learned_json="" if published is None else json.dumps(published, sort_keys=True, separators=(",", ":")),
        consecutive_failures=0 if outlier.disabled else outlier.consecutive_failures,
        base_ejection_time_ms=outlier.base_ejection_time_ms,
        panic_threshold_percent=outlier.panic_threshold_percent,
        panic=pool.panic,
    )


class _RouteFeed:
    """One pool's table, rebuilt every interval and versioned, for every stream watching it."""

    def __init__(self, routes: RouteWatchers, core: DecisionCore, pool: str) -> None:
        self._routes = routes
        self._core = core
        self.pool = pool
        self.streams = 0
        self.version = 0  # of the latest build that changed something; 0 before the first
        self.error: Exception | None = None
        self.deleted = False
        self.builds = 0
        self._header = b""  # serialized pool-wide fields of the latest version
        self._entries: dict[str, bytes] = {}  # server id -> serialized RouteServer, latest version
        self._change: bytes = b""  # serialized RouteTable: the change from version - 1
        self._whole: tuple[int, bytes] | None = None  # (version, serialized whole table), built on demand
        self._subscribers: set[asyncio.Event] = set()
        self._clients: dict[tuple[str, str], int] = {}  # watching clients (caller, instance) -> streams
        self._seqs: dict[tuple[str, str], int] = {}  # their report numbers when the latest version was built
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"loadwarden-routes-{self.pool}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def subscribe(self, event: asyncio.Event, client: tuple[str, str] | None = None) -> None:
        self._subscribers.add(event)
        if client is not None:
            self._clients[client] = self._clients.get(client, 0) + 1

    def unsubscribe(self, event: asyncio.Event, client: tuple[str, str] | None = None) -> None:
        self._subscribers.discard(event)
        if client is not None and client in self._clients:
            self._clients[client] -= 1
            if not self._clients[client]:
                del self._clients[client]

    def seq_of(self, client: tuple[str, str]) -> int:
        """Which of ``client``'s in-flight reports the latest version holds (a client that
        began watching after its build: the latest report taken)."""
        seq = self._seqs.get(client)
        return self._core.local_in_flight.seq(client) if seq is None else seq

    def item_after(self, sent: int) -> bytes | None:
        """What a stream that last sent version ``sent`` (0: nothing) sends next: the change
        when it applies to ``sent``, else the whole table; None when it is up to date."""
        if self.error is not None:
            raise self.error
        if self.version <= sent:
            return None
        if not self.deleted and sent == self.version - 1 and sent > 0:
            return self._change
        return self.whole()

    def whole(self) -> bytes:
        if self._whole is None or self._whole[0] != self.version:
            table = self._stamp(_pb.RouteTable.FromString(self._header), full=True)
            body = table.SerializeToString() + b"".join(
                _server_field(self._entries[sid]) for sid in sorted(self._entries)
            )
            self._check_size(body)
            self._whole = (self.version, body)
        return self._whole[1]

    def _stamp(self, table: _pb.RouteTable, *, full: bool) -> _pb.RouteTable:
        table.version = self.version
        table.epoch = self._routes.epoch
        table.full = full
        table.base_version = 0 if full else self.version - 1
        table.generated_at.CopyFrom(convert.timestamp(self._core.clock.wall()))
        return table

    def _check_size(self, body: bytes) -> None:
        if len(body) > self._routes.max_bytes:
            raise ResourceExhausted(
                f"answer size: the routing table of pool {self.pool!r} is {len(body)} bytes, over "
                f"{self._routes.max_bytes}; split the pool or decide centrally (SelectServer)"
            )

    def _publish(self) -> None:
        for event in self._subscribers:
            event.set()

    async def _build(self) -> bool:
        """Builds the pool's table; True when it changed (a new version is kept)."""
        r = self._routes
        pool = self._core.find_pool(self.pool)
        if pool is None:
            self.deleted = True
            self.version += 1
            gone = self._stamp(_pb.RouteTable(pool=self.pool, deleted=True), full=True)
            self._whole = (self.version, gone.SerializeToString())
            return True
        book = self._core.local_in_flight
        seqs = {client: book.seq(client) for client in self._clients}  # before the counts are read
        now, wall_now = self._core.clock.monotonic(), self._core.clock.wall()
        eligible = {server.id for server in pool.eligible(now)}
        header = table_header(pool).SerializeToString(deterministic=True)
        entries: dict[str, bytes] = {}
        changed: list[bytes] = []
        for i, server in enumerate(list(pool.servers.values()), 1):
            entry = route_server(pool, server, now, wall_now, server.id in eligible)
            entry_bytes = entry.SerializeToString(deterministic=True)
            entries[server.id] = entry_bytes
            if self._entries.get(server.id) != entry_bytes:
                changed.append(entry_bytes)
            if i % r.chunk == 0:
                await r.pause()
        removed = sorted(sid for sid in self._entries if sid not in entries)
        if self.version and header == self._header and not changed and not removed:
            return False
        self.version += 1
        change = self._stamp(_pb.RouteTable.FromString(header), full=False)
        change.removed_server_ids.extend(removed)
        body = change.SerializeToString() + b"".join(_server_field(e) for e in changed)
        self._check_size(body)
        self._header, self._entries, self._change, self._seqs = header, entries, body, seqs
        return True

    async def _run(self) -> None:
        r = self._routes
        try:
            while not self.deleted:
                began = r.monotonic()
                changed = await self._build()
                self.builds += 1
                if changed:
                    self._publish()
                spent = r.monotonic() - began
                await r.sleep(max(r.interval_s, spent / MAX_BUILD_SHARE))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every stream, which ends with it
            self.error = exc
            self._publish()
            r._forget(self)  # noqa: SLF001 - new streams start a fresh feed


class RouteWatchers:
    """WatchRoutes streams over one feed per pool, counted in the watch-stream caps.

    Args:
        caps: The watch-stream counts (shared with WatchLoadStatus).
        interval_s: Shortest time between two builds of a pool's table
            (``limits.route_push_interval_ms``), seconds.
        sleep: Awaited between builds with the seconds to wait (tests pass a fake clock's).
        monotonic: Seconds, for the build-share guard.
        chunk: Servers built between two ``pause()`` calls.
        pause: Awaited between chunks; yields to the event loop by default.
        max_bytes: Largest table or change sent, bytes; a larger one ends its streams.
    """

    def __init__(
        self,
        caps: StreamCaps,
        interval_s: float,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        chunk: int = CHUNK_SERVERS,
        pause: Pause = _yield_to_loop,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.caps = caps
        self.interval_s = interval_s
        self.sleep = sleep
        self.monotonic = monotonic
        self.chunk = chunk
        self.pause = pause
        self.max_bytes = max_bytes
        self.epoch = secrets.token_hex(8)  # this process's numbering of versions
        self.feeds: dict[tuple[int, str], _RouteFeed] = {}

    def _forget(self, feed: _RouteFeed) -> None:
        key = (id(feed._core), feed.pool)  # noqa: SLF001 - the feed's own key
        if self.feeds.get(key) is feed:
            del self.feeds[key]

    async def stream(
        self, core: DecisionCore, pools: list[str], caller: str, instance: str = ""
    ) -> AsyncIterator[_wrappers.BytesValue]:
        """Tables and changes of ``pools`` until the caller stops reading or every pool is deleted.

        Each item is a BytesValue holding a serialized RouteTable: on the wire the same
        bytes as ``WatchRoutesResponse(table=...)``. With ``instance`` (the caller's
        client_instance, checked) each table says which of its in-flight reports it holds.

        Raises:
            ResourceExhausted: a watch-stream cap is reached, or a table is over ``max_bytes``.
            NotFound: a pool does not exist at the start.
        """
        for index, name in enumerate(pools):
            core.pool(name, f"pools[{index}]")
        self.caps.admit(caller, self.interval_s)
        wake = asyncio.Event()
        client = (caller, instance) if instance else None
        feeds: list[_RouteFeed] = []
        try:
            for name in pools:
                key = (id(core), name)
                feed = self.feeds.get(key)
                if feed is None or feed.deleted:
                    feed = self.feeds[key] = _RouteFeed(self, core, name)
                    feed.start()
                feed.streams += 1
                feed.subscribe(wake, client)
                feeds.append(feed)
            sent = [0] * len(feeds)  # the version each pool's stream sent last
            while True:
                wake.clear()  # before reading the feeds, so a publish after this is not lost
                for i, feed in enumerate(feeds):
                    item = feed.item_after(sent[i])
                    if item is not None:
                        sent[i] = feed.version
                        if client is not None:
                            item += _seq_field(feed.seq_of(client))
                        yield _wrappers.BytesValue(value=item)
                if all(f.deleted and sent[i] >= f.version for i, f in enumerate(feeds)):
                    return  # every watched pool was deleted, and the stream said so
                await wake.wait()
        finally:
            self.caps.leave(caller)
            for feed in feeds:
                feed.unsubscribe(wake, client)
                feed.streams -= 1
                if feed.streams == 0:
                    feed.stop()
                    self._forget(feed)
