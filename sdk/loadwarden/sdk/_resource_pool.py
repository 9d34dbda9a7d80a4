"""A resource pool's bookkeeping: which resources hold a place, who uses them, which one to evict.

`ResidencyTable` decides every step (hit, join a load, load, evict then load, wait) as a
function of its state, under the pool's lock; it never waits and never calls a
loader. `ResourcePool` (threads, generated) and `AsyncResourcePool` (asyncio,
`_async/resource_pool.py`) wait, load and unload as it says.

Invariants:
- Places held (resources loading, loaded or unloading) never exceed `max_resident`:
  a load in flight holds its place from before the loader is called, and an
  evicted resource holds its place until its unloader has returned.
- An entry is evicted only when loaded and unused (`users == 0`): a resource is
  never unloaded under a caller that holds it or waits for it.
- One entry per key at most: concurrent callers for one key share one load.
- The table holds at most 2 x `max_resident` entries (a new entry waiting for its
  victim's unload holds no place of its own), however many distinct keys callers ask for.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from loadwarden.sdk import _metrics

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ResourcePoolTimeout(Exception):
    """A caller waited `timeout_s` for a resource of a `ResourcePool` without getting it.

    Attributes:
        pool: The pool's name.
        key: The resource asked for.
        waited_s: How long the caller waited, seconds (by the pool's clock).
        timeout_s: The longest it was allowed to wait, seconds.
        reason: What it waited for: a place (every one held by resources in use)
            or another caller's load or unload of the key.
    """

    def __init__(self, pool: str, key: object, waited_s: float, timeout_s: float, reason: str) -> None:
        super().__init__(
            f"resource pool {pool!r}: {key!r} not ready after {waited_s:.3f} s (timeout {timeout_s:g} s): {reason}"
        )
        self.pool = pool
        self.key = key
        self.waited_s = waited_s
        self.timeout_s = timeout_s
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.pool, self.key, self.waited_s, self.timeout_s, self.reason)


class ResourcePoolClosed(Exception):
    """The `ResourcePool` was closed before the caller got its resource.

    Attributes:
        pool: The pool's name.
    """

    def __init__(self, pool: str) -> None:
        super().__init__(f"resource pool {pool!r} is closed")
        self.pool = pool

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.pool,)


@dataclass(frozen=True, slots=True)
class ResourcePoolStats:
    """Counters of a resource pool.

    Attributes:
        resident: Resources loaded right now, count (<= max_resident).
        loading: Loads in flight right now, count.
        in_use: Callers holding a loaded resource right now, count.
        waiting: Callers waiting right now (for a place, or for a load or unload), count.
        hits: Uses served by a resource already loaded, count.
        loads: Loads that succeeded, count; each begins one residency.
        load_failures: Loads whose loader raised, count.
        evictions: Resources unloaded to make room for another, count.
        unload_failures: Unloads whose unloader raised (logged; the place was freed), count.
        timeouts: Uses that raised `ResourcePoolTimeout`, count.
    """

    resident: int
    loading: int
    in_use: int
    waiting: int
    hits: int
    loads: int
    load_failures: int
    evictions: int
    unload_failures: int
    timeouts: int


class Phase(enum.Enum):
    PENDING = "pending"  # waits for its victim's unload; holds no place of its own
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"  # out of the table; `error` says why
    GONE = "gone"  # unloaded, out of the table


_HOLDS_PLACE = (Phase.LOADING, Phase.READY, Phase.UNLOADING)


class Entry(Generic[K, V]):
    """One key's residency. `users` counts the callers holding it or waiting for its load."""

    __slots__ = ("error", "key", "phase", "users", "value", "victim")

    def __init__(self, key: K, phase: Phase, victim: Entry[K, V] | None = None) -> None:
        self.key = key
        self.phase = phase
        self.users = 1  # the caller that made it
        self.victim = victim
        self.error: BaseException | None = None
        self.value: V  # set when loaded


class Step(enum.Enum):
    HELD = "held"  # loaded: the caller holds it now
    JOIN = "join"  # another caller's load (or eviction then load) is under way: wait for it
    LOAD = "load"  # the caller loads it now
    EVICT = "evict"  # the caller unloads `entry.victim`, then loads it
    WAIT = "wait"  # nothing to do yet: wait for a change and ask again


class ResidencyTable(Generic[K, V]):
    """The entries of one pool, least recently used first; every method runs under the pool's lock.

    Recency is when a resource was last given back (or loaded); one in use is never evicted.
    """

    def __init__(self, name: str, max_resident: int) -> None:
        self.name = name
        self.max_resident = max_resident
        self.closed = False
        self.resident_count = 0  # READY entries; read by the metrics gauge without the lock
        self.waiting = 0  # kept by the driver
        self._entries: OrderedDict[K, Entry[K, V]] = OrderedDict()
        self._counts = dict.fromkeys(("hits", "loads", "load_failures", "evictions", "unload_failures", "timeouts"), 0)
        self._metrics = _metrics.resource_pool_metrics()
        self._metrics.track(self)

    def claim(self, key: K) -> tuple[Step, Entry[K, V] | None]:
        """The caller's next step towards `key`; for every step but WAIT it is now one of the entry's users."""
        if self.closed:
            raise ResourcePoolClosed(self.name)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.phase is Phase.UNLOADING:
                return Step.WAIT, None  # a new residency begins once this one has ended
            entry.users += 1
            if entry.phase is Phase.READY:
                self._counts["hits"] += 1
                return Step.HELD, entry
            return Step.JOIN, entry
        if sum(e.phase in _HOLDS_PLACE for e in self._entries.values()) < self.max_resident:
            entry = self._entries[key] = Entry(key, Phase.LOADING)
            return Step.LOAD, entry
        victim = next((e for e in self._entries.values() if e.phase is Phase.READY and e.users == 0), None)
        if victim is None:
            return Step.WAIT, None
        self._unready(victim)
        self._counts["evictions"] += 1
        self._metrics.evictions.add(1, {"pool": self.name})
        entry = self._entries[key] = Entry(key, Phase.PENDING, victim)
        return Step.EVICT, entry

    def why_waiting(self, key: K) -> str:
        """What a caller that must wait for `key` waits for, in words."""
        entry = self._entries.get(key)
        if entry is None:
            return f"all {self.max_resident} places are held by resources in use, loading or unloading"
        return f"another caller's {'unload' if entry.phase is Phase.UNLOADING else 'load'} of it is under way"

    def loaded(self, entry: Entry[K, V], value: V) -> bool:
        """The loader returned `value`; True when nobody wants it any more in a closed pool (unload it)."""
        entry.value = value
        entry.phase = Phase.READY
        self.resident_count += 1
        self._counts["loads"] += 1
        self._metrics.loads.add(1, {"pool": self.name})
        if self.closed and entry.users == 0:
            self._unready(entry)
            return True
        return False

    def load_failed(self, entry: Entry[K, V], error: BaseException) -> None:
        """The loader raised `error` (or the pool closed before it was called): the entry leaves, its users raise."""
        if entry.phase is Phase.LOADING:
            self._counts["load_failures"] += 1
            self._metrics.load_failures.add(1, {"pool": self.name})
        entry.phase = Phase.FAILED
        entry.error = error
        del self._entries[entry.key]

    def unloaded(self, entry: Entry[K, V], failed: bool, successor: Entry[K, V] | None) -> None:
        """`entry`'s unloader returned (or raised, when `failed`): its place is free, or taken
        in the same step by `successor` (the entry it was evicted for, loaded next), which fails
        with `ResourcePoolClosed` instead when the pool closed meanwhile."""
        assert entry.phase is Phase.UNLOADING
        entry.phase = Phase.GONE
        del self._entries[entry.key]
        if failed:
            self._counts["unload_failures"] += 1
            self._metrics.unload_failures.add(1, {"pool": self.name})
        if successor is not None:
            assert successor.phase is Phase.PENDING and successor.victim is entry
            successor.victim = None
            if self.closed:
                self.load_failed(successor, ResourcePoolClosed(self.name))
            else:
                successor.phase = Phase.LOADING

    def release(self, entry: Entry[K, V]) -> bool:
        """One user is done with `entry` (or gave up waiting for it); True when it must be unloaded now
        (the pool is closed and this was its last user)."""
        entry.users -= 1
        if entry.phase is not Phase.READY:
            return False
        self._entries.move_to_end(entry.key)
        if self.closed and entry.users == 0:
            self._unready(entry)
            return True
        return False

    def close(self) -> list[Entry[K, V]]:
        """Closes the table; the loaded, unused entries, now unloading (the others follow when released)."""
        self.closed = True
        idle = [e for e in self._entries.values() if e.phase is Phase.READY and e.users == 0]
        for entry in idle:
            self._unready(entry)
        return idle

    def timed_out(self) -> None:
        self._counts["timeouts"] += 1

    def resident(self) -> list[K]:
        return [key for key, e in self._entries.items() if e.phase is Phase.READY]

    def stats(self) -> ResourcePoolStats:
        entries = self._entries.values()
        return ResourcePoolStats(
            resident=self.resident_count,
            loading=sum(e.phase is Phase.LOADING for e in entries),
            in_use=sum(e.users for e in entries if e.phase is Phase.READY),
            waiting=self.waiting,
            **self._counts,
        )

    def _unready(self, entry: Entry[K, V]) -> None:
        entry.phase = Phase.UNLOADING
        self.resident_count -= 1


def check_pool_args(
    loader: Callable[..., Any],
    unloader: Callable[..., Any] | None,
    max_resident: int,
    wait_timeout_s: float | None,
    name: str,
    clock: Callable[[], float],
) -> None:
    """Raises ValueError naming the first argument of a resource pool that is out of range."""
    if not callable(loader):
        raise ValueError(f"loader must be callable, got {loader!r}")
    if unloader is not None and not callable(unloader):
        raise ValueError(f"unloader must be None or callable, got {unloader!r}")
    if isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1:
        raise ValueError(f"max_resident must be an integer >= 1, got {max_resident!r}")
    check_timeout("wait_timeout_s", wait_timeout_s)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(clock):
        raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")


def check_timeout(field: str, timeout_s: float | None) -> None:
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 <= timeout_s < math.inf
    ):
        raise ValueError(f"{field} must be None or a finite number of seconds >= 0, got {timeout_s!r}")
