"""`slot()` served from an allotment the client holds, against a real in-process service."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

from loadwarden.sdk import AsyncClient, Client
from loadwarden.server import RunningService
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool

WAIT_S = 10.0
LIMIT = 8


async def pool_status(channel: Any) -> Any:
    answer = await pb_grpc.DecisionServiceStub(channel).GetLoadStatus(pb.GetLoadStatusRequest(pool="pool"))
    return answer.status.pools[0]


async def until(check: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def service(start) -> RunningService:
    return await start(three_server_pool("pool", max_concurrency=LIMIT, lease_ttl_ms=2_000))


async def test_slots_come_from_the_allotment_once_it_is_held_and_close_hands_it_back(
    service: RunningService, channel_to
) -> None:
    channel = channel_to(service)
    async with AsyncClient(service.target, slot_allotments={"pool": 4}) as client:
        async with client.slot("pool") as first:
            assert not first.lease_id.startswith("~")  # no allotment yet: the service granted it
        book = client._allotment_book
        assert book is not None

        async def held() -> bool:
            return book.pools["pool"].slots >= 1

        await until(held, "the allotment")
        async with client.slot("pool") as local:
            assert local.lease_id.startswith("~") and not local.fallback
        # Four blocks at once: the allotment grows to serve them (up to its size, 4).
        gate = asyncio.Event()

        async def hold() -> str:
            async with client.slot("pool", wait_s=5.0) as lease:
                await gate.wait()
                return lease.lease_id

        for _ in range(20):  # rounds until the allotment has grown to 4
            holders = [asyncio.ensure_future(hold()) for _ in range(4)]
            await asyncio.sleep(0.05)
            gate.set()
            ids = await asyncio.gather(*holders)
            gate.clear()
            if all(i.startswith("~") for i in ids):
                break
        assert all(i.startswith("~") for i in ids), ids
        assert book.pools["pool"].slots == 4 and book.local_grants >= 5
        assert (await pool_status(channel)).active_leases == 4  # the allotment is 4 of the pool's leases
    assert (await pool_status(channel)).active_leases == 0  # close() handed it back


async def test_twenty_clients_with_allotments_never_run_more_blocks_than_the_limit(
    service: RunningService, channel_to
) -> None:
    """A history checker over every block's run, allotted or granted by the service."""
    loop = asyncio.get_running_loop()
    events: list[tuple[float, int]] = []
    clients = [AsyncClient(service.target, slot_allotments={"pool": 3}) for _ in range(20)]
    try:
        # One client holds its allotment before the rush, so local grants are part of the history
        # however slow the machine (allotments are taken in the background, after a first slot).
        first = clients[0]
        async with first.slot("pool", wait_s=2.0):
            pass
        book = first._allotment_book
        assert book is not None

        async def held() -> bool:
            return book.pools["pool"].slots >= 1

        await until(held, "the first client's allotment")

        async def work(client: AsyncClient, n: int) -> None:
            for i in range(30):
                try:
                    async with client.slot("pool", wait_s=2.0):
                        events.append((loop.time(), 1))
                        await asyncio.sleep(0.001 * ((n + i) % 3))
                        events.append((loop.time(), -1))
                except Exception as err:  # noqa: BLE001 - a denial is fine; anything else fails below
                    assert type(err).__name__ == "SlotDenied", err

        await asyncio.gather(*(work(c, n) for n, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # at one time, ends before starts
        running += change
        peak = max(peak, running)
        assert running <= LIMIT, f"{running} blocks ran at once over a limit of {LIMIT}"
    assert running == 0 and peak > 1
    books = [c._allotment_book for c in clients]
    assert sum(b.local_grants for b in books if b is not None) > 0
    assert (await pool_status(channel_to(service))).active_leases == 0


async def test_a_killed_clients_allotment_comes_back_at_its_ttl(service: RunningService, channel_to) -> None:
    script = (
        "import sys, time\n"
        "from loadwarden.sdk import Client\n"
        f"client = Client({service.target!r}, slot_allotments={{'pool': 5}})\n"
        "with client.slot('pool'):\n"
        "    pass\n"
        "while not client._allotment_book.pools['pool'].slots:\n"
        "    time.sleep(0.01)\n"
        "print('holding', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), WAIT_S)
        assert line.strip() == b"holding"
        channel = channel_to(service)
        assert (await pool_status(channel)).active_leases >= 1
        child.kill()
        await child.wait()

        async def returned() -> bool:
            return (await pool_status(channel)).active_leases == 0

        await until(returned, "the dead client's allotment to come back at its TTL (2 s)")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_the_sync_client_serves_slots_from_its_allotment(service: RunningService, channel_to) -> None:
    def run() -> list[str]:
        ids = []
        with Client(service.target, slot_allotments={"pool": 2}) as client:
            deadline = time.monotonic() + WAIT_S
            while True:
                with client.slot("pool") as lease:
                    ids.append(lease.lease_id)
                if lease.lease_id.startswith("~"):
                    break
                assert time.monotonic() < deadline, "no allotted slot came"
                time.sleep(0.01)
        return ids

    ids = await asyncio.to_thread(run)
    assert ids[-1].startswith("~") and not ids[0].startswith("~")
    assert (await pool_status(channel_to(service))).active_leases == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [({"pool": 0}, "slot_allotments"), ({"pool": 1001}, "slot_allotments"), ({"": 3}, "pool names"), ([3], "map")],
)
def test_bad_allotment_settings_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AsyncClient("127.0.0.1:1", slot_allotments=value)
