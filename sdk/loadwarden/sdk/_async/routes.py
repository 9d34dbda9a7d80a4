"""A thin driver of `RouteTables`: the WatchRoutes stream, in a background task (async) or daemon thread (sync).

It keeps one stream open for every pool the client decides locally, feeds each
table it receives to the tables, and reconnects with full-jitter backoff when the
stream breaks (the service sends each pool's whole table again on reconnect, so
the client resynchronises). A pool the service does not know is dropped from the
watch (its calls go to the service, which says NOT_FOUND). Every decision about
tables lives in `RouteTables`.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from typing import Any

import grpc

from loadwarden.sdk._local import RouteTables
from loadwarden.sdk._synchronization import AsyncCancelled, AsyncEvent, AsyncThreadLock, AsyncWorker
from loadwarden.v1 import decision_pb2 as _pb

log = logging.getLogger("loadwarden.sdk")

MAX_WATCHED_POOLS = 100  # the contract's cap on one WatchRoutes stream
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 5.0
_POOL_FIELD = re.compile(r"^pools\[(\d+)\]: ")


class AsyncRouteWatcher:
    """Watches the pools named with `watch`, from a worker started on the first one.

    Args:
        tables: Where the tables go.
        open_stream: Starts a WatchRoutes call for a request (the client's stub and metadata).
        rng: Jitter of the reconnect backoff.
    """

    def __init__(
        self, tables: RouteTables, open_stream: Callable[[_pb.WatchRoutesRequest], Any], rng: random.Random
    ) -> None:
        self._tables = tables
        self._open = open_stream
        self._rng = rng
        self._lock = AsyncThreadLock()
        self._pools: set[str] = set()
        self._unknown: set[str] = set()  # pools the service said it does not have
        self._wake = AsyncEvent()
        self._call: Any = None
        self._restarting = False
        self._stopping = False
        self._task: AsyncWorker | None = None

    def watch(self, pool: str) -> bool:
        """Adds `pool` to the stream (restarting it); False when it cannot be watched
        (the service does not know it, or MAX_WATCHED_POOLS are watched)."""
        if pool in self._pools:
            return True
        with self._lock:
            if pool in self._unknown or len(self._pools) >= MAX_WATCHED_POOLS or self._stopping:
                return False
            self._pools.add(pool)
            if self._task is None:
                self._task = AsyncWorker.start(self._run, "loadwarden-routes")
            else:
                self._restart()
        return True

    def _restart(self) -> None:
        call = self._call
        if call is not None:
            self._restarting = True
            call.cancel()
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._restart()
        if self._task is not None:
            await self._task.join()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            with self._lock:
                pools = sorted(self._pools)
                self._restarting = False
            if not pools:
                return
            request = _pb.WatchRoutesRequest(pools=pools, client_instance=self._tables.instance)
            call = self._call = self._open(request)
            got = False
            try:
                async for response in call:
                    if not got:
                        got = True
                        failures = 0
                        self._tables.stream_up()
                    self._tables.apply(response.table, pools)
                if self._stopping:
                    return
            except AsyncCancelled:  # grpc.aio raises it for a call this watcher cancelled
                if self._stopping:
                    return
                if not self._restarting:
                    raise
            except grpc.RpcError as err:
                if self._stopping:
                    return
                if not self._restarting and not self._forget_unknown(err, pools):
                    failures += 1
                    log.debug("WatchRoutes stream broke (%s); reconnecting", err.code())
            finally:
                self._call = None
                self._tables.stream_down()
            if self._restarting:
                continue
            if not got:  # ended or failed before any table: back off, never spin
                failures = max(failures, 1)
            if failures == 0:
                continue
            # Full jitter: anywhere up to the capped exponential, so clients do not reconnect in step.
            backoff = self._rng.uniform(0, min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**failures))
            self._wake.clear()
            await self._wake.wait(backoff)

    def _forget_unknown(self, err: grpc.RpcError, pools: list[str]) -> bool:
        """Drops the pool a NOT_FOUND names from the watch; True when it did."""
        if err.code() != grpc.StatusCode.NOT_FOUND:
            return False
        found = _POOL_FIELD.match(err.details() or "")
        if found is None or int(found.group(1)) >= len(pools):
            return False
        pool = pools[int(found.group(1))]
        with self._lock:
            self._pools.discard(pool)
            self._unknown.add(pool)
        log.info("pool %r is unknown to the service: it is decided centrally", pool)
        return True
