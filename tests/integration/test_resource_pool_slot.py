"""A request holds a slot of the real service and a model of a resource pool together.

`async with client.slot("gpu") as lease, pool.use("m") as model:` takes the slot first,
so a denied slot never loads a model, and a model is held only by requests that hold a
slot. The sync pair runs in a worker thread (``asyncio.to_thread``) because the service
under test runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from loadwarden.sdk import AsyncClient, Client, SlotDenied
from loadwarden.sdk._async.resource_pool import AsyncResourcePool
from loadwarden.sdk._sync.resource_pool import ResourcePool
from loadwarden.server import PoolSettings, PoolSpec, RunningService

from ..conftest import StartService

WAIT_S = 5.0  # bound of every wait on a condition, seconds


def active_leases(service: RunningService, pool: str) -> int:
    return service.core.pool(pool).slots.in_use


class Models:
    """Loads and unloads, recorded; the most slots held and models loaded at once, seen from inside a block."""

    def __init__(self, service: RunningService) -> None:
        self.service = service
        self.lock = threading.Lock()
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.inside = 0
        self.most_inside = 0
        self.most_leases = 0

    def load(self, name: str) -> str:
        with self.lock:
            self.loads.append(name)
        return f"model:{name}"

    def unload(self, model: str) -> None:
        with self.lock:
            self.unloads.append(model)

    async def aload(self, name: str) -> str:
        return self.load(name)

    async def aunload(self, model: str) -> None:
        self.unload(model)

    def entered(self) -> None:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.most_leases = max(self.most_leases, active_leases(self.service, "gpu"))

    def left(self) -> None:
        with self.lock:
            self.inside -= 1


@pytest.fixture
async def service(start: StartService) -> RunningService:
    return await start(PoolSpec(PoolSettings(name="gpu", max_concurrency=2, max_wait_ms=10_000)))


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(service.target, timeout_s=WAIT_S) as client:
        yield client


async def test_requests_hold_a_slot_and_a_model_together_and_give_both_back(
    service: RunningService, client: AsyncClient
) -> None:
    models = Models(service)
    pool = AsyncResourcePool(models.aload, models.aunload, max_resident=1)
    gate = asyncio.Event()

    async def request(name: str) -> str:
        async with client.slot("gpu", wait_s=WAIT_S) as lease, pool.use(name, timeout_s=WAIT_S) as model:
            assert lease.lease_id and model == f"model:{name}"
            models.entered()
            await asyncio.wait_for(gate.wait(), WAIT_S)
            models.left()
            return model

    first = [asyncio.create_task(request("sentiment")) for _ in range(2)]
    async with asyncio.timeout(WAIT_S):
        while models.inside < 2:  # both requests hold a slot and the one model
            await asyncio.sleep(0.005)
    assert active_leases(service, "gpu") == 2 and pool.stats().in_use == 2
    later = [asyncio.create_task(request(name)) for name in ("sentiment", "intent")]
    gate.set()
    async with asyncio.timeout(WAIT_S):
        results = await asyncio.gather(*first, *later)

    assert results == ["model:sentiment"] * 3 + ["model:intent"]
    assert models.most_leases == 2 and models.most_inside == 2  # the service's limit held
    assert models.loads in (["sentiment", "intent"], ["sentiment", "intent", "sentiment"])
    assert models.unloads == [f"model:{name}" for name in models.loads[:-1]]  # one resident at a time
    assert active_leases(service, "gpu") == 0 and pool.stats().in_use == 0
    assert pool.resident() == [models.loads[-1]]
    await pool.close()
    assert len(models.unloads) == len(models.loads)


async def test_a_denied_slot_loads_no_model(service: RunningService, client: AsyncClient) -> None:
    models = Models(service)
    pool = AsyncResourcePool(models.aload, models.aunload)
    held = [await client.acquire_slot("gpu") for _ in range(2)]

    with pytest.raises(SlotDenied) as denied:
        async with client.slot("gpu") as lease, pool.use("sentiment") as model:
            pytest.fail(f"the block must not run ({lease}, {model})")
    assert denied.value.denial == "AT_CAPACITY"
    assert models.loads == [] and pool.resident() == [] and pool.stats().waiting == 0

    for taken in held:
        await client.release_slot(taken.lease_id)
    async with client.slot("gpu") as lease, pool.use("sentiment") as model:
        assert model == "model:sentiment" and active_leases(service, "gpu") == 1
    assert models.loads == ["sentiment"]


async def test_the_sync_client_and_pool_compose_the_same_way(service: RunningService) -> None:
    models = Models(service)

    def requests() -> tuple[list[str], str]:
        with Client(service.target, timeout_s=WAIT_S) as client, ResourcePool(models.load, models.unload) as pool:
            with client.slot("gpu") as lease, pool.use("sentiment") as model:
                assert lease.lease_id and active_leases(service, "gpu") == 1
            held = [client.acquire_slot("gpu") for _ in range(2)]
            with pytest.raises(SlotDenied), client.slot("gpu"), pool.use("intent"):
                pytest.fail("the block must not run")
            for taken in held:
                client.release_slot(taken.lease_id)
            return pool.resident(), model

    resident, model = await asyncio.to_thread(requests)
    assert (resident, model) == (["sentiment"], "model:sentiment")
    assert models.loads == ["sentiment"] and models.unloads == ["model:sentiment"]  # closed with the pool
    assert active_leases(service, "gpu") == 0
