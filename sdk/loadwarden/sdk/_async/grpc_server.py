"""`AsyncAdmissionInterceptor`: admits each incoming RPC through a loadwarden slot.

See `loadwarden.sdk.integrations.grpc_server` for what is admitted and how a
refusal or an unreachable Decision service is answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from loadwarden.sdk._async.client import AsyncClient
from loadwarden.sdk._errors import LoadwardenError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk._reporter import BackendReporter
from loadwarden.sdk.integrations._admission import (
    Handler,
    PoolOf,
    PriorityOf,
    _Admitter,
    _denied_details,
    _handler_factory,
    _HandlerFailed,
    _Outcome,
    _rebuild,
    abort_denied_async,
    streams_async,
)


class AsyncAdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Admits RPCs of a `grpc.aio.server` through loadwarden slots, with an `AsyncClient`.

    Args:
        client: AsyncClient to acquire and release slots with, used from the server's event loop;
            the caller keeps ownership and closes it. Its `slot_fallback` applies while the
            Decision service is unreachable.
        pool: Full method name ("/pkg.Service/Method") -> pool name, or None to
            let the RPC through without a slot.
        priority: Invocation metadata -> priority 0-9 (clamped); 0 when None.
            See `priority_from_metadata`.
        wait_s: Longest an RPC waits in the pool's queue for a slot, seconds, >= 0.
        reporter: When given, each admitted handler runs inside `reporter.track_async()`,
            so the backend's in-flight count and latency are reported.
        lease_ttl_s: Lease time to live, seconds (renewed while the RPC runs);
            None means the pool's default.

    Raises:
        ValueError: An argument is out of range or of the wrong kind; the message names it.
    """

    def __init__(
        self,
        client: AsyncClient,
        pool: PoolOf,
        *,
        priority: PriorityOf | None = None,
        wait_s: float = 0.0,
        reporter: BackendReporter | None = None,
        lease_ttl_s: float | None = None,
    ) -> None:
        if not isinstance(client, AsyncClient):
            raise ValueError(f"client must be a loadwarden AsyncClient, got {client!r}")
        self._admit: _Admitter[AsyncClient] = _Admitter(client, pool, priority, wait_s, reporter, lease_ttl_s)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        pool = self._admit.pool(method)
        if pool is None:
            return handler
        priority = self._admit.priority(handler_call_details.invocation_metadata)
        factory, behavior, kind = _handler_factory(handler)
        if kind.endswith("_stream") and streams_async(behavior):
            return _rebuild(handler, factory, self._streaming(behavior, method, pool, priority))
        return _rebuild(handler, factory, self._unary(behavior, method, pool, priority))

    @contextlib.asynccontextmanager
    async def _admitted(
        self, method: str, pool: str, priority: int, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[_Outcome]:
        """Holds a slot around the block; aborts the RPC when the slot is refused.

        The block settles the outcome instead of raising; the outcome's exception
        is re-raised once the slot is released.
        """
        admit, outcome, entered = self._admit, _Outcome(), False
        try:
            async with admit.client.slot(pool, **admit.slot_options(priority)):
                entered = True
                async with self._tracked(outcome):
                    yield outcome
                if outcome.failed:
                    raise _HandlerFailed
        except _HandlerFailed:
            pass
        except (SlotDenied, ResourceExhaustedError) as denied:
            if entered:
                raise
            await abort_denied_async(context, _denied_details(denied), denied)
        except LoadwardenError as err:
            if entered:
                raise
            if admit.unexpected(pool, method, err):
                await abort_denied_async(context, "loadwarden: the slot could not be acquired", SlotDenied())
            async with self._tracked(outcome):
                yield outcome
        if outcome.exc is not None:
            raise outcome.exc

    @contextlib.asynccontextmanager
    async def _tracked(self, outcome: _Outcome) -> AsyncIterator[None]:
        reporter = self._admit.reporter
        if reporter is None:
            yield
            return
        async with reporter.track_async() as tracked:
            yield
            if outcome.failed:
                tracked.fail()

    def _unary(self, behavior: Callable[..., Any], method: str, pool: str, priority: int) -> Callable[..., Any]:
        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            response = None
            async with self._admitted(method, pool, priority, context) as outcome:
                try:
                    response = await behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - settled, re-raised after the release
                    outcome.settle(context, exc)
                else:
                    outcome.settle(context, None)
            return response

        return admitted

    def _streaming(self, behavior: Callable[..., Any], method: str, pool: str, priority: int) -> Callable[..., Any]:
        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with self._admitted(method, pool, priority, context) as outcome:
                try:
                    async for response in behavior(request, context):
                        yield response
                except Exception as exc:  # noqa: BLE001 - settled, re-raised after the release
                    outcome.settle(context, exc)
                else:
                    outcome.settle(context, None)

        return admitted
