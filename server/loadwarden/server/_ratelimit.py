"""Per-client-key token buckets: one ``RateLimiter`` per pool.

Each client key owns a bucket of ``burst`` tokens that refills at
``count / per_s`` tokens per second and starts full. A request spends one token;
without one it is refused with the seconds until one will be there. Buckets are
refilled lazily from the ``now`` each call passes in, so the limiter reads no
clock and a test drives it with plain numbers.

A bucket is two floats (tokens, when they were counted), so the state can move
behind the state store unchanged.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from ._settings import RateLimit

# Tokens a bucket may be short of one and still pay: absorbs float rounding in the
# refill (e.g. 6 s at 10/minute adding 0.9999999999999999 tokens), never policy.
_EPSILON_TOKENS = 1e-9


class _Bucket:
    __slots__ = ("tokens", "counted_at")

    def __init__(self, tokens: float, counted_at: float) -> None:
        self.tokens = tokens  # 0 <= tokens <= burst
        self.counted_at = counted_at  # monotonic seconds when `tokens` was right


class RateLimiter:
    """Token buckets per client key, with at most ``max_keys`` keys tracked.

    Keys are evicted least recently used first (a refused request counts as a use).
    An evicted key forgets its bucket and comes back full: a client can get up to
    ``burst`` extra requests through each time it is evicted. That errs towards
    admitting, and only happens when more than ``max_keys`` keys are active at
    once; the alternative, refusing keys never seen before while the table is
    full, would let a few busy keys lock every new client out. Memory stays
    bounded by ``max_keys`` either way.

    Args:
        limit: The rate (``count`` tokens per ``per_s`` seconds) and ``burst``.
        max_keys: Client keys tracked at most, count, >= 1.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    __slots__ = ("_burst", "_count", "_per_s", "_max_keys", "_buckets")

    def __init__(self, limit: RateLimit, max_keys: int) -> None:
        if not isinstance(limit, RateLimit):
            raise ValueError(f"limit must be a RateLimit, got {limit!r}")
        _check_count("limit.count", limit.count)
        _check_count("limit.burst", limit.burst)
        if isinstance(limit.per_s, bool) or not isinstance(limit.per_s, int | float) or not 0 < limit.per_s < math.inf:
            raise ValueError(f"limit.per_s must be a positive number of seconds, got {limit.per_s!r}")
        _check_count("max_keys", max_keys)
        self._count = float(limit.count)
        self._per_s = float(limit.per_s)
        self._burst = float(limit.burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first

    def try_acquire(self, key: str, now: float) -> float:
        """Takes one token from ``key``'s bucket if it has one.

        Args:
            key: Client key; the empty string (anonymous) is one key like any other.
            now: Monotonic time, seconds. An earlier ``now`` than the key's last one
                adds no tokens (time never runs backwards for a bucket).

        Returns:
            0.0 when a token was taken; otherwise the seconds until one will be
            there, > 0 (retry after that long).

        Raises:
            ValueError: ``now`` is not a finite number.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        else:
            self._buckets.move_to_end(key)
            if now > bucket.counted_at:
                # (elapsed * count) / per_s rounds exactly where elapsed * rate would not.
                refill = (now - bucket.counted_at) * self._count / self._per_s
                bucket.tokens = min(self._burst, bucket.tokens + refill)  # inf refill caps at burst too
                bucket.counted_at = now
        if bucket.tokens >= 1.0 - _EPSILON_TOKENS:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return 0.0
        return (1.0 - bucket.tokens) * self._per_s / self._count

    def __len__(self) -> int:
        """Client keys tracked right now, count, <= ``max_keys``."""
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
