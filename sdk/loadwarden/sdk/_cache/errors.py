"""The errors `loadwarden.sdk.cache` raises."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of the cache's own errors."""


class CacheKeyError(CacheError, TypeError):
    """An argument cannot be part of a cache key; the message names it and how to key it instead."""


class CacheValueError(CacheError, TypeError):
    """A computed value cannot be serialised by the cache's serializer; nothing was cached.

    The message names the value's type and how to cache it anyway (return JSON data,
    or give the cache another serializer).
    """


class StoreError(CacheError):
    """A store could not answer (Redis unreachable, timed out, refused the command).

    A store raises it; the cache never lets it reach the caller: it computes
    without the store, counts it and logs it once. A store of your own raises
    `StoreError` for its backend's failures, and anything else for bugs.
    """
