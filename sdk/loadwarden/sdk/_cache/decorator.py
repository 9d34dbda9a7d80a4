"""`@cached(cache)`: a function's results cached by its arguments, for sync and async functions."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar, cast, overload

from loadwarden.sdk._async.cache import AsyncCache
from loadwarden.sdk._sync.cache import Cache

P = ParamSpec("P")
T = TypeVar("T")


@overload
def cached(
    cache: AsyncCache,
    *,
    ttl_s: float | None = None,
    key: Callable[..., object] | None = None,
    ignore: Iterable[str] = (),
    name: str | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]: ...


@overload
def cached(
    cache: Cache,
    *,
    ttl_s: float | None = None,
    key: Callable[..., object] | None = None,
    ignore: Iterable[str] = (),
    name: str | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...


def cached(
    cache: AsyncCache | Cache,
    *,
    ttl_s: float | None = None,
    key: Callable[..., object] | None = None,
    ignore: Iterable[str] = (),
    name: str | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
    """Caches a function's results in `cache`, keyed by its arguments.

    An `async def` function needs an `AsyncCache`, a plain one a `Cache`. The arguments
    are bound to the function's signature, so positional and keyword spellings of a call
    share its key (see `loadwarden.sdk.cache`). Concurrent calls with one key compute once.

    Example:
        @cached(cache, ttl_s=7200, ignore=("self",))
        def classify(self, text: str) -> dict[str, float]: ...

    Args:
        cache: Where the results go.
        ttl_s: How long each result lives, seconds; default the cache's `ttl_s`.
        key: A function of the same arguments whose result (str, numbers, lists, dicts)
            is keyed in place of the arguments, for arguments that cannot be keyed.
        ignore: Parameters left out of the key (`"self"` for a method whose instances
            all compute the same).
        name: The function's name in its keys; default `module.qualname`. Give one to
            keep keys stable when the code moves, or to share them between programs.

    Raises:
        TypeError: The function's flavour does not match the cache's, or it is a generator.
        ValueError: `ignore` names a parameter the function does not have, or `ttl_s` is
            out of range.
    """
    if not isinstance(cache, (AsyncCache, Cache)):
        raise TypeError(f"cached() needs an AsyncCache or a Cache, got {cache!r}")

    def decorate(fn: Callable[P, Any]) -> Callable[P, Any]:
        what = getattr(fn, "__qualname__", repr(fn))
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"cached() cannot cache the generator function {what}: its result is an iterator")
        if isinstance(cache, AsyncCache):
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(
                    f"cached() with an AsyncCache needs an async def function; {what} is not one "
                    "(cache a plain function with a Cache)"
                )
            made: Callable[..., Any] = cache._decorate(  # noqa: SLF001 - the cache package's own decorator
                fn, ttl_s=ttl_s, key=key, ignore=ignore, name=name
            )
        else:
            if inspect.iscoroutinefunction(fn):
                raise TypeError(
                    f"cached() with a Cache cannot cache the async function {what}: "
                    "use an AsyncCache (a Cache would block the event loop on its store)"
                )
            made = cache._decorate(fn, ttl_s=ttl_s, key=key, ignore=ignore, name=name)  # noqa: SLF001 - the cache package's own decorator
        return cast(Callable[P, Any], made)

    return decorate
