"""Configuration made through AdminService outlives the process (``file``) and reaches every
replica (``redis``): pools, servers, drains and operations.

Real services on 127.0.0.1:0, driven over gRPC; the Redis tests use a real redis-server.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import redis as redis_py

from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec, ServiceConfig, start_service
from loadwarden.server.app._config import StateSettings
from loadwarden.server.shared import RedisSettings
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for

_prefixes = itertools.count()


class Replica:
    def __init__(self, running: RunningService) -> None:
        self.running = running
        self.channel = grpc.aio.insecure_channel(running.target)
        self.admin = admin_grpc.AdminServiceStub(self.channel)
        self.decision = pb_grpc.DecisionServiceStub(self.channel)

    async def pools(self) -> dict[str, common.PoolStatus]:
        status = await self.decision.GetLoadStatus(pb.GetLoadStatusRequest())
        return {p.name: p for p in status.status.pools}

    async def operations(self) -> set[str]:
        status = await self.decision.GetLoadStatus(pb.GetLoadStatusRequest())
        return {o.name for o in status.status.operations}

    async def close(self) -> None:
        await self.channel.close()
        await self.running.stop(0)


Start = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Replica] = []

    async def _start(state: StateSettings, *pools: PoolSpec) -> Replica:
        running = await start_service(ServiceConfig(listen="127.0.0.1:0", pools=pools, state=state))
        replica = Replica(running)
        started.append(replica)
        return replica

    yield _start
    for replica in started:
        if replica.running.server is not None:
            await replica.channel.close()
            await replica.running.stop(0)


def file_state(path: Path) -> StateSettings:
    return StateSettings(store="file", path=str(path))


def redis_state(url: str, prefix: str) -> StateSettings:
    return StateSettings(store="redis", redis=RedisSettings(url=url, key_prefix=prefix))


async def make_changes(replica: Replica) -> None:
    """A pool with two servers (one drained) and an operation reading it, through AdminService."""
    config = common.PoolConfig(name="made", strategy="least_connections", max_concurrency=4)
    await replica.admin.ConfigurePool(admin.ConfigurePoolRequest(pool=config))
    for sid in ("m1", "m2"):
        server = common.ServerSpec(id=sid, address=f"127.0.0.1:70{sid[-1]}0", weight=2)
        await replica.admin.RegisterServer(admin.RegisterServerRequest(pool="made", server=server))
    await replica.admin.DrainServer(
        admin.DrainServerRequest(pool="made", server_id="m2", state=admin.DRAIN_STATE_DRAINING)
    )
    operation = common.OperationConfig(name="etl", max_batch_size=64, load_source=common.LOAD_SOURCE_POOL, pool="made")
    await replica.admin.ConfigureOperation(admin.ConfigureOperationRequest(operation=operation))


async def assert_changes_in_force(replica: Replica) -> None:
    pools = await replica.pools()
    made = pools["made"]
    assert made.strategy == "least_connections" and made.concurrency_limit == 4
    states = {s.id: s.state for s in made.servers}
    assert states == {"m1": common.SERVER_STATE_SERVING, "m2": common.SERVER_STATE_DRAINING}
    assert {s.weight for s in made.servers} == {2}
    assert "etl" in await replica.operations()


FILE_POOL = PoolSpec(PoolSettings(name="from-file", max_concurrency=2), (ServerSpec("f1", "127.0.0.1:9001"),))


async def test_the_file_store_keeps_admin_made_pools_servers_drains_and_operations(
    start: Start, tmp_path: Path
) -> None:
    first = await start(file_state(tmp_path))
    await make_changes(first)
    await first.close()
    second = await start(file_state(tmp_path))
    await assert_changes_in_force(second)
    await second.admin.DeregisterServer(admin.DeregisterServerRequest(pool="made", server_id="m1"))
    await second.admin.DeleteOperation(admin.DeleteOperationRequest(operation="etl"))
    await second.close()
    third = await start(file_state(tmp_path))
    assert {s.id for s in (await third.pools())["made"].servers} == {"m2"}
    assert "etl" not in await third.operations()


async def test_a_file_pool_changed_through_admin_keeps_the_change_until_the_file_changes(
    start: Start, tmp_path: Path
) -> None:
    first = await start(file_state(tmp_path), FILE_POOL)
    await first.admin.ConfigurePool(
        admin.ConfigurePoolRequest(pool=common.PoolConfig(name="from-file", max_concurrency=9))
    )
    await first.close()
    second = await start(file_state(tmp_path), FILE_POOL)  # the same file: the admin change stands
    assert (await second.pools())["from-file"].concurrency_limit == 9
    await second.admin.DeletePool(admin.DeletePoolRequest(pool="from-file"))
    await second.close()
    third = await start(file_state(tmp_path), FILE_POOL)  # deleted stays deleted while the file is unchanged
    assert "from-file" not in await third.pools()
    await third.close()
    edited = PoolSpec(PoolSettings(name="from-file", max_concurrency=3), FILE_POOL.servers)
    fourth = await start(file_state(tmp_path), edited)  # the operator edited the file: it wins
    assert (await fourth.pools())["from-file"].concurrency_limit == 3


async def test_a_corrupt_stored_configuration_is_set_aside_and_the_file_config_serves(
    start: Start, tmp_path: Path
) -> None:
    (tmp_path / "configuration.json").write_text("{not json", encoding="utf-8")
    replica = await start(file_state(tmp_path), FILE_POOL)
    assert set(await replica.pools()) == {"from-file"}
    assert list(tmp_path.glob("configuration.json.corrupt-*"))


async def test_a_change_on_one_replica_is_in_force_on_the_other_within_a_second(start: Start, redis_url: str) -> None:
    state = redis_state(redis_url, f"{{cat{next(_prefixes)}}}:")
    a, b = await start(state), await start(state)
    await make_changes(a)
    await wait_for(b.pools, lambda pools: "made" in pools, "the pool on b", timeout_s=1.0)
    await wait_for(b.operations, lambda ops: "etl" in ops, "the operation on b", timeout_s=1.0)

    async def drained_on_b() -> dict[str, int]:
        return {s.id: s.state for s in (await b.pools())["made"].servers}

    await wait_for(drained_on_b, lambda s: s.get("m2") == common.SERVER_STATE_DRAINING, "the drain on b", timeout_s=1.0)
    await assert_changes_in_force(b)
    await b.admin.DeletePool(admin.DeletePoolRequest(pool="made"))
    await wait_for(a.pools, lambda pools: "made" not in pools, "the deletion on a", timeout_s=1.0)


async def test_the_configuration_survives_every_replica_restarting(start: Start, redis_url: str) -> None:
    state = redis_state(redis_url, f"{{cat{next(_prefixes)}}}:")
    a, b = await start(state), await start(state)
    await make_changes(a)
    await wait_for(b.pools, lambda pools: "made" in pools, "the pool on b")
    await a.close()
    await b.close()
    c = await start(state)
    await assert_changes_in_force(c)


async def test_a_lost_event_is_healed_by_the_periodic_resync(start: Start, redis_url: str) -> None:
    prefix = f"{{cat{next(_prefixes)}}}:"
    state = redis_state(redis_url, prefix)
    a = await start(state)
    client = redis_py.Redis.from_url(redis_url)
    try:
        # A change written straight to the store, with no event: only the resync can find it.
        record = {"record": {"settings": {"max_concurrency": 5}, "servers": [], "drained": []}}
        client.hset(f"{prefix}config:pools", "quiet", json.dumps(record))
        client.incr(f"{prefix}config:version")
    finally:
        client.close()
    await wait_for(a.pools, lambda pools: "quiet" in pools, "the quiet pool on a", timeout_s=5.0)


async def test_an_emptied_redis_gets_the_configuration_back(
    start: Start, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loadwarden.server")
    prefix = f"{{cat{next(_prefixes)}}}:"
    state = redis_state(redis_url, prefix)
    a = await start(state, FILE_POOL)
    await make_changes(a)
    assert not republished(caplog)
    client = redis_py.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)  # as a restart without persistence would leave it

        def stored() -> set[bytes]:
            return {k if isinstance(k, bytes) else k.encode() for k in client.hkeys(f"{prefix}config:pools")}

        async def fetch() -> set[bytes]:
            return stored()

        await wait_for(fetch, lambda names: names == {b"made", b"from-file"}, "the pools republished", timeout_s=5)
        assert client.get(f"{prefix}schema") == b"loadwarden.redis/1"
    finally:
        client.close()

    async def said() -> list[str]:
        return republished(caplog)

    # The replica says so, at WARNING, with what it put back: 2 pools ("made" and the file's), 1 operation.
    lines = await wait_for(said, bool, "the republish in the log", timeout_s=5)
    assert all("came back empty" in line and "republished 2 pools and 1 operations" in line for line in lines)
    b = await start(state)  # a replica started now sees everything
    await assert_changes_in_force(b)
    assert "from-file" in await b.pools()


def republished(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The replicas' "came back empty ... republished" warnings captured so far."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "loadwarden.server" and r.levelno == logging.WARNING and "republished" in r.getMessage()
    ]


async def test_a_bad_stored_record_is_skipped_and_the_rest_serve(start: Start, redis_url: str) -> None:
    prefix = f"{{cat{next(_prefixes)}}}:"
    client = redis_py.Redis.from_url(redis_url)
    try:
        client.set(f"{prefix}schema", "loadwarden.redis/1")
        client.hset(f"{prefix}config:pools", "broken", '{"record": {"settings": {"strategy": "nope"}}}')
        client.hset(f"{prefix}config:pools", "garbage", "not json")
        client.hset(f"{prefix}config:pools", "fine", '{"record": {"settings": {}, "servers": [], "drained": []}}')
    finally:
        client.close()
    replica = await start(redis_state(redis_url, prefix))
    assert set(await replica.pools()) == {"fine"}
