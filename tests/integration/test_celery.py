"""`AdmittedTask` in a real Celery worker (prefork, so each run is in a forked child) on a
real redis-server broker and result backend, against a real in-process Decision service.

The service runs on a `ManualClock`: a lease expires only when the test advances it, so
a slot the pool gets back was released, never reclaimed; and the pool's retry-after
(its mean hold time x (queue + 1) / limit) is set exactly by one hold the test times.
Every blocking call (the worker's start, Celery's client) runs in a thread, since the
service runs on the test's event loop. The tasks are in `_celery_tasks.py`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type hints

from loadwarden.sdk import AsyncClient
from loadwarden.sdk.integrations.celery import AdmissionConfigError
from loadwarden.server import ManualClock, PoolSettings, PoolSpec, RunningService

from ..conftest import StartService, wait_for
from ..e2e._harness import REPO, Processes, tool

HOLD_S = 1.5  # the pool's mean hold time, hence its retry-after while its one slot is held, seconds
WAIT_S = 30.0  # bound of every wait on the worker, seconds
_READY = re.compile(r"\bready\.")


@dataclass
class Worker:
    """A started worker, the app that sends it tasks, and the events its tasks recorded."""

    sender: Any
    events_key: str
    redis: aioredis.Redis

    def send(self, name: str) -> Any:
        return self.sender.send_task(name)

    async def events(self, event: str | None = None) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.events_key, 0, -1)
        found = [json.loads(item) for item in raw]
        return [e for e in found if event is None or e["event"] == event]

    async def result(self, sent: Any, *, propagate: bool = True) -> Any:
        return await asyncio.to_thread(sent.get, timeout=WAIT_S, propagate=propagate)


StartWorker = Callable[[RunningService], Awaitable[Worker]]


@pytest.fixture
async def start_worker(processes: Processes, redis_url: str) -> AsyncIterator[StartWorker]:
    senders: list[Any] = []
    readers: list[aioredis.Redis] = []

    async def _start(service: RunningService) -> Worker:
        run = uuid.uuid4().hex[:12]
        queue, events_key = f"lw-celery-{run}", f"lw-celery-events-{run}"
        env = {
            "PYTHONPATH": str(REPO),
            "LW_CELERY_REDIS": redis_url,
            "LW_CELERY_QUEUE": queue,
            "LW_CELERY_EVENTS": events_key,
            "LOADWARDEN_TARGET": service.target,
        }
        args: list[str | Path] = [tool("celery"), "-A", "tests.integration._celery_tasks", "worker", "--pool=prefork"]
        args += ["--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        args += [f"--hostname=lw-{run}@127.0.0.1"]
        proc = processes.spawn(args, env=env)
        if await asyncio.to_thread(proc.stderr.wait_for, _READY, WAIT_S) is None:
            pytest.fail(f"the Celery worker did not become ready within {WAIT_S} s\n{proc.describe()}")
        sender = Celery("lw_celery_sender", broker=redis_url, backend=redis_url)
        sender.conf.task_default_queue = queue
        senders.append(sender)
        reader = aioredis.Redis.from_url(redis_url)
        readers.append(reader)
        return Worker(sender, events_key, reader)

    yield _start
    for sender in senders:
        sender.close()
    for reader in readers:
        await reader.aclose()


def jobs_pool() -> PoolSpec:
    return PoolSpec(PoolSettings(name="jobs", max_concurrency=1), ())


async def active_leases(client: AsyncClient) -> int:
    return (await client.load_status("jobs")).pools[0].active_leases


async def test_a_task_denied_twice_runs_on_its_third_try_each_after_the_retry_after(
    start: StartService, clock: ManualClock, start_worker: StartWorker
) -> None:
    service = await start(jobs_pool(), clock=clock)
    async with AsyncClient(service.target) as client:
        timed = await client.acquire_slot("jobs")
        clock.advance(HOLD_S)
        await client.release_slot(timed.lease_id)  # one hold of HOLD_S: the pool's retry-after is now HOLD_S
        held = await client.acquire_slot("jobs")  # the pool's only slot
        worker = await start_worker(service)

        sent = await asyncio.to_thread(worker.send, "lw.after_denials")
        await wait_for(lambda: worker.events("denied"), lambda found: len(found) >= 2, "two denials", timeout_s=WAIT_S)
        assert await client.release_slot(held.lease_id)
        ran = await worker.result(sent)

        assert ran["retries"] == 2  # the third try
        assert ran["in_use"] == 1  # it held the pool's slot while its body ran
        await wait_for(lambda: active_leases(client), lambda n: n == 0, "the task's slot released")
        assert not await client.release_slot(ran["lease"])  # released by the task, not left for the test

    starts, denials = await worker.events("start"), await worker.events("denied")
    assert [e["retries"] for e in starts] == [0, 1, 2]
    assert [e["retries"] for e in denials] == [0, 1]
    (done,) = await worker.events("ran")
    assert done["fallback"] is False  # a lease of the service's, not a local one
    for denial, retry in zip(denials, starts[1:], strict=True):
        assert "AT_CAPACITY" in denial["why"]
        assert denial["retry_after_s"] == pytest.approx(HOLD_S)  # the service's answer, above the 1 s floor
        assert denial["retry_after_s"] <= denial["countdown_s"] <= denial["retry_after_s"] * 1.2
        # The next try began no sooner than the retry-after after the denial was answered.
        assert retry["t"] - denial["t"] >= denial["retry_after_s"], (denial, retry)


async def test_a_task_that_raises_releases_its_slot_and_the_next_task_gets_it(
    start: StartService, clock: ManualClock, start_worker: StartWorker
) -> None:
    service = await start(jobs_pool(), clock=clock)
    async with AsyncClient(service.target) as client:
        worker = await start_worker(service)

        with pytest.raises(RuntimeError, match="boom in the task body"):
            await worker.result(await asyncio.to_thread(worker.send, "lw.boom"))
        (boomed,) = await worker.events("ran")
        assert boomed["in_use"] == 1 and boomed["fallback"] is False
        # The clock has not moved: had the slot leaked, no expiry could have freed it.
        await wait_for(lambda: active_leases(client), lambda n: n == 0, "the raising task's slot released")
        assert not await client.release_slot(boomed["lease"])

        # The pool has one slot: the next task gets it at its first try.
        ran = await worker.result(await asyncio.to_thread(worker.send, "lw.after_denials"))
        assert ran["retries"] == 0 and await worker.events("denied") == []


async def test_an_unknown_pool_fails_the_task_with_a_clear_error_and_no_retry(
    start: StartService, clock: ManualClock, start_worker: StartWorker
) -> None:
    service = await start(jobs_pool(), clock=clock)
    worker = await start_worker(service)

    with pytest.raises(AdmissionConfigError, match=r"task lw\.nowhere: pool 'nope' does not exist") as failed:
        await worker.result(await asyncio.to_thread(worker.send, "lw.nowhere"))
    assert service.target in str(failed.value)
    assert [e["event"] for e in await worker.events()] == ["start"]  # one try, no body, no retry
