"""The resource pool: the pure residency table, then both drivers with instrumented loaders.

The loaders and unloaders here keep their own books (what is live, the most live at
once, every load and unload) and record any breach of the pool's promises instead of
raising it, so a breach fails the test however threads or tasks interleave. Threads and
tasks block on events and barriers with short deadlines; time passes only on fake clocks.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from loadwarden.sdk import _metrics
from loadwarden.sdk._async.resource_pool import AsyncResourcePool
from loadwarden.sdk._resource_pool import (
    Entry,
    Phase,
    ResidencyTable,
    ResourcePoolClosed,
    ResourcePoolStats,
    ResourcePoolTimeout,
    Step,
)
from loadwarden.sdk._sync.resource_pool import ResourcePool

from .conftest import FakeClock

# Longest any test waits for another thread or task to get somewhere, seconds.
DEADLINE_S = 5.0
KEYS = ("model-a", "model-b", "model-c")


def wait_until(predicate: Callable[[], bool], what: str = "condition") -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached within {DEADLINE_S} s"
        time.sleep(0.001)


async def await_until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not predicate():
            await asyncio.sleep(0)


class Boom(Exception):
    pass


@dataclass(frozen=True)
class Model:
    key: str
    generation: int  # which load of the key made it, from 1


class Models:
    """An instrumented loader and unloader: what is live (from a load's start to its unload's end),
    the most live at once, every load and unload in order, and every breach of the pool's promises.

    `gate`, when set, is an event the loads of `gated` keys (None: every key) wait for; `fail`
    names keys whose load raises `Boom`, `unload_fail` keys whose unload does.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[str] = set()
        self.max_live = 0
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.holders: Counter[str] = Counter()
        self.breaches: list[str] = []
        self.gate: threading.Event | None = None
        self.gated: set[str] | None = None
        self.fail: set[str] = set()
        self.unload_fail: set[str] = set()
        self.unloads_started = 0

    def started(self, key: str) -> int:
        with self.lock:
            if key in self.live:
                self.breaches.append(f"{key} loaded again while still loaded")
            self.live.add(key)
            self.max_live = max(self.max_live, len(self.live))
            self.loads.append(key)
            return self.loads.count(key)

    def load(self, key: str) -> Model:
        generation = self.started(key)
        if self.gate is not None and (self.gated is None or key in self.gated):
            assert self.gate.wait(DEADLINE_S), "the gate never opened"
        return self.finish(key, generation)

    def finish(self, key: str, generation: int) -> Model:
        if key in self.fail:
            with self.lock:
                self.live.discard(key)
            raise Boom(f"cannot load {key}")
        return Model(key, generation)

    def unload(self, model: Model) -> None:
        with self.lock:
            if self.holders[model.key]:
                self.breaches.append(f"{model.key} unloaded while {self.holders[model.key]} callers hold it")
            if model.key not in self.live:
                self.breaches.append(f"{model.key} unloaded but not loaded")
            self.live.discard(model.key)
            self.unloads.append(model.key)
        if model.key in self.unload_fail:
            raise Boom(f"cannot unload {model.key}")

    def hold(self, key: str, model: Model) -> None:
        """Called inside a `use` block: the model is the key's and is loaded."""
        with self.lock:
            if model.key != key or key not in self.live:
                self.breaches.append(f"{key} used as {model} while live={sorted(self.live)}")
            self.holders[key] += 1

    def give_back(self, key: str) -> None:
        with self.lock:
            self.holders[key] -= 1


class AsyncModels(Models):
    """`Models` with coroutine functions, the gate an asyncio event; both let other tasks run
    in the middle (as a real load or unload would), so a caller that should wait gets the chance not to."""

    def __init__(self) -> None:
        super().__init__()
        self.agate: asyncio.Event | None = None

    async def aload(self, key: str) -> Model:
        generation = self.started(key)
        if self.agate is not None and (self.gated is None or key in self.gated):
            await asyncio.wait_for(self.agate.wait(), DEADLINE_S)
        await asyncio.sleep(0)
        return self.finish(key, generation)

    async def aunload(self, model: Model) -> None:
        with self.lock:
            self.unloads_started += 1
        for _ in range(3):
            await asyncio.sleep(0)
        self.unload(model)


def entries(pool: ResourcePool[Any, Any] | AsyncResourcePool[Any, Any]) -> int:
    return len(pool._table._entries)


def enter(pool: ResourcePool[str, Model], key: str, held: list[Any], **kwargs: Any) -> Model:
    """Enters `pool.use(key)` and keeps its context manager in `held` (the block stays open)."""
    use = pool.use(key, **kwargs)
    held.append(use)
    return use.__enter__()


async def aenter(pool: AsyncResourcePool[str, Model], key: str, held: list[Any], **kwargs: Any) -> Model:
    """Enters `pool.use(key)` and keeps its context manager in `held` (the block stays open)."""
    use = pool.use(key, **kwargs)
    held.append(use)
    return await use.__aenter__()


# -- the acceptance: max_resident=2, three models, 20 concurrent callers ----------

ROUNDS = 5  # uses per caller, each of the next model in turn


def test_twenty_threads_three_models_never_more_than_two_loaded_and_one_load_per_residency() -> None:
    models = Models()
    models.gate = threading.Event()
    pool = ResourcePool(models.load, models.unload, max_resident=2)
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            barrier.wait(DEADLINE_S)
            for r in range(ROUNDS):
                key = KEYS[(i + r) % 3]
                with pool.use(key, timeout_s=DEADLINE_S) as model:
                    models.hold(key, model)
                    models.give_back(key)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    # Two loads hold both places; the other 18 callers wait for them or for a place.
    wait_until(lambda: pool.stats().loading == 2 and pool.stats().waiting == 18, "two loads, 18 waiting")
    assert models.max_live == 2 and entries(pool) == 2
    models.gate.set()
    for thread in threads:
        thread.join(DEADLINE_S)

    assert not errors and not models.breaches
    assert models.max_live == 2
    stats = pool.stats()
    assert stats.loads == len(models.loads) and stats.evictions == len(models.unloads)
    assert stats.resident == stats.loads - stats.evictions == 2 == len(pool.resident())
    assert (stats.loading, stats.in_use, stats.waiting, stats.load_failures) == (0, 0, 0, 0)
    assert set(models.loads) == set(KEYS) and stats.hits > 0
    pool.close()
    assert models.live == set() and sorted(models.loads) == sorted(models.unloads)


async def test_twenty_tasks_three_models_never_more_than_two_loaded_and_one_load_per_residency() -> None:
    models = AsyncModels()
    models.agate = asyncio.Event()
    pool = AsyncResourcePool(models.aload, models.aunload, max_resident=2)
    start = asyncio.Event()

    async def caller(i: int) -> None:
        await start.wait()
        for r in range(ROUNDS):
            key = KEYS[(i + r) % 3]
            async with pool.use(key, timeout_s=DEADLINE_S) as model:
                models.hold(key, model)
                await asyncio.sleep(0)  # let others run while it is held
                models.give_back(key)

    tasks = [asyncio.create_task(caller(i)) for i in range(20)]
    start.set()
    await await_until(lambda: len(models.loads) == 2 and pool.stats().waiting == 18)
    assert models.max_live == 2 and pool.stats().loading == 2
    models.agate.set()
    async with asyncio.timeout(DEADLINE_S):
        await asyncio.gather(*tasks)

    assert not models.breaches and models.max_live == 2
    stats = pool.stats()
    assert stats.loads == len(models.loads) and stats.evictions == len(models.unloads)
    assert stats.resident == stats.loads - stats.evictions == 2
    assert set(models.loads) == set(KEYS)
    await pool.close()
    assert models.live == set() and sorted(models.loads) == sorted(models.unloads)


def test_twenty_threads_for_one_key_share_one_load() -> None:
    models = Models()
    models.gate = threading.Event()
    pool = ResourcePool(models.load, models.unload)
    got: list[Model] = []

    def caller() -> None:
        with pool.use("model-a", timeout_s=DEADLINE_S) as model:
            got.append(model)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for thread in threads:
        thread.start()
    wait_until(lambda: pool.stats().waiting == 19, "19 callers join the one load")
    models.gate.set()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert got == [Model("model-a", 1)] * 20 and models.loads == ["model-a"]
    assert pool.stats().loads == 1


# -- LRU, pinning, waiting, timeouts ------------------------------------------------


def test_the_least_recently_used_idle_resource_is_evicted_and_unloaded_before_the_new_load() -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=2)
    for key in ("a", "b", "a"):
        with pool.use(key):
            pass
    assert pool.resident() == ["b", "a"]  # least recently used first
    with pool.use("c") as model:
        assert model == Model("c", 1)
    assert models.unloads == ["b"] and pool.resident() == ["a", "c"]
    with pool.use("b") as model:
        assert model == Model("b", 2)  # a new residency, a new load
    assert models.unloads == ["b", "a"] and models.max_live == 2 and not models.breaches
    assert pool.stats() == ResourcePoolStats(
        resident=2,
        loading=0,
        in_use=0,
        waiting=0,
        hits=1,
        loads=4,
        load_failures=0,
        evictions=2,
        unload_failures=0,
        timeouts=0,
    )


def test_giving_a_resource_back_makes_it_the_most_recently_used() -> None:
    pool: ResourcePool[str, str] = ResourcePool(str.upper, max_resident=2)
    with pool.use("a"):
        with pool.use("b"):
            pass
        assert pool.resident() == ["a", "b"]
    assert pool.resident() == ["b", "a"]  # a was given back last


def test_a_resource_in_use_is_never_evicted_even_when_least_recently_used() -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=2)
    with pool.use("a"):
        with pool.use("b"):
            pass
        with pool.use("c"):  # a is the least recent, but held: b goes
            assert models.unloads == ["b"]
        with pool.use("b"):
            assert models.unloads == ["b", "c"]
    assert not models.breaches and pool.resident() == ["b", "a"]


def test_at_capacity_with_everything_in_use_a_caller_waits_until_one_is_given_back() -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=2)
    release = {key: threading.Event() for key in ("a", "b")}
    inside: list[str] = []

    def hold(key: str) -> None:
        with pool.use(key):
            inside.append(key)
            assert release[key].wait(DEADLINE_S)

    holders = [threading.Thread(target=hold, args=(key,)) for key in ("a", "b")]
    for thread in holders:
        thread.start()
    wait_until(lambda: len(inside) == 2, "both held")
    got: list[Model] = []
    held: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(enter(pool, "c", held, timeout_s=DEADLINE_S)))
    waiter.start()
    wait_until(lambda: pool.stats().waiting == 1, "the caller for c waits")
    assert models.loads == ["a", "b"]
    release["b"].set()
    waiter.join(DEADLINE_S)
    assert got == [Model("c", 1)] and models.unloads == ["b"] and models.loads == ["a", "b", "c"]
    release["a"].set()
    for thread in holders:
        thread.join(DEADLINE_S)
    assert models.max_live == 2 and not models.breaches


def test_waiting_past_its_timeout_raises_resource_pool_timeout_and_changes_nothing(fake_clock: FakeClock) -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=2, wait_timeout_s=30.0, clock=fake_clock)
    models.gate = threading.Event()
    models.gated = {"b"}
    held: list[Any] = []
    loading_b = threading.Thread(target=enter, args=(pool, "b", held))  # holds b once loaded
    with pool.use("a"):
        loading_b.start()
        wait_until(lambda: pool.stats().loading == 1, "b is loading")
        with pytest.raises(ResourcePoolTimeout) as at_once, pool.use("c", timeout_s=0):
            pytest.fail("the block must not run")
        assert at_once.value.waited_s == 0 and at_once.value.timeout_s == 0
        raised: list[ResourcePoolTimeout] = []

        def wait_for_c() -> None:
            with pytest.raises(ResourcePoolTimeout) as timed_out, pool.use("c"):
                pass
            raised.append(timed_out.value)

        waiter = threading.Thread(target=wait_for_c)
        waiter.start()
        wait_until(lambda: pool.stats().waiting == 1, "the caller for c waits")
        fake_clock.advance(31.0)
        models.gate.set()  # b's load ends: the waiter looks again, finds no place, and it is past its time
        waiter.join(DEADLINE_S)
        loading_b.join(DEADLINE_S)
    [timeout] = raised
    assert (timeout.pool, timeout.key, timeout.waited_s, timeout.timeout_s) == ("models", "c", 31.0, 30.0)
    assert "all 2 places are held" in str(timeout)
    assert models.loads == ["a", "b"] and pool.stats().timeouts == 2 and pool.stats().waiting == 0


async def test_a_task_waiting_for_another_ones_load_times_out_and_the_load_goes_on(fake_clock: FakeClock) -> None:
    models = AsyncModels()
    models.agate = asyncio.Event()
    models.gated = {"a"}
    pool = AsyncResourcePool(models.aload, max_resident=2, clock=fake_clock)
    held: list[Any] = []
    first = asyncio.create_task(aenter(pool, "a", held))
    await await_until(lambda: pool.stats().loading == 1)
    joiner = asyncio.create_task(aenter(pool, "a", held, timeout_s=5.0))
    await await_until(lambda: pool.stats().waiting == 1)
    fake_clock.advance(6.0)
    async with pool.use("b"):
        pass  # b given back wakes the waiters: the joiner looks again, and it is past its time
    with pytest.raises(ResourcePoolTimeout, match="another caller's load of it is under way"):
        await joiner
    models.agate.set()
    assert await first == Model("a", 1) and pool.stats().in_use == 1


# -- failures ----------------------------------------------------------------------


def test_a_failed_load_raises_in_every_waiting_thread_leaves_nothing_and_a_retry_loads() -> None:
    models = Models()
    models.gate = threading.Event()
    models.fail.add("a")
    pool = ResourcePool(models.load, models.unload)
    raised: list[BaseException] = []

    def caller() -> None:
        try:
            with pool.use("a", timeout_s=DEADLINE_S):
                pytest.fail("the block must not run")
        except Boom as exc:
            raised.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for thread in threads:
        thread.start()
    wait_until(lambda: pool.stats().waiting == 9, "9 callers join the load")
    models.gate.set()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert len(raised) == 10 and len({id(exc) for exc in raised}) == 1  # the loader's own exception
    assert models.loads == ["a"] and pool.resident() == [] and entries(pool) == 0
    stats = pool.stats()
    assert (stats.loads, stats.load_failures, stats.in_use, stats.waiting) == (0, 1, 0, 0)
    models.fail.clear()
    with pool.use("a") as model:
        assert model == Model("a", 2)


async def test_a_failed_load_raises_in_every_waiting_task() -> None:
    models = AsyncModels()
    models.agate = asyncio.Event()
    models.fail.add("a")
    pool = AsyncResourcePool(models.aload)

    async def caller() -> None:
        async with pool.use("a"):
            pytest.fail("the block must not run")

    tasks = [asyncio.create_task(caller()) for _ in range(10)]
    await await_until(lambda: pool.stats().waiting == 9)
    models.agate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, Boom) for result in results)
    assert pool.resident() == [] and pool.stats().load_failures == 1
    models.fail.clear()
    async with pool.use("a") as model:
        assert model == Model("a", 2)


def test_an_unloader_that_raises_is_logged_and_its_place_is_freed(caplog: pytest.LogCaptureFixture) -> None:
    models = Models()
    models.unload_fail.add("a")
    pool = ResourcePool(models.load, models.unload, max_resident=1, name="gpu-models")
    with pool.use("a"):
        pass
    with caplog.at_level(logging.WARNING, logger="loadwarden.sdk"), pool.use("b") as model:
        assert model == Model("b", 1)
    assert "resource pool 'gpu-models': unloading 'a' raised; its place is freed" in caplog.text
    assert "Boom: cannot unload a" in caplog.text  # with its traceback
    assert pool.resident() == ["b"] and models.max_live == 1
    stats = pool.stats()
    assert (stats.evictions, stats.unload_failures, stats.loads) == (1, 1, 2)


def test_an_eviction_unloads_before_loading_and_callers_of_either_key_wait_their_turn() -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=1)
    with pool.use("a"):
        pass
    unloading = threading.Event()
    proceed = threading.Event()
    unload = models.unload

    def slow_unload(model: Model) -> None:
        unloading.set()
        assert proceed.wait(DEADLINE_S)
        unload(model)

    pool._unloader = slow_unload
    got: list[Model] = []
    lock = threading.Lock()

    def use(key: str) -> None:
        with pool.use(key, timeout_s=DEADLINE_S) as model, lock:
            got.append(model)

    first_b = threading.Thread(target=use, args=("b",))
    first_b.start()
    assert unloading.wait(DEADLINE_S)
    second_b = threading.Thread(target=use, args=("b",))  # joins b, waiting for a's unload
    back_to_a = threading.Thread(target=use, args=("a",))  # a is unloading: waits for it to end
    third = threading.Thread(target=use, args=("c",))  # the unload holds the one place: waits
    for thread in (second_b, back_to_a, third):
        thread.start()
    wait_until(lambda: pool.stats().waiting == 3, "all three wait")
    assert entries(pool) == 2 and models.loads == ["a"]  # a (unloading) and b (pending): one place
    proceed.set()
    for thread in (first_b, second_b, back_to_a, third):
        thread.join(DEADLINE_S)
    assert models.loads[:2] == ["a", "b"] and sorted(models.loads[2:]) == ["a", "c"]
    assert models.unloads == models.loads[:3]
    assert sorted(got, key=lambda m: m.key) == [Model("a", 2), Model("b", 1), Model("b", 1), Model("c", 1)]
    assert models.max_live == 1 and not models.breaches


# -- cancellation, close -----------------------------------------------------------


async def test_a_cancelled_loader_task_does_not_abort_the_load_for_the_others() -> None:
    models = AsyncModels()
    models.agate = asyncio.Event()
    pool = AsyncResourcePool(models.aload, models.aunload)
    held: list[Any] = []
    first = asyncio.create_task(aenter(pool, "a", held))
    await await_until(lambda: pool.stats().loading == 1)
    joiner = asyncio.create_task(aenter(pool, "a", held))
    await await_until(lambda: pool.stats().waiting == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    models.agate.set()
    assert await joiner == Model("a", 1)
    assert models.loads == ["a"] and pool.stats().in_use == 1


async def test_a_load_nobody_waits_for_any_more_stays_loaded_unused() -> None:
    models = AsyncModels()
    models.agate = asyncio.Event()
    pool = AsyncResourcePool(models.aload, models.aunload)
    held: list[Any] = []
    first = asyncio.create_task(aenter(pool, "a", held))
    await await_until(lambda: pool.stats().loading == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    models.agate.set()
    await await_until(lambda: pool.resident() == ["a"])
    assert pool.stats().in_use == 0 and models.live == {"a"}


def test_close_unloads_idle_ones_now_and_held_ones_when_given_back() -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=2)
    with pool.use("idle"):
        pass
    with pool.use("a") as model:
        pool.close()
        assert models.unloads == ["idle"] and model == Model("a", 1)  # still usable
        with pytest.raises(ResourcePoolClosed), pool.use("a"):
            pass
        with pytest.raises(ResourcePoolClosed), pool.use("new"):
            pass
    assert models.unloads == ["idle", "a"] and pool.resident() == [] and entries(pool) == 0
    pool.close()  # again: nothing to do
    assert models.loads == ["idle", "a"] and not models.breaches


def test_close_turns_away_a_caller_waiting_for_a_place() -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=1)
    raised: list[BaseException] = []

    def wait_for_b() -> None:
        try:
            with pool.use("b", timeout_s=DEADLINE_S):
                pass
        except ResourcePoolClosed as exc:
            raised.append(exc)

    with pool.use("a"):
        waiter = threading.Thread(target=wait_for_b)
        waiter.start()
        wait_until(lambda: pool.stats().waiting == 1, "b waits for a place")
        pool.close()
        waiter.join(DEADLINE_S)
        assert [str(exc) for exc in raised] == ["resource pool 'models' is closed"]
        assert models.unloads == []
    assert models.loads == models.unloads == ["a"] and pool.stats().waiting == 0


async def test_closing_during_a_load_unloads_it_when_it_ends() -> None:
    models = AsyncModels()
    models.agate = asyncio.Event()
    async with AsyncResourcePool(models.aload, models.aunload) as pool:
        held: list[Any] = []
        caller = asyncio.create_task(aenter(pool, "a", held))
        await await_until(lambda: pool.stats().loading == 1)
    models.agate.set()
    with pytest.raises(ResourcePoolClosed):
        await caller
    assert models.loads == models.unloads == ["a"] and pool.resident() == []


def test_closing_while_an_eviction_unloads_fails_the_caller_it_was_for() -> None:
    models = Models()
    pool = ResourcePool(models.load, models.unload, max_resident=1)
    with pool.use("a"):
        pass
    unloading = threading.Event()
    proceed = threading.Event()
    unload = models.unload

    def slow_unload(model: Model) -> None:
        unloading.set()
        assert proceed.wait(DEADLINE_S)
        unload(model)

    pool._unloader = slow_unload
    raised: list[BaseException] = []

    def use_b() -> None:
        try:
            with pool.use("b"):
                pass
        except ResourcePoolClosed as exc:
            raised.append(exc)

    caller = threading.Thread(target=use_b)
    caller.start()
    assert unloading.wait(DEADLINE_S)
    pool.close()
    proceed.set()
    caller.join(DEADLINE_S)
    assert len(raised) == 1 and models.loads == ["a"] and models.unloads == ["a"]
    assert entries(pool) == 0 and pool.stats().load_failures == 0


# -- many keys, arguments, errors ---------------------------------------------------


def test_many_distinct_keys_keep_the_table_bounded() -> None:
    pool: ResourcePool[int, int] = ResourcePool(lambda key: key * 2, max_resident=3)
    for key in range(1_000):
        with pool.use(key) as value:
            assert value == key * 2
    assert pool.resident() == [997, 998, 999] and entries(pool) == 3
    stats = pool.stats()
    assert (stats.loads, stats.evictions) == (1_000, 997)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"loader": None}, "loader"),
        ({"unloader": 3}, "unloader"),
        ({"max_resident": 0}, "max_resident"),
        ({"max_resident": True}, "max_resident"),
        ({"max_resident": 1.5}, "max_resident"),
        ({"wait_timeout_s": -1}, "wait_timeout_s"),
        ({"wait_timeout_s": float("inf")}, "wait_timeout_s"),
        ({"name": ""}, "name"),
        ({"clock": 1.0}, "clock"),
    ],
)
def test_arguments_out_of_range_name_themselves(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"loader": str.upper, **kwargs}
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        ResourcePool(**args)
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        AsyncResourcePool(**args)


def test_a_negative_timeout_is_refused_before_any_wait() -> None:
    pool: ResourcePool[str, str] = ResourcePool(str.upper)
    with pytest.raises(ValueError, match=r"^timeout_s must be"), pool.use("a", timeout_s=-1):
        pass
    assert pool.stats().loads == 0


def test_errors_pickle_and_say_what_happened() -> None:
    timeout = pickle.loads(pickle.dumps(ResourcePoolTimeout("models", "m", 1.5, 1.0, "all 2 places are held")))
    assert (timeout.pool, timeout.key, timeout.waited_s, timeout.timeout_s) == ("models", "m", 1.5, 1.0)
    assert str(timeout) == "resource pool 'models': 'm' not ready after 1.500 s (timeout 1 s): all 2 places are held"
    closed = pickle.loads(pickle.dumps(ResourcePoolClosed("gpu")))
    assert closed.pool == "gpu" and str(closed) == "resource pool 'gpu' is closed"


# -- the table alone: pure steps -----------------------------------------------------


def phase(entry: Entry[str, str]) -> Phase:
    return entry.phase  # read through a call: mypy would keep an earlier check's narrowing


def test_the_table_says_load_join_hold_evict_or_wait() -> None:
    table: ResidencyTable[str, str] = ResidencyTable("t", max_resident=1)
    step, a = table.claim("a")
    assert step is Step.LOAD and a is not None and phase(a) is Phase.LOADING
    assert table.claim("a")[0] is Step.JOIN and a.users == 2
    assert table.claim("b") == (Step.WAIT, None)  # the one place is loading
    assert table.loaded(a, "A") is False
    assert table.release(a) is False and table.release(a) is False and a.users == 0
    step, b = table.claim("b")
    assert step is Step.EVICT and b is not None and b.victim is a and phase(a) is Phase.UNLOADING
    assert phase(b) is Phase.PENDING and table.stats().resident == 0
    assert table.claim("a") == (Step.WAIT, None)  # unloading: a new residency waits for its end
    table.unloaded(a, failed=False, successor=b)
    assert (phase(a), phase(b)) == (Phase.GONE, Phase.LOADING) and table.stats().loading == 1
    table.loaded(b, "B")
    assert table.claim("b")[0] is Step.HELD and b.users == 2
    assert table.resident() == ["b"]


# -- metrics ------------------------------------------------------------------------


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint) and point.attributes is not None
                    points.setdefault(metric.name, []).append((dict(point.attributes), point.value))
    return points


def test_loads_evictions_failures_and_resident_are_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    monkeypatch.setattr(_metrics, "_resource_pools", _metrics.ResourcePoolMetrics(meter))
    models = Models()
    models.fail.add("bad")
    models.unload_fail.add("b")
    pool = ResourcePool(models.load, models.unload, max_resident=2, name="gpu")
    other: ResourcePool[str, str] = ResourcePool(str.upper, name="cpu")
    for key in ("a", "b", "a", "c", "b"):  # c evicts b (its unloader raises), b evicts a
        with pool.use(key):
            pass
    with pytest.raises(Boom), pool.use("bad"):
        pass
    with other.use("x"):
        pass
    points = metric_points(reader)
    gpu, cpu = {"pool": "gpu"}, {"pool": "cpu"}
    assert sorted(points["loadwarden.sdk.resource_pool.loads"], key=str) == [(cpu, 1), (gpu, 4)]
    assert points["loadwarden.sdk.resource_pool.evictions"] == [(gpu, 3)]  # bad's load evicted c first
    assert points["loadwarden.sdk.resource_pool.load_failures"] == [(gpu, 1)]
    assert points["loadwarden.sdk.resource_pool.unload_failures"] == [(gpu, 1)]
    assert sorted(points["loadwarden.sdk.resource_pool.resident"], key=str) == [(cpu, 1), (gpu, 1)]
    gone = weakref.ref(other)
    del other
    assert gone() is None
    assert metric_points(reader)["loadwarden.sdk.resource_pool.resident"] == [(gpu, 1)]  # a dead pool leaves
