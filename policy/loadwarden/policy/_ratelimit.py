"""Per-caller and per-client-key token buckets: one ``RateLimiter`` per pool.

Each client key owns a bucket of ``burst`` tokens that refills at
``count / per_s`` tokens per second and starts full. A request spends one token
(``take`` spends any whole number of them, for Envoy's ``hits_addend``); without
them it is refused with the seconds until they will be there. Buckets are
refilled lazily from the ``now`` each call passes in, so the limiter reads no
clock and a test drives it with plain numbers.

A bucket is two floats (tokens, when they were counted), so the state can move
behind the state store unchanged.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from ._settings import RateLimit

# Tokens a bucket may be short of one and still pay: absorbs float rounding in the
# refill (e.g. 6 s at 10/minute adding 0.9999999999999999 tokens), never policy.
_EPSILON_TOKENS = 1e-9


class RateTaken(NamedTuple):
    """What one ``RateLimiter.take`` found and did, over every bucket the request passed.

    Attributes:
        wait_s: 0.0 when the tokens were taken; otherwise the seconds until every bucket
            will hold them (> 0; ``math.inf`` when more than a bucket's burst was asked).
        remaining: Whole tokens left in the emptiest bucket, after the take, >= 0.
        full_in_s: Seconds until every bucket is full again (0.0 when they are).
    """

    wait_s: float
    remaining: int
    full_in_s: float


class _Bucket:
    __slots__ = ("counted_at", "tokens")

    def __init__(self, tokens: float, counted_at: float) -> None:
        self.tokens = tokens  # 0 <= tokens <= burst
        self.counted_at = counted_at  # monotonic seconds when `tokens` was right


class _Rate:
    """One rate's arithmetic over buckets: refill, check, spend."""

    __slots__ = ("burst", "count", "per_s")

    def __init__(self, limit: RateLimit, name: str) -> None:
        if not isinstance(limit, RateLimit):
            raise ValueError(f"{name} must be a RateLimit, got {limit!r}")
        _check_count(f"{name}.count", limit.count)
        _check_count(f"{name}.burst", limit.burst)
        if isinstance(limit.per_s, bool) or not isinstance(limit.per_s, int | float) or not 0 < limit.per_s < math.inf:
            raise ValueError(f"{name}.per_s must be a positive number of seconds, got {limit.per_s!r}")
        self.count = float(limit.count)
        self.per_s = float(limit.per_s)
        self.burst = float(limit.burst)

    def new(self, now: float) -> _Bucket:
        return _Bucket(self.burst, now)

    def wait_s(self, bucket: _Bucket, now: float, need: float = 1.0) -> float:
        """Refills ``bucket`` to ``now``; 0.0 when it holds ``need`` tokens, else the seconds
        until it will (``math.inf`` when ``need`` is over the burst)."""
        if now > bucket.counted_at:
            # (elapsed * count) / per_s rounds exactly where elapsed * rate would not.
            refill = (now - bucket.counted_at) * self.count / self.per_s
            bucket.tokens = min(self.burst, bucket.tokens + refill)  # inf refill caps at burst too
            bucket.counted_at = now
        if bucket.tokens >= need - _EPSILON_TOKENS:
            return 0.0
        if need > self.burst + _EPSILON_TOKENS:
            return math.inf
        return (need - bucket.tokens) * self.per_s / self.count

    def full_in_s(self, bucket: _Bucket) -> float:
        """Seconds until ``bucket`` (refilled to its ``counted_at``) is full again."""
        return max(0.0, (self.burst - bucket.tokens) * self.per_s / self.count)

    @staticmethod
    def spend(bucket: _Bucket, tokens: float = 1.0) -> None:
        bucket.tokens = max(0.0, bucket.tokens - tokens)


class _Caller:
    """One identified caller's buckets: its own, and one per client key it subdivides into."""

    __slots__ = ("bucket", "keys")

    def __init__(self, bucket: _Bucket) -> None:
        self.bucket = bucket
        self.keys: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first


def _touch(table: OrderedDict[str, Any], key: str, cap: int, make: Callable[[], Any]) -> Any:
    """``table[key]``, made with ``make`` (evicting the least recently used at ``cap``) or moved to the end."""
    entry = table.get(key)
    if entry is None:
        if len(table) >= cap:
            table.popitem(last=False)
        entry = table[key] = make()
    else:
        table.move_to_end(key)
    return entry


class RateLimiter:
    """Token buckets per client key, with at most ``max_keys`` keys tracked.

    The anonymous caller (``identity=None``: no credentials configured) gets one bucket
    per client key, as before identities existed. An identified caller is limited as
    a whole: its own bucket at ``identity_limit`` (the pool's rate unless set) bounds
    everything it does, and a client key it sends subdivides within it (one more
    bucket at ``limit`` per key, at most ``max_keys_per_identity`` keys), so rotating
    keys never buys a caller more than its own rate. A request spends one token from
    every bucket it passes, and only when all of them hold one.

    Keys are evicted least recently used first (a refused request counts as a use).
    An evicted key forgets its bucket and comes back full: a client can get up to
    ``burst`` extra requests through each time it is evicted. That errs towards
    admitting, and only happens when more than ``max_keys`` keys are active at
    once; the alternative, refusing keys never seen before while the table is
    full, would let a few busy keys lock every new client out. Memory stays
    bounded by ``max_keys`` anonymous keys plus ``max_keys`` identities with at most
    ``max_keys_per_identity`` keys each (identities are the configured callers).

    Args:
        limit: The rate (``count`` tokens per ``per_s`` seconds) and ``burst`` per client key.
        max_keys: Client keys (and identities) tracked at most, count, >= 1.
        identity_limit: The rate of one identified caller over all its keys; ``limit`` when None.
        max_keys_per_identity: Client keys tracked per identified caller, count, >= 1.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    __slots__ = ("_buckets", "_callers", "_identity_rate", "_key_rate", "_max_keys", "_max_keys_per_identity")

    def __init__(
        self,
        limit: RateLimit,
        max_keys: int,
        identity_limit: RateLimit | None = None,
        max_keys_per_identity: int = 1_000,
    ) -> None:
        self._key_rate = _Rate(limit, "limit")
        self._identity_rate = _Rate(identity_limit, "identity_limit") if identity_limit is not None else self._key_rate
        _check_count("max_keys", max_keys)
        _check_count("max_keys_per_identity", max_keys_per_identity)
        self._max_keys = max_keys
        self._max_keys_per_identity = max_keys_per_identity
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # anonymous keys, least recently used first
        self._callers: OrderedDict[str, _Caller] = OrderedDict()  # identities, least recently used first

    def try_acquire(self, key: str, now: float, identity: str | None = None) -> float:
        """Takes one token from each bucket the request passes if every one has one.

        Args:
            key: Client key; the empty string is one key like any other for the
                anonymous caller, and "no subdivision" for an identified one.
            now: Monotonic time, seconds. An earlier ``now`` than a bucket's last one
                adds no tokens (time never runs backwards for a bucket).
            identity: The caller identity; None for the anonymous caller.

        Returns:
            0.0 when the tokens were taken; otherwise the seconds until they will be
            there, > 0 (retry after that long).

        Raises:
            ValueError: ``now`` is not a finite number.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")
        if identity is None:
            key_rate = self._key_rate
            bucket = _touch(self._buckets, key, self._max_keys, lambda: key_rate.new(now))
            wait = key_rate.wait_s(bucket, now)
            if wait == 0.0:
                key_rate.spend(bucket)
            return wait
        identity_rate, key_rate = self._identity_rate, self._key_rate
        caller = _touch(self._callers, identity, self._max_keys, lambda: _Caller(identity_rate.new(now)))
        wait = identity_rate.wait_s(caller.bucket, now)
        sub = None
        if key:
            sub = _touch(caller.keys, key, self._max_keys_per_identity, lambda: key_rate.new(now))
            wait = max(wait, key_rate.wait_s(sub, now))
        if wait == 0.0:
            identity_rate.spend(caller.bucket)
            if sub is not None:
                key_rate.spend(sub)
        return wait

    def take(self, key: str, now: float, identity: str | None = None, tokens: int = 1) -> RateTaken:
        """Takes ``tokens`` from each bucket the request passes if every one holds them.

        ``try_acquire`` is ``take`` of one token without the report (and 4x quicker: the
        AcquireSlot path). Zero tokens takes none and is refused when a bucket holds less
        than one (a check of whether the next request would pass).

        Args:
            key, now, identity: As for ``try_acquire``.
            tokens: Tokens to take from each bucket, count, >= 0.

        Returns:
            The wait (0.0: taken), the whole tokens left and the time until the buckets
            are full again; see ``RateTaken``.

        Raises:
            ValueError: ``now`` is not a finite number, or ``tokens`` is not a count.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a whole number >= 0, got {tokens!r}")
        need = float(max(1, tokens))
        passed: list[tuple[_Rate, _Bucket]]
        if identity is None:
            key_rate = self._key_rate
            passed = [(key_rate, _touch(self._buckets, key, self._max_keys, lambda: key_rate.new(now)))]
        else:
            identity_rate, key_rate = self._identity_rate, self._key_rate
            caller = _touch(self._callers, identity, self._max_keys, lambda: _Caller(identity_rate.new(now)))
            passed = [(identity_rate, caller.bucket)]
            if key:
                sub = _touch(caller.keys, key, self._max_keys_per_identity, lambda: key_rate.new(now))
                passed.append((key_rate, sub))
        wait = max(rate.wait_s(bucket, now, need) for rate, bucket in passed)
        if wait == 0.0:
            for rate, bucket in passed:
                rate.spend(bucket, float(tokens))
        remaining = min(int(bucket.tokens + _EPSILON_TOKENS) for _, bucket in passed)
        return RateTaken(wait, remaining, max(rate.full_in_s(bucket) for rate, bucket in passed))

    def __len__(self) -> int:
        """Anonymous client keys and identified callers tracked right now, count."""
        return len(self._buckets) + len(self._callers)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets or key in self._callers

    def keys_of(self, identity: str) -> int:
        """Client keys tracked under ``identity``, count, <= ``max_keys_per_identity``."""
        caller = self._callers.get(identity)
        return len(caller.keys) if caller is not None else 0


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
