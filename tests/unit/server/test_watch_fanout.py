"""WatchLoadStatus fan-out and GetLoadStatus pages, over a DecisionCore with fake time.

Feeds sleep on a fake timer that only the test advances, so every tick is explicit;
no test waits on wall-clock time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument, NotFound, ResourceExhausted
from loadwarden.policy._model import LoadSample
from loadwarden.policy._operations import OperationSettings
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import LoadReportIn
from loadwarden.server.rpc._watch import (
    MAX_BUILD_SHARE,
    Cursor,
    Watchers,
    build_snapshot,
    check_interval_ms,
    status_page,
)
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb

READ_DEADLINE_S = 5.0


class FakeTimer:
    """``sleep`` for the feeds: sleepers wake only when ``advance`` passes their time."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.asked: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.clock.monotonic() + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        now = self.clock.monotonic()
        due = [f for t, f in self._sleepers if t <= now]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > now]
        for future in due:
            if not future.done():
                future.set_result(None)
        await settle()


async def settle(rounds: int = 200) -> None:
    """Lets every ready task run (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_core(clock: ManualClock, servers: int = 3, pools: tuple[str, ...] = ("api",)) -> DecisionCore:
    core = DecisionCore(CoreLimits(), clock=clock, rng=random.Random(1))
    for name in pools:
        specs = [ServerSpec(f"{name}-{i:03d}", f"127.0.0.1:{9000 + i}") for i in range(servers)]
        core.configure_pool(PoolSettings(name=name), specs)
    return core


def report(core: DecisionCore, pool: str, server_id: str, cpu: float) -> None:
    core.report_load([LoadReportIn(pool, server_id, LoadSample(cpu, 10.0, 1, 5.0, 0.0))])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timer(clock: ManualClock) -> FakeTimer:
    return FakeTimer(clock)


@pytest.fixture
async def watchers(clock: ManualClock, timer: FakeTimer) -> AsyncIterator[Watchers]:
    w = Watchers(100, 3, sleep=timer.sleep, monotonic=clock.monotonic)
    yield w
    for feed in list(w.feeds.values()):
        feed.stop()


async def close(stream: AsyncIterator[Any]) -> None:
    """Ends a stream as a departing caller does (``Watchers.stream`` is an async generator)."""
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()


async def read(stream: Any) -> common.LoadStatus:
    item = await asyncio.wait_for(stream.__anext__(), READ_DEADLINE_S)
    return common.LoadStatus.FromString(item.value)


async def test_many_streams_share_one_build_and_one_serialization(
    clock: ManualClock, timer: FakeTimer, watchers: Watchers
) -> None:
    core = make_core(clock)
    streams = [watchers.stream(core, "api", 1.0, "") for _ in range(50)]
    firsts = [await asyncio.wait_for(s.__anext__(), READ_DEADLINE_S) for s in streams]
    [feed] = watchers.feeds.values()
    assert feed.builds == 1 and feed.streams == 50
    assert all(item is firsts[0] for item in firsts)  # the same bytes object for every stream

    report(core, "api", "api-001", 42.0)
    await timer.advance(1.0)
    seconds = [await asyncio.wait_for(s.__anext__(), READ_DEADLINE_S) for s in streams]
    assert feed.builds == 2 and all(item is seconds[0] for item in seconds)
    status = common.LoadStatus.FromString(seconds[0].value)
    assert {s.id: s.load.cpu_percent for s in status.pools[0].servers}["api-001"] == 42.0
    for s in streams:
        await close(s)
    assert watchers.feeds == {} and watchers.open == 0


async def test_an_unchanged_snapshot_is_built_but_not_sent(
    clock: ManualClock, timer: FakeTimer, watchers: Watchers
) -> None:
    core = make_core(clock)
    stream = watchers.stream(core, "api", 1.0, "")
    first = await read(stream)
    pending = asyncio.ensure_future(stream.__anext__())
    await timer.advance(1.0)
    await timer.advance(1.0)
    [feed] = watchers.feeds.values()
    assert feed.builds == 3 and not pending.done()  # built every tick, nothing new to send
    report(core, "api", "api-002", 7.0)
    await timer.advance(1.0)
    changed = common.LoadStatus.FromString((await asyncio.wait_for(pending, READ_DEADLINE_S)).value)
    assert changed.generated_at.ToNanoseconds() > first.generated_at.ToNanoseconds()
    await close(stream)


async def test_a_slow_reader_skips_to_the_latest_snapshot(
    clock: ManualClock, timer: FakeTimer, watchers: Watchers
) -> None:
    core = make_core(clock)
    stream = watchers.stream(core, "api", 1.0, "")
    await read(stream)
    for cpu in (10.0, 20.0, 30.0):
        report(core, "api", "api-000", cpu)
        await timer.advance(1.0)
    latest = await read(stream)
    assert latest.pools[0].servers[0].load.cpu_percent == 30.0
    pending = asyncio.ensure_future(stream.__anext__())
    await settle()
    assert not pending.done()  # the skipped snapshots are not queued behind it
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending  # the cancelled read ends the stream and frees its place
    await close(stream)
    assert watchers.open == 0


async def test_a_late_stream_gets_the_feeds_snapshot_at_once(
    clock: ManualClock, timer: FakeTimer, watchers: Watchers
) -> None:
    core = make_core(clock)
    early = watchers.stream(core, "api", 1.0, "")
    await read(early)
    late = watchers.stream(core, "api", 1.0, "")
    assert [s.id for s in (await read(late)).pools[0].servers] == ["api-000", "api-001", "api-002"]
    assert next(iter(watchers.feeds.values())).builds == 1
    await close(early)
    await close(late)


@pytest.mark.parametrize(
    ("interval_ms", "served_s"), [(0, 1.0), (100, 1.0), (1_000, 1.0), (1_001, 2.0), (4_000, 5.0), (59_000, 60.0)]
)
def test_intervals_are_rounded_up_to_a_few_steps(interval_ms: int, served_s: float) -> None:
    assert check_interval_ms(interval_ms) == served_s


@pytest.mark.parametrize("interval_ms", [1, 99, 60_001])
def test_intervals_outside_the_contract_are_refused(interval_ms: int) -> None:
    with pytest.raises(InvalidArgument, match=r"^interval_ms: "):
        check_interval_ms(interval_ms)


async def test_feeds_are_per_filter_and_interval_and_end_with_their_last_stream(
    clock: ManualClock, watchers: Watchers
) -> None:
    core = make_core(clock, pools=("api", "ml"))
    streams = [
        watchers.stream(core, pool, interval, "")
        for pool, interval in [("api", 1.0), ("api", 1.0), ("api", 2.0), ("ml", 1.0), ("", 1.0)]
    ]
    for s in streams:
        await read(s)
    assert sorted((k[1], k[2]) for k in watchers.feeds) == [("", 1.0), ("api", 1.0), ("api", 2.0), ("ml", 1.0)]
    await close(streams[0])
    assert len(watchers.feeds) == 4  # one api/1 s stream is still open
    for s in streams[1:]:
        await close(s)
    assert watchers.feeds == {} and watchers.by_caller == {}


async def test_streams_are_capped_per_caller_and_service_wide(clock: ManualClock, timer: FakeTimer) -> None:
    core = make_core(clock)
    watchers = Watchers(5, 2, sleep=timer.sleep, monotonic=clock.monotonic)
    alice = [watchers.stream(core, "api", 1.0, "alice") for _ in range(2)]
    for s in alice:
        await read(s)
    third = watchers.stream(core, "api", 1.0, "alice")
    with pytest.raises(ResourceExhausted) as refused:
        await read(third)
    assert refused.value.key == "limits.max_watch_streams_per_caller" and "'alice' has 2" in str(refused.value)
    bob = watchers.stream(core, "api", 1.0, "bob")
    await read(bob)
    # The anonymous caller (no identities configured) is held to the service-wide cap only.
    anonymous = [watchers.stream(core, "api", 1.0, "") for _ in range(2)]
    for s in anonymous:
        await read(s)
    with pytest.raises(ResourceExhausted) as refused:
        await read(watchers.stream(core, "api", 1.0, ""))
    assert refused.value.key == "limits.max_watch_streams"
    for s in (*alice, bob, *anonymous):
        await close(s)
    assert watchers.open == 0 and watchers.by_caller == {}
    again = watchers.stream(core, "api", 1.0, "alice")
    await read(again)
    await close(again)


async def test_a_deleted_pool_ends_its_streams(clock: ManualClock, timer: FakeTimer, watchers: Watchers) -> None:
    core = make_core(clock)
    streams = [watchers.stream(core, "api", 1.0, "") for _ in range(3)]
    for s in streams:
        await read(s)
    core.delete_pool("api")
    await timer.advance(1.0)
    for s in streams:
        with pytest.raises(NotFound):
            await read(s)
    assert watchers.feeds == {} and watchers.open == 0


async def test_a_snapshot_over_the_answer_bound_ends_the_stream_saying_how_to_page(
    clock: ManualClock, timer: FakeTimer
) -> None:
    core = make_core(clock, servers=200)
    watchers = Watchers(10, 10, sleep=timer.sleep, monotonic=clock.monotonic, max_bytes=2_000)
    with pytest.raises(ResourceExhausted, match="page GetLoadStatus"):
        await read(watchers.stream(core, "api", 1.0, ""))


async def test_building_yields_to_the_loop_between_chunks_and_backs_off_when_slow(
    clock: ManualClock, timer: FakeTimer
) -> None:
    core = make_core(clock, servers=1_000)
    pauses = 0

    async def slow_pause() -> None:  # each chunk "takes" 10 ms of the fake clock
        nonlocal pauses
        pauses += 1
        clock.advance(0.01)
        await asyncio.sleep(0)

    watchers = Watchers(10, 10, sleep=timer.sleep, monotonic=clock.monotonic, chunk=50, pause=slow_pause)
    stream = watchers.stream(core, "api", 1.0, "")
    await read(stream)
    assert pauses >= 1_000 // 50
    await settle()
    spent = pauses * 0.01
    assert timer.asked == [pytest.approx(max(1.0, spent / MAX_BUILD_SHARE))] and timer.asked[0] > 1.0
    await close(stream)


def test_watch_items_are_watch_responses_on_the_wire(clock: ManualClock) -> None:
    async def first_item() -> Any:
        watchers = Watchers(1, 1)
        stream = watchers.stream(make_core(clock), "api", 1.0, "")
        item = await stream.__anext__()
        await close(stream)
        return item

    item = asyncio.run(first_item())
    # The servicer's response serializer is WatchLoadStatusResponse's; it must write the shared bytes as they are.
    wire = pb.WatchLoadStatusResponse.SerializeToString(item)
    parsed = pb.WatchLoadStatusResponse.FromString(wire)
    assert parsed.status == common.LoadStatus.FromString(item.value)
    assert parsed.status.HasField("generated_at") and parsed.status.pools[0].servers[0].id == "api-000"


# --- GetLoadStatus pages ----------------------------------------------------------------


async def all_pages(core: DecisionCore, pool: str, page_size: int) -> list[tuple[common.LoadStatus, str]]:
    pages, token = [], ""
    while True:
        status, token = await status_page(core, pool, page_size, token)
        pages.append((status, token))
        if not token:
            return pages
        assert len(pages) < 100


async def test_pages_together_hold_the_whole_snapshot(clock: ManualClock) -> None:
    core = make_core(clock, servers=12, pools=("a", "b", "c"))
    for name in ("op-1", "op-2", "op-3"):
        core.configure_operation(OperationSettings(name=name))
    report(core, "b", "b-005", 90.0)
    whole, rest = await build_snapshot(core, "")
    assert rest is None
    pages = await all_pages(core, "", 5)
    assert len(pages) == 8  # 36 servers + 3 operations, 5 a page
    servers = [(p.name, s.id) for status, _ in pages for p in status.pools for s in p.servers]
    assert servers == [(p.name, s.id) for p in whole.pools for s in p.servers]
    assert [o.name for status, _ in pages for o in status.operations] == ["op-1", "op-2", "op-3"]
    for status, _ in pages:
        assert sum(len(p.servers) for p in status.pools) + len(status.operations) <= 5
        for pool in status.pools:  # a split pool carries its whole-pool counts on each page
            assert pool.eligible_servers == next(p for p in whole.pools if p.name == pool.name).eligible_servers


async def test_an_old_client_without_page_fields_gets_a_bounded_first_page(clock: ManualClock) -> None:
    core = make_core(clock, servers=300)
    status, token = await status_page(core, "", 0, "")
    assert token == "" and len(status.pools[0].servers) == 300  # under the default page: the whole answer
    small, rest = await build_snapshot(core, "", max_bytes=4_000)
    assert rest == Cursor("api", small.pools[0].servers[-1].id) and small.ByteSize() <= 4_000


async def test_a_filtered_page_token_is_tied_to_its_filter(clock: ManualClock) -> None:
    core = make_core(clock, servers=4, pools=("a", "b"))
    pages = await all_pages(core, "a", 3)
    assert [[s.id for s in status.pools[0].servers] for status, _ in pages] == [["a-000", "a-001", "a-002"], ["a-003"]]
    with pytest.raises(InvalidArgument, match=r"^page_token: was issued for pool filter 'a'"):
        await status_page(core, "b", 3, pages[0][1])
    with pytest.raises(InvalidArgument, match=r"^page_token: is not a next_page_token"):
        await status_page(core, "a", 3, "not-a-token")


async def test_paging_survives_changes_between_pages(clock: ManualClock) -> None:
    core = make_core(clock, servers=6, pools=("a", "b"))
    _first, token = await status_page(core, "", 4, "")
    core.deregister_server("a", "a-004")  # not yet sent
    core.delete_pool("b")
    second, token = await status_page(core, "", 4, token)
    assert token == "" and [s.id for s in second.pools[0].servers] == ["a-005"]
