"""Single flight: concurrent misses of one key share one computation.

`AsyncFlights` (tasks of one loop: a shared future) and `Flights` (threads: a
`concurrent.futures.Future` per key) keep one surface, `run(key, produce)`, so
`_async/cache.py` is written once and its sync twin generated. The first caller of a
key runs `produce`; callers that come while it runs wait and get the same result or
the same exception. At most `max_keys` keys are in flight: past that, a caller runs
`produce` itself rather than wait or grow the map.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")


class AsyncFlights:
    """Single flight for the tasks of one event loop."""

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._flights: dict[str, asyncio.Future[object]] = {}

    async def run(self, key: str, produce: Callable[[], Awaitable[T]]) -> T:
        """`produce()`'s result, shared with every caller of `key` while it runs.

        A waiter cancelled leaves the others be; a first caller cancelled hands the
        work to the next waiter, which runs `produce` itself.
        """
        while (flight := self._flights.get(key)) is not None:
            try:
                return cast(T, await asyncio.shield(flight))  # the flight of `key` holds a T
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not flight.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The first caller was cancelled, this one was not: it takes over.
        if len(self._flights) >= self._max_keys:
            return await produce()
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            result = await produce()
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: no "never retrieved" warning when no one waited
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)


class Flights:
    """Single flight for threads."""

    def __init__(self, max_keys: int) -> None:
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._flights: dict[str, concurrent.futures.Future[object]] = {}

    def run(self, key: str, produce: Callable[[], T]) -> T:
        """`produce()`'s result, shared with every caller of `key` while it runs."""
        with self._lock:
            flight = self._flights.get(key)
            first = flight is None and len(self._flights) < self._max_keys
            if first:
                flight = self._flights[key] = concurrent.futures.Future()
        if flight is None:
            return produce()
        if not first:
            return cast(T, flight.result())  # the flight of `key` holds a T
        try:
            result = produce()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            with self._lock:
                del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)
