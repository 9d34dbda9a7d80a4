"""Load status snapshots: GetLoadStatus pages and WatchLoadStatus fan-out.

A snapshot is built in chunks of CHUNK_SERVERS servers with the event loop free
between them, so a huge pool never stalls other RPCs for long, and it stops
before MAX_ANSWER_BYTES (under the 4 MiB gRPC clients accept by default).

GetLoadStatus answers one page: at most ``page_size`` servers and operations
(DEFAULT_PAGE_SIZE when 0) and never more than MAX_ANSWER_BYTES; the rest is
reached with ``next_page_token`` (AIP-158). A pool split over pages appears on
each with its whole-pool counts and that page's servers.

WatchLoadStatus streams with the same pool filter and interval share one feed:
one task builds the snapshot once per tick, serializes it once, compares it
(without its timestamp) with the last one, and hands the same bytes to every
stream only when it changed. Intervals are rounded up to INTERVAL_STEPS_S (at
least MIN_EFFECTIVE_INTERVAL_MS), so at most ``len(INTERVAL_STEPS_S)`` feeds per
filter exist whatever intervals clients ask for, and a feed waits at least
``1 / MAX_BUILD_SHARE`` times its last build between builds. A stream that reads
slowly skips to the latest snapshot; nothing queues per stream. Streams are
capped service-wide and per caller.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from google.protobuf import wrappers_pb2 as _wrappers

from loadwarden.policy import InvalidArgument, Pool, ResourceExhausted
from loadwarden.v1 import common_pb2 as _common

from ..engine._core import DecisionCore
from . import _convert as convert

MIN_INTERVAL_MS = 100  # smallest interval_ms accepted; served at MIN_EFFECTIVE_INTERVAL_MS
MAX_INTERVAL_MS = 60_000
DEFAULT_INTERVAL_MS = 1_000
MIN_EFFECTIVE_INTERVAL_MS = 1_000
# Intervals a feed runs at, seconds; a requested interval is rounded up to one of them.
INTERVAL_STEPS_S = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)
# Most of the event loop's time one feed may spend building snapshots, fraction.
MAX_BUILD_SHARE = 0.05

# Largest snapshot sent, bytes of LoadStatus: under gRPC's default 4 MiB receive limit.
MAX_ANSWER_BYTES = 3 * 1024 * 1024
DEFAULT_PAGE_SIZE = 10_000  # servers and operations in a GetLoadStatus page when page_size is 0
MAX_PAGE_SIZE = 10_000  # a larger page_size is served as this
CHUNK_SERVERS = 100  # servers built between two yields to the event loop (about 0.5 ms)
_FIELD_OVERHEAD = 6  # tag and length prefix of one repeated entry, bytes (entries under 2 MiB)
_UNBOUNDED = 1 << 62

Pause = Callable[[], Awaitable[None]]


async def _yield_to_loop() -> None:
    await asyncio.sleep(0)


def check_interval_ms(interval_ms: int) -> float:
    """The interval a stream is served at, seconds: 0 means DEFAULT_INTERVAL_MS; others
    are rounded up to the next of INTERVAL_STEPS_S. InvalidArgument outside 100-60,000 ms."""
    if interval_ms == 0:
        interval_ms = DEFAULT_INTERVAL_MS
    if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
        raise InvalidArgument("interval_ms", f"must be 0 or {MIN_INTERVAL_MS}-{MAX_INTERVAL_MS}, got {interval_ms}")
    wanted_s = interval_ms / 1000.0
    return next(step for step in INTERVAL_STEPS_S if step >= wanted_s)


# --- snapshots ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: pool ``pool`` after server ``after`` (None: from its start),
    or, with ``operation`` set, the operations after that name ("" for the first)."""

    pool: str = ""
    after: str | None = None
    operation: str | None = None


def encode_token(filter_pool: str, cursor: Cursor) -> str:
    raw = json.dumps([1, filter_pool, cursor.pool, cursor.after, cursor.operation], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_token(token: str, filter_pool: str) -> Cursor:
    """The cursor ``token`` names. InvalidArgument when it is not one of ours or was issued
    for another pool filter."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, issued_for, pool, after, operation = json.loads(raw.decode("utf-8"))
        valid = (
            version == 1
            and isinstance(issued_for, str)
            and isinstance(pool, str)
            and (after is None or isinstance(after, str))
            and (operation is None or isinstance(operation, str))
        )
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        valid = False
    if not valid:
        raise InvalidArgument("page_token", "is not a next_page_token this service issued")
    if issued_for != filter_pool:
        raise InvalidArgument(
            "page_token",
            f"was issued for pool filter {issued_for!r}; send the same pool as in the request that returned it",
        )
    return Cursor(pool, after, operation)


async def _pool_header(pool: Pool, now: float, pause: Pause, chunk: int) -> _common.PoolStatus:
    """``pool``'s status with whole-pool counts and no servers."""
    eligible = in_flight = 0
    for i, server in enumerate(list(pool.servers.values()), 1):
        eligible += convert.is_serving(pool, server, now)
        in_flight += server.in_flight_total
        if i % (chunk * 4) == 0:
            await pause()
    return convert.pool_header(pool, eligible, in_flight)


async def build_snapshot(
    core: DecisionCore,
    pool_name: str,
    *,
    cursor: Cursor = Cursor(),
    max_entries: int = _UNBOUNDED,
    max_bytes: int = MAX_ANSWER_BYTES,
    chunk: int = CHUNK_SERVERS,
    pause: Pause = _yield_to_loop,
) -> tuple[_common.LoadStatus, Cursor | None]:
    """The status of ``pool_name`` (all pools and the operations when empty) from ``cursor``.

    Entries (servers, then operations) are added in name order until ``max_entries`` or
    until the next would take the snapshot past ``max_bytes`` (one always fits).
    ``pause`` is awaited after every ``chunk`` servers; state may change meanwhile, so a
    server removed during the build is left out. Returns the snapshot and where the next
    page starts (None when this one holds the rest).

    Raises:
        NotFound: ``pool_name`` does not exist.
    """
    now, wall_now = core.clock.monotonic(), core.clock.wall()
    pools = [core.pool(pool_name)] if pool_name else core.pools()
    status = _common.LoadStatus(generated_at=convert.timestamp(wall_now), pending_decisions=len(core.pending))
    if not pool_name and core.monitor is not None:
        status.host.CopyFrom(convert.host_load(core.monitor, now))
    room = max_bytes - status.ByteSize()
    entries = 0  # servers and operations placed
    placed = 0  # entries and pool headers placed: the first always fits, so pages progress

    def full(size: int) -> bool:
        return entries >= max_entries or (placed > 0 and size > room)

    if cursor.operation is None:
        start = bisect.bisect_left([p.name for p in pools], cursor.pool) if cursor.pool else 0
        for pool in pools[start:]:
            ids = sorted(pool.servers)
            first = 0
            if pool.name == cursor.pool and cursor.after is not None:
                first = bisect.bisect_right(ids, cursor.after)
                if first == len(ids):
                    continue
            header = await _pool_header(pool, now, pause, chunk)
            size = header.ByteSize() + _FIELD_OVERHEAD
            if full(size):
                return status, Cursor(pool.name, cursor.after if pool.name == cursor.pool else None)
            room -= size
            placed += 1
            servers: list[_common.ServerStatus] = []
            last = ids[first - 1] if first else None
            for i, server_id in enumerate(ids[first:], 1):
                server = pool.servers.get(server_id)
                if server is not None:
                    entry = convert.server_status(pool, server, now, wall_now)
                    size = entry.ByteSize() + _FIELD_OVERHEAD
                    if full(size):
                        header.servers.extend(servers)
                        status.pools.append(header)
                        return status, Cursor(pool.name, last)
                    servers.append(entry)
                    room -= size
                    entries += 1
                    placed += 1
                last = server_id
                if i % chunk == 0:
                    await pause()
            header.servers.extend(servers)
            status.pools.append(header)
    if pool_name:
        return status, None
    names = sorted(core.operations)
    first = bisect.bisect_right(names, cursor.operation) if cursor.operation else 0
    last_op = cursor.operation or ""
    for name in names[first:]:
        operation = core.operations.get(name)
        if operation is None:
            continue
        operation_entry = convert.operation_status(operation)
        size = operation_entry.ByteSize() + _FIELD_OVERHEAD
        if full(size):
            return status, Cursor(operation=last_op)
        status.operations.append(operation_entry)
        room -= size
        entries += 1
        placed += 1
        last_op = name
    return status, None


async def status_page(
    core: DecisionCore, pool_name: str, page_size: int, page_token: str, *, pause: Pause = _yield_to_loop
) -> tuple[_common.LoadStatus, str]:
    """One GetLoadStatus page and the token of the next ("" after the last).

    Raises:
        NotFound: ``pool_name`` does not exist.
        InvalidArgument: ``page_token`` is not a token issued for this filter.
    """
    cursor = decode_token(page_token, pool_name) if page_token else Cursor()
    size = min(page_size, MAX_PAGE_SIZE) if page_size else DEFAULT_PAGE_SIZE
    status, following = await build_snapshot(core, pool_name, cursor=cursor, max_entries=size, pause=pause)
    return status, encode_token(pool_name, following) if following is not None else ""


# --- WatchLoadStatus fan-out ---------------------------------------------------------


def _stamp(status: _common.LoadStatus) -> bytes:
    """``status``'s generated_at as serialized LoadStatus bytes, to put before its content."""
    return _common.LoadStatus(generated_at=status.generated_at).SerializeToString()


class _Feed:
    """One pool filter at one interval: builds, compares and publishes for all its streams."""

    def __init__(self, watchers: Watchers, key: tuple[int, str, float], core: DecisionCore) -> None:
        self._watchers = watchers
        self.key = key
        self._core = core
        self.streams = 0
        self.version = 0  # bumps on every published snapshot
        self.item: _wrappers.BytesValue | None = None
        self.error: Exception | None = None
        self.builds = 0  # snapshots built, published or not
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"loadwarden-watch-{self.key[1]}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        await self._changed.wait()

    def _publish(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        _, pool, interval_s = self.key
        w = self._watchers
        last = b""
        try:
            while True:
                began = w.monotonic()
                status, rest = await build_snapshot(
                    self._core, pool, max_bytes=w.max_bytes, chunk=w.chunk, pause=w.pause
                )
                self.builds += 1
                if rest is not None:
                    where = f"pool {pool!r}" if pool else "the unfiltered status"
                    raise ResourceExhausted(
                        f"answer size: a snapshot of {where} is over {w.max_bytes} bytes; watch one pool "
                        "(WatchLoadStatusRequest.pool) or page GetLoadStatus (page_size, page_token)"
                    )
                stamp = _stamp(status)
                status.ClearField("generated_at")
                content = status.SerializeToString(deterministic=True)
                if content != last:
                    last = content
                    # Concatenated messages merge: stamp + content parses as the whole snapshot.
                    self.item = _wrappers.BytesValue(value=stamp + content)
                    self._publish()
                spent = w.monotonic() - began
                await w.sleep(max(interval_s, spent / MAX_BUILD_SHARE))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every stream, which ends with it
            self.error = exc
            self._publish()
            w._forget(self)  # noqa: SLF001 - new streams start a fresh feed


class StreamCaps:
    """Open watch streams (WatchLoadStatus and WatchRoutes together), capped service-wide
    and per caller.

    Args:
        max_streams: Streams open at once, service-wide (``limits.max_watch_streams``).
        max_streams_per_caller: Streams one caller identity may hold
            (``limits.max_watch_streams_per_caller``). The anonymous caller ``""`` (no
            identities configured, so every stream is its) is held to ``max_streams`` only.
    """

    def __init__(self, max_streams: int, max_streams_per_caller: int | None = None) -> None:
        self.max_streams = max_streams
        self.max_streams_per_caller = max_streams_per_caller or max_streams
        self.open = 0
        self.by_caller: dict[str, int] = {}  # only callers with open streams

    def admit(self, caller: str, retry_after_s: float) -> None:
        """Counts a new stream of ``caller``; ResourceExhausted at either cap."""
        if self.open >= self.max_streams:
            raise ResourceExhausted.cap_reached(
                "max_watch_streams",
                "limits.max_watch_streams",
                self.max_streams,
                f"{self.open} watch streams (WatchLoadStatus and WatchRoutes) are open",
                retry_after_s=retry_after_s,
            )
        held = self.by_caller.get(caller, 0)
        if caller and held >= self.max_streams_per_caller:
            raise ResourceExhausted.cap_reached(
                "max_watch_streams_per_caller",
                "limits.max_watch_streams_per_caller",
                self.max_streams_per_caller,
                f"caller {caller[:64]!r} has {held} watch streams open",
                retry_after_s=retry_after_s,
            )
        self.open += 1
        self.by_caller[caller] = held + 1

    def leave(self, caller: str) -> None:
        self.open -= 1
        held = self.by_caller[caller] - 1
        if held:
            self.by_caller[caller] = held
        else:
            del self.by_caller[caller]


class Watchers:
    """WatchLoadStatus streams: shared feeds, capped service-wide and per caller.

    Args:
        max_streams: Streams open at once, service-wide (``limits.max_watch_streams``).
        max_streams_per_caller: Streams one caller identity may hold
            (``limits.max_watch_streams_per_caller``).
        sleep: Awaited between builds with the seconds to wait (tests pass a fake clock's).
        monotonic: Seconds, for the build-share guard.
        chunk: Servers built between two ``pause()`` calls.
        pause: Awaited between chunks; yields to the event loop by default.
        max_bytes: Largest snapshot sent, bytes; a larger one ends its streams.
        caps: The stream counts, when shared with WatchRoutes; its own when None.
    """

    def __init__(
        self,
        max_streams: int,
        max_streams_per_caller: int | None = None,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        chunk: int = CHUNK_SERVERS,
        pause: Pause = _yield_to_loop,
        max_bytes: int = MAX_ANSWER_BYTES,
        caps: StreamCaps | None = None,
    ) -> None:
        self.caps = caps if caps is not None else StreamCaps(max_streams, max_streams_per_caller)
        self.sleep = sleep
        self.monotonic = monotonic
        self.chunk = chunk
        self.pause = pause
        self.max_bytes = max_bytes
        self.feeds: dict[tuple[int, str, float], _Feed] = {}

    @property
    def open(self) -> int:
        return self.caps.open

    @property
    def by_caller(self) -> dict[str, int]:
        return self.caps.by_caller

    def _forget(self, feed: _Feed) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]

    async def stream(
        self, core: DecisionCore, pool: str, interval_s: float, caller: str
    ) -> AsyncIterator[_wrappers.BytesValue]:
        """Snapshots of ``pool`` (all pools when empty) until the caller stops reading.

        Each item is a BytesValue holding a serialized LoadStatus: on the wire the same
        bytes as ``WatchLoadStatusResponse(status=...)``, so the servicer can send the one
        serialization every stream of the feed shares.

        Raises:
            ResourceExhausted: ``max_streams`` streams are open already, ``caller`` holds
                ``max_streams_per_caller``, or the snapshot is over MAX_ANSWER_BYTES.
            NotFound: the pool does not exist (or stops existing).
        """
        self.caps.admit(caller, interval_s)
        key = (id(core), pool, interval_s)
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = _Feed(self, key, core)
            feed.start()
        feed.streams += 1
        try:
            seen = 0
            while True:
                if feed.error is not None:
                    raise feed.error
                if feed.version > seen and feed.item is not None:
                    seen = feed.version
                    yield feed.item
                else:
                    await feed.wait()
        finally:
            self.caps.leave(caller)
            feed.streams -= 1
            if feed.streams == 0:
                feed.stop()
                self._forget(feed)
