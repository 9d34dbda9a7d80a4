"""Decisions waiting for their outcome: bounded, expiring, O(1) per operation."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._model import Backend

if TYPE_CHECKING:
    from ._pool import Pool


class IdGenerator:
    """Process-unique ids: a random per-process prefix and a counter.

    An id is never reused within a process, and a restarted process starts a new
    prefix, so an outcome meant for an old process can never match a new decision.
    """

    __slots__ = ("_prefix", "_next")

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix if prefix is not None else secrets.token_hex(4)
        self._next = 0

    def new(self) -> str:
        self._next += 1
        return f"{self._prefix}-{self._next:x}"

    def derived(self, tag: str) -> IdGenerator:
        """A generator of its own id space under this one's prefix (``<prefix>-<tag>-<n>``)."""
        return IdGenerator(f"{self._prefix}-{tag}")

    def issued(self, id_: str) -> bool:
        """Whether ``new`` has returned ``id_``: O(1), whatever the number of ids issued."""
        head, sep, counter = id_.rpartition("-")
        if not sep or head != self._prefix or not counter or len(counter) > 16:
            return False
        try:
            n = int(counter, 16)
        except ValueError:
            return False
        return 0 < n <= self._next and counter == f"{n:x}"


@dataclass(slots=True, eq=False)
class PendingDecision:
    """A selection whose outcome has not been reported yet."""

    id: str
    pool: Pool
    server: Backend
    expires_at: float
    memo: Any = None


class PendingDecisions:
    """Decisions by id in creation order.

    Every decision gets the same TTL, so creation order is expiry order and
    expiring pops from the front. At ``capacity`` the oldest decision is expired
    early to make room: selection never fails because clients forgot to report.
    """

    def __init__(self, ttl_s: float, capacity: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s: must be > 0")
        if capacity < 1:
            raise ValueError("capacity: must be >= 1")
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._items: OrderedDict[str, PendingDecision] = OrderedDict()
        self.expired_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self, decision_id: str, pool: Pool, server: Backend, now: float, memo: Any = None
    ) -> list[PendingDecision]:
        """Records a decision; returns the decisions evicted to stay within capacity."""
        evicted = []
        while len(self._items) >= self.capacity:
            evicted.append(self._items.popitem(last=False)[1])
        self._items[decision_id] = PendingDecision(decision_id, pool, server, now + self.ttl_s, memo)
        self.expired_total += len(evicted)
        return evicted

    def pop(self, decision_id: str) -> PendingDecision | None:
        """Removes and returns the decision, or None if unknown, reported or expired."""
        return self._items.pop(decision_id, None)

    def expire(self, now: float) -> list[PendingDecision]:
        """Removes and returns the decisions whose TTL has passed at ``now``."""
        items = self._items
        if not items:
            return []
        expired = []
        while items:
            first = next(iter(items.values()))
            if first.expires_at > now:
                break
            expired.append(items.popitem(last=False)[1])
        self.expired_total += len(expired)
        return expired
