"""`AsyncResourcePool`: loads, waits and unloads as `ResidencyTable` says (see `loadwarden.sdk._resource_pool`)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Generic, Self

from loadwarden.sdk._resource_pool import (
    Entry,
    K,
    Phase,
    ResidencyTable,
    ResourcePoolClosed,
    ResourcePoolStats,
    ResourcePoolTimeout,
    Step,
    V,
    check_pool_args,
    check_timeout,
)
from loadwarden.sdk._synchronization import AsyncCondition, shielded_async

log = logging.getLogger("loadwarden.sdk")


class AsyncResourcePool(Generic[K, V]):
    """At most `max_resident` loaded resources (models, say), least recently used evicted first.

    `use(key)` holds the resource for the block, loading it first when it is not
    loaded. Concurrent callers for one key share one load; a load that raises
    raises in each of them and leaves nothing loaded (the next use loads again).
    A resource in use is never evicted. A key that needs a place when every place
    is held evicts the least recently used resource nobody uses (its unloader is
    called, then the new one's loader); when every resource is in use, the caller
    waits for one to be given back. A load in flight, and an unload, hold their
    place too, so at no moment are more than `max_resident` resources loaded.

    The loader and unloader are coroutine functions, awaited on the loop; run a
    blocking load (`torch.load`, `from_pretrained`) in a thread so that it does not
    stall the loop: `return await asyncio.to_thread(load_model, name)`. A load or
    unload runs to its end even when the task that started it is cancelled (a
    resource loaded for nobody stays loaded, unused). Use it from one event loop.

    Example:
        pool = AsyncResourcePool(load_model, unload_model, max_resident=2)
        async with client.slot("gpu") as lease, pool.use("sentiment") as model:
            await model.predict(text)

    Args:
        loader: Makes the resource of a key; its exception raises in every caller waiting for the key.
        unloader: Frees a resource when it is evicted or the pool closes; None drops it
            (for the garbage collector). An exception it raises is logged, and the place is freed.
        max_resident: Resources loaded (or loading, or unloading) at most, count, >= 1.
        wait_timeout_s: Default longest a `use` waits for a place, or for another caller's
            load or unload of its key, seconds, >= 0; None waits without limit. It does
            not cut a load the caller runs itself.
        name: The pool's name, in errors, logs and the metrics' `pool` attribute.
        clock: Monotonic clock, seconds; waits are real time, re-checked against it.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(
        self,
        loader: Callable[[K], Awaitable[V]],
        unloader: Callable[[V], Awaitable[object]] | None = None,
        *,
        max_resident: int = 2,
        wait_timeout_s: float | None = None,
        name: str = "models",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_pool_args(loader, unloader, max_resident, wait_timeout_s, name, clock)
        self._loader = loader
        self._unloader = unloader
        self._wait_timeout_s = wait_timeout_s
        self._clock = clock
        self._table: ResidencyTable[K, V] = ResidencyTable(name, max_resident)
        self._cond = AsyncCondition()  # guards _table; notified when a place, a load or an unload ends

    @property
    def name(self) -> str:
        return self._table.name

    @property
    def max_resident(self) -> int:
        return self._table.max_resident

    @contextlib.asynccontextmanager
    async def use(self, key: K, *, timeout_s: float | None = None) -> AsyncIterator[V]:
        """Holds the resource of `key` for the block (loaded first if needed); it is given back
        however the block exits, and stays loaded until evicted or the pool closes.

        Args:
            key: Which resource; any hashable value.
            timeout_s: Longest to wait, seconds, >= 0; None means the pool's `wait_timeout_s`.

        Raises:
            ResourcePoolTimeout: Not ready within the timeout; the block does not run.
            ResourcePoolClosed: The pool is closed, or closed while the caller waited.
            Exception: What the loader raised; the block does not run.
        """
        entry = await self._acquire(key, self._wait_timeout_s if timeout_s is None else timeout_s)
        try:
            yield entry.value
        finally:
            await self._release(entry)

    def resident(self) -> list[K]:
        """The keys of the loaded resources, least recently used (given back) first."""
        with self._cond:
            return self._table.resident()

    def stats(self) -> ResourcePoolStats:
        with self._cond:
            return self._table.stats()

    async def close(self) -> None:
        """Unloads every resource nobody uses; one in use is unloaded when its last user gives it
        back, one loading when its load ends. Waiting and later callers raise `ResourcePoolClosed`."""
        with self._cond:
            idle = self._table.close()
            self._cond.notify_all()
        for entry in idle:
            await shielded_async(self._unload, entry)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _acquire(self, key: K, timeout_s: float | None) -> Entry[K, V]:
        check_timeout("timeout_s", timeout_s)
        with self._cond:
            started = self._clock()
            deadline = math.inf if timeout_s is None else started + timeout_s
            step, entry = self._table.claim(key)
            while entry is None:
                await self._wait(key, started, deadline, timeout_s)
                step, entry = self._table.claim(key)
        # The caller is one of the entry's users now: it gives it back however this ends.
        try:
            if step is Step.LOAD or step is Step.EVICT:
                await shielded_async(self._bring_in, entry)
            with self._cond:
                while entry.phase is Phase.PENDING or entry.phase is Phase.LOADING:
                    await self._wait(key, started, deadline, timeout_s)
                if entry.error is not None:
                    raise entry.error
                if self._table.closed:
                    raise ResourcePoolClosed(self.name)
        except BaseException:
            await self._release(entry)
            raise
        return entry

    async def _wait(self, key: K, started: float, deadline: float, timeout_s: float | None) -> None:
        # Caller holds the lock. Raises on timeout or when the pool is closed meanwhile.
        now = self._clock()
        if now >= deadline:
            self._table.timed_out()
            raise ResourcePoolTimeout(self.name, key, now - started, timeout_s or 0.0, self._table.why_waiting(key))
        self._table.waiting += 1
        try:
            await self._cond.wait(None if deadline == math.inf else deadline - now)
        finally:
            self._table.waiting -= 1
        if self._table.closed:
            raise ResourcePoolClosed(self.name)

    async def _bring_in(self, entry: Entry[K, V]) -> None:
        # Runs to its end (shielded); whatever happens, the entry ends loaded or failed.
        try:
            if entry.victim is not None:
                await self._unload(entry.victim, entry)
                if entry.phase is Phase.FAILED:
                    return  # the pool closed meanwhile
            value = await self._loader(entry.key)
        except BaseException as exc:
            with self._cond:
                self._table.load_failed(entry, exc)
                self._cond.notify_all()
            if isinstance(exc, Exception):
                return  # raised by each of the entry's users
            raise
        with self._cond:
            orphaned = self._table.loaded(entry, value)
            self._cond.notify_all()
        if orphaned:
            await self._unload(entry)

    async def _unload(self, entry: Entry[K, V], successor: Entry[K, V] | None = None) -> None:
        # The entry is unloading and unused; its place is freed (or passed to `successor`)
        # however the unloader ends.
        failed = False
        try:
            if self._unloader is not None:
                await self._unloader(entry.value)
        except Exception:
            failed = True
            log.warning(
                "resource pool %r: unloading %r raised; its place is freed", self.name, entry.key, exc_info=True
            )
        finally:
            with self._cond:
                self._table.unloaded(entry, failed, successor)
                self._cond.notify_all()

    async def _release(self, entry: Entry[K, V]) -> None:
        with self._cond:
            unload = self._table.release(entry)
            if entry.users == 0:
                self._cond.notify_all()  # it may be evicted now
        if unload:
            await shielded_async(self._unload, entry)
