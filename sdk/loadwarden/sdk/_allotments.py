"""Allotments in the client: `slot()` served locally from a block of the pool's slots.

With `Client(..., slot_allotments={"ml": 8})` the client holds an allotment of up
to 8 of pool "ml"'s slots (AcquireAllotment: each one of the pool's leases, so the
pool's limit still holds across every client), and a `slot("ml")` block takes one
of them with no RPC. When none is free (or the allotment has not arrived yet) the
block asks the service as before. The allotment is resized at every renewal to
what the client used since the last one, plus one, up to the configured size, so
unused slots go back to the pool; a dead client's allotment comes back at its TTL.

`AllotmentBook` is the bookkeeping (no I/O, thread-safe); `_async/allotments.py`
takes, renews and returns allotments in the background. An allotment's expiry is
counted from when its request was sent, so the client never believes it holds a
slot the service has already reclaimed. When it is lost (a renewal answered
NOT_FOUND, or none succeeded before it expired), the blocks running on it lose
their slots: their exit raises `LeaseLostError` as for a lost lease.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from loadwarden.sdk._local import LOCAL_ID_PREFIX

MAX_ALLOTMENT_SLOTS = 1_000  # the contract's bound on one allotment
RENEW_AT_FRACTION = 0.5  # of the TTL: renew when half of it has passed


@dataclass(slots=True)
class PoolAllotment:
    """What the client holds in one pool."""

    most: int  # configured size, slots
    allotment_id: str = ""
    slots: int = 0
    ttl_s: float = 0.0
    expires_at: float = 0.0  # client monotonic; counted from when the request that set it was sent
    renew_at: float = 0.0
    in_use: int = 0
    peak: int = 0  # most in use at once since the last resize
    generation: int = 0  # bumps when the allotment is lost; blocks begun before it see that
    wanted: bool = False  # a block asked since the allotment was lost or never had one
    misses: int = 0  # blocks that found every allotted slot in use since the last resize
    retry_at: float = 0.0  # no free slot at the service: ask again from then


def check_allotments(sizes: Mapping[str, int] | None) -> dict[str, int]:
    """`slot_allotments`, checked: pool names to sizes 1-1,000."""
    if sizes is None:
        return {}
    if not isinstance(sizes, Mapping):
        raise ValueError(f"slot_allotments must map pool names to slot counts, got {sizes!r}")
    out = {}
    for pool, size in sizes.items():
        if not isinstance(pool, str) or not pool:
            raise ValueError(f"slot_allotments: pool names must be non-empty strings, got {pool!r}")
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_ALLOTMENT_SLOTS:
            raise ValueError(f"slot_allotments[{pool!r}] must be an integer 1-{MAX_ALLOTMENT_SLOTS}, got {size!r}")
        out[pool] = size
    return out


class AllotmentBook:
    """The allotments this client holds and the local slots taken from them; thread-safe."""

    def __init__(self, sizes: Mapping[str, int], clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.pools = {pool: PoolAllotment(most=size) for pool, size in sizes.items()}
        self._next = 0
        self.local_grants = 0  # slot() blocks served from an allotment
        self.lost = 0  # allotments lost (renewal refused or expired)

    def take(self, pool: str) -> tuple[str, int, float] | None:
        """A local slot: its id, the allotment's generation and TTL; None to ask the service."""
        now = self._clock()
        with self._lock:
            held = self.pools.get(pool)
            if held is None:
                return None
            if not held.allotment_id or now >= held.expires_at or held.in_use >= held.slots:
                held.wanted = True
                if held.allotment_id:
                    held.misses += 1  # a fuller allotment would have served it: grow at once
                return None
            held.in_use += 1
            held.peak = max(held.peak, held.in_use)
            self._next += 1
            self.local_grants += 1
            return f"{LOCAL_ID_PREFIX}{held.allotment_id}.{self._next}", held.generation, held.ttl_s

    def give(self, pool: str, generation: int) -> bool:
        """Returns a local slot; False when its allotment was lost while it was held."""
        with self._lock:
            held = self.pools[pool]
            if held.generation != generation:
                return False
            held.in_use = max(0, held.in_use - 1)
            return True

    def granted(self, pool: str, allotment_id: str, slots: int, ttl_s: float, sent_at: float) -> None:
        """The service answered an acquire or renewal sent at `sent_at` (client monotonic)."""
        with self._lock:
            held = self.pools[pool]
            if slots <= 0:
                held.allotment_id, held.slots = "", 0
                return
            held.allotment_id, held.slots, held.ttl_s = allotment_id, slots, ttl_s
            held.expires_at = sent_at + ttl_s
            held.renew_at = sent_at + ttl_s * RENEW_AT_FRACTION
            held.peak = held.in_use
            held.wanted = False
            held.misses = 0

    def retry_renewal(self, pool: str, after_s: float) -> None:
        """A renewal got no answer: try again after `after_s`, never past the expiry."""
        with self._lock:
            held = self.pools[pool]
            held.renew_at = min(held.expires_at, self._clock() + after_s)

    def refused(self, pool: str, retry_after_s: float) -> None:
        """The service had no free slot: ask again after `retry_after_s`."""
        with self._lock:
            self.pools[pool].retry_at = self._clock() + retry_after_s

    def lose(self, pool: str) -> None:
        """The allotment is gone (renewal refused, or expired): its slots are no longer ours."""
        with self._lock:
            held = self.pools[pool]
            if held.allotment_id:
                self.lost += 1
            held.allotment_id, held.slots, held.in_use = "", 0, 0
            held.generation += 1
            held.wanted = True

    def size_wanted(self, pool: str) -> int:
        """The size to ask for: the most used at once since the last resize, plus the blocks
        that found it full, plus one; never over the configured size."""
        with self._lock:
            held = self.pools[pool]
            return min(held.most, max(1, max(held.peak, held.in_use) + held.misses + 1))

    def due(self, now: float) -> tuple[list[str], list[str], list[str], float]:
        """Pools to acquire for, to renew, and whose allotment expired; and the next time to look."""
        acquire, renew, expired = [], [], []
        next_at = math.inf
        with self._lock:
            for pool, held in self.pools.items():
                if held.allotment_id:
                    grow = held.misses and held.slots < held.most and now >= held.retry_at
                    if now >= held.expires_at:
                        expired.append(pool)
                    elif now >= held.renew_at or grow:
                        renew.append(pool)
                    else:
                        next_at = min(next_at, held.renew_at)
                elif held.wanted:
                    if now >= held.retry_at:
                        acquire.append(pool)
                    else:
                        next_at = min(next_at, held.retry_at)
        return acquire, renew, expired, next_at

    def held_ids(self) -> list[tuple[str, str]]:
        """(pool, allotment id) of every allotment held, for returning them at close."""
        with self._lock:
            return [(pool, held.allotment_id) for pool, held in self.pools.items() if held.allotment_id]
