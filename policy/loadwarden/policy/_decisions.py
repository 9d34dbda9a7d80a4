"""Decisions waiting for their outcome: bounded, expiring, O(1) per operation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._model import Backend

if TYPE_CHECKING:  # only for annotations
    from ._pool import Pool


class IdGenerator:
    """Unguessable ids, each bound to the caller it was issued to.

    An id is ``<prefix>-<counter>-<tag>``: the prefix is random per process (a
    restarted process never matches an old id), the counter makes ids unique within
    the process (never reused), and the tag is 96 bits of keyed BLAKE2b over the
    prefix, counter and owner, under a 256-bit key from ``secrets`` that never
    leaves the process. Without the key nobody can forge an id, guess another
    caller's, or turn one caller's id into another's; with it, ``issued`` answers
    "was this id issued to this owner" in O(1) without remembering any id.

    Args:
        prefix: Fixed prefix (tests and the simulator use one for readable ids);
            random when None.
        key: MAC key, at least 16 bytes; random when None.
    """

    __slots__ = ("_key", "_next", "_prefix")

    TAG_BYTES = 12  # 96 bits

    def __init__(self, prefix: str | None = None, key: bytes | None = None) -> None:
        self._prefix = prefix if prefix is not None else secrets.token_hex(4)
        self._key = key if key is not None else secrets.token_bytes(32)
        if len(self._key) < 16:
            raise ValueError("key: must be at least 16 bytes")
        self._next = 0

    def new(self, owner: str = "") -> str:
        """A fresh id issued to ``owner`` (the caller identity; empty when anonymous)."""
        self._next += 1
        head = f"{self._prefix}-{self._next:x}"
        return f"{head}-{self._tag(head, owner)}"

    def derived(self, tag: str) -> IdGenerator:
        """A generator of its own id space under this one's prefix and key (``<prefix>-<tag>-<n>-<mac>``)."""
        return IdGenerator(f"{self._prefix}-{tag}", self._key)

    def issued(self, id_: str, owner: str = "") -> bool:
        """Whether ``new(owner)`` has returned ``id_``: O(1), whatever the number of ids issued."""
        head, sep, tag = id_.rpartition("-")
        if not sep or len(tag) != 2 * self.TAG_BYTES:
            return False
        prefix, sep, counter = head.rpartition("-")
        if not sep or prefix != self._prefix or not counter or len(counter) > 16:
            return False
        try:
            n = int(counter, 16)
        except ValueError:
            return False
        if not (0 < n <= self._next and counter == f"{n:x}"):
            return False
        return hmac.compare_digest(tag, self._tag(head, owner))

    def signed(self, id_: str, owner: str = "") -> bool:
        """Whether ``id_`` was issued to ``owner`` by any generator holding this key (any
        prefix: another process sharing the key, such as a replica of the same service)."""
        head, sep, tag = id_.rpartition("-")
        if not sep or not head or len(tag) != 2 * self.TAG_BYTES:
            return False
        return hmac.compare_digest(tag, self._tag(head, owner))

    @property
    def prefix(self) -> str:
        """The prefix every id this generator issues starts with."""
        return self._prefix

    def _tag(self, head: str, owner: str) -> str:
        data = f"{head}\x00{owner}".encode("utf-8", "surrogateescape")
        return hashlib.blake2b(data, key=self._key, digest_size=self.TAG_BYTES).hexdigest()


@dataclass(slots=True, eq=False)
class PendingDecision:
    """A selection whose outcome has not been reported yet."""

    id: str
    pool: Pool[Any]
    server: Backend
    expires_at: float
    memo: Any = None
    owner: str = ""  # the caller identity it was issued to


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
        self, decision_id: str, pool: Pool[Any], server: Backend, now: float, memo: Any = None, owner: str = ""
    ) -> list[PendingDecision]:
        """Records a decision issued to ``owner``; returns the decisions evicted to stay within capacity."""
        evicted = []
        while len(self._items) >= self.capacity:
            evicted.append(self._items.popitem(last=False)[1])
        self._items[decision_id] = PendingDecision(decision_id, pool, server, now + self.ttl_s, memo, owner)
        self.expired_total += len(evicted)
        return evicted

    def pop(self, decision_id: str, owner: str = "") -> PendingDecision | None:
        """Removes and returns ``owner``'s decision; None if unknown, reported, expired or another's."""
        decision = self._items.get(decision_id)
        if decision is None or decision.owner != owner:
            return None
        return self._items.pop(decision_id)

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
