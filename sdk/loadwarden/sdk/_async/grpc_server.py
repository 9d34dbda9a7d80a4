"""`AsyncAdmissionInterceptor`: admits each incoming RPC through a loadwarden slot;
`AsyncOrcaInterceptor`: adds an ORCA load report to each RPC's trailing metadata.

See `loadwarden.sdk.integrations.grpc_server` for what is admitted and how a
refusal or an unreachable Decision service is answered, and `loadwarden.sdk.orca`
for ORCA.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from loadwarden.sdk._async.client import AsyncClient
from loadwarden.sdk._errors import LoadwardenError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk._reporter import BackendReporter, CallMetrics, recording_call
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

_log = logging.getLogger("loadwarden.sdk.grpc_server")

# The trailing metadata key of a per-call ORCA load report (gRFC A51).
ORCA_TRAILER_KEY = "endpoint-load-metrics-bin"

# gRPC's own services: not the backend's load, so neither reported on nor tracked by default.
INFRASTRUCTURE_SERVICES = ("/xds.service.orca.v3.OpenRcaService/", "/grpc.health.v1.Health/", "/grpc.reflection.")


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


class AsyncOrcaInterceptor(grpc.aio.ServerInterceptor):
    """Adds an ORCA load report to the trailing metadata of each RPC of a `grpc.aio.server`.

    Under the key `endpoint-load-metrics-bin`, each call's trailers carry a serialized
    `xds.data.orca.v3.OrcaLoadReport` (gRFC A51): the reporter's numbers when the call
    ends (`loadwarden.sdk.orca.to_orca`), with what the handler recorded for this call
    (`loadwarden.sdk.orca.call_metrics()`) in precedence. gRPC clients balancing with
    `weighted_round_robin` (per-call reporting, its default) weigh the backend by them.

    Before the handler runs, a trailer without per-call values is set (the last one
    built, when at most `max_sample_age_s` old), so a call that aborts (grpc.aio sends
    its status at once) still carries the numbers of its start. Trailing metadata the
    handler sets is kept; only the ORCA key is replaced. A report that cannot be built
    (the sampler raised) is logged once and left out; the call is never failed for it.

    Args:
        reporter: Whose numbers the reports carry.
        track: Track each reported call with `reporter.track_async()`, so its in-flight
            count, latency, failure and rates include it. Pass False when another
            interceptor already tracks them with the same reporter
            (`AsyncAdmissionInterceptor(reporter=...)`), or they would count twice.
        methods: Full method name ("/pkg.Service/Method") -> whether the RPC is reported on
            (and tracked); by default every method but gRPC's own services (ORCA, health,
            reflection).
        max_sample_age_s: Longest a host sample is reused for the reports, seconds, >= 0:
            the host is sampled at most once per this, however many calls end.

    Raises:
        ModuleNotFoundError: xds-protos is not installed (it names the extra to install).
        ValueError: An argument is out of range or of the wrong kind; the message names it.
    """

    def __init__(
        self,
        reporter: BackendReporter,
        *,
        track: bool = True,
        methods: Callable[[str], bool] | None = None,
        max_sample_age_s: float = 1.0,
    ) -> None:
        from loadwarden.sdk import _orca_codec  # here, not at the top: xds-protos is needed only with ORCA

        if not isinstance(reporter, BackendReporter):
            raise ValueError(f"reporter must be a BackendReporter, got {reporter!r}")
        if methods is not None and not callable(methods):
            raise ValueError(
                f"methods must be a callable from the full method name to a bool, or None, got {methods!r}"
            )
        if not isinstance(track, bool):
            raise ValueError(f"track must be True or False, got {track!r}")
        if isinstance(max_sample_age_s, bool) or not isinstance(max_sample_age_s, int | float) or max_sample_age_s < 0:
            raise ValueError(f"max_sample_age_s must be a number of seconds >= 0, got {max_sample_age_s!r}")
        self._reporter = reporter
        self._track = track
        self._methods = methods
        self._max_age_s = float(max_sample_age_s)
        self._trailer = _orca_codec.trailer
        self._trailer_failed = False
        # The last trailer built with no per-call values, and when (time.monotonic()).
        self._last_trailer: tuple[bytes, float] | None = None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self._reported(handler_call_details.method):
            return handler
        factory, behavior, kind = _handler_factory(handler)
        if kind.endswith("_stream") and streams_async(behavior):
            return _rebuild(handler, factory, self._streaming(behavior))
        return _rebuild(handler, factory, self._unary(behavior))

    def _reported(self, method: str) -> bool:
        if self._methods is None:
            return not method.startswith(INFRASTRUCTURE_SERVICES)
        try:
            return bool(self._methods(method))
        except Exception:  # noqa: BLE001 - a broken methods function must not break the backend
            _log.exception("methods function %r failed for %s; the call is not reported on", self._methods, method)
            return False

    @contextlib.asynccontextmanager
    async def _reporting(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[_Outcome]:
        """Records the call's metrics and tracks it around the block, then sets its trailer.

        The block settles the outcome instead of raising; the outcome's exception is
        re-raised once the trailer is set.
        """
        outcome = _Outcome()
        with recording_call() as call:
            self._set_trailer(context, None)
            if self._track:
                async with self._reporter.track_async() as tracked:
                    yield outcome
                    if outcome.failed:
                        tracked.fail()
            else:
                yield outcome
            self._set_trailer(context, call)
        if outcome.exc is not None:
            raise outcome.exc

    def _set_trailer(self, context: grpc.aio.ServicerContext[Any, Any], call: CallMetrics | None) -> None:
        """Sets the ORCA trailer: built now for `call`, or (None) one without per-call values."""
        try:
            now = time.monotonic()
            last = self._last_trailer
            if call is None and last is not None and now - last[1] <= self._max_age_s:
                value = last[0]
            else:
                value = self._trailer(self._reporter.current_report(max_sample_age_s=self._max_age_s), call)
                if call is None or not call.recorded():
                    self._last_trailer = (value, now)
            kept = [(k, v) for k, v in (context.trailing_metadata() or ()) if k != ORCA_TRAILER_KEY]
            context.set_trailing_metadata((*kept, (ORCA_TRAILER_KEY, value)))
        except Exception as exc:  # noqa: BLE001 - a report left out never fails the call
            if not self._trailer_failed:
                self._trailer_failed = True
                _log.warning("the ORCA trailer could not be built; calls go without it: %r", exc, exc_info=True)

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def reported(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            response = None
            async with self._reporting(context) as outcome:
                try:
                    response = await behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - settled, re-raised after the trailer is set
                    outcome.settle(context, exc)
                else:
                    outcome.settle(context, None)
            return response

        return reported

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def reported(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with self._reporting(context) as outcome:
                try:
                    async for response in behavior(request, context):
                        yield response
                except Exception as exc:  # noqa: BLE001 - settled, re-raised after the trailer is set
                    outcome.settle(context, exc)
                else:
                    outcome.settle(context, None)

        return reported
