"""gRPC servicers: translate, call one core method, translate back.

Domain errors map to status codes in ``_STATUS`` and nowhere else. A client's
mistake never becomes UNKNOWN or INTERNAL; an unexpected exception is logged with
its traceback and answered INTERNAL without internals in the message.

``add_to_server`` registers both services with request deserializers that never
raise: bytes that do not decode as the request message reach the handler as a
``MalformedRequest`` and are answered INVALID_ARGUMENT (gRPC itself would answer
UNKNOWN). Status messages are clipped to STATUS_MESSAGE_MAX_LEN characters so an
echoed client value can never outgrow a client's metadata limit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, final

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from loadwarden.policy import (
    DecisionError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    check_count,
    check_name,
    check_range,
    check_ttl_ms,
)
from loadwarden.v1 import admin_pb2 as _admin
from loadwarden.v1 import admin_pb2_grpc as _admin_grpc
from loadwarden.v1 import decision_pb2 as _pb
from loadwarden.v1 import decision_pb2_grpc as _pb_grpc

from ..engine._admission import MIN_RETRY_AFTER_S, Denial, Denied, Granted
from ..engine._allotments import MAX_ALLOTMENT_SLOTS, AllotmentRecord, Allotments, expires_in_ms
from ..engine._core import CoreLimits, DecisionCore
from ..engine._planner import Planner
from . import _convert as convert
from . import _telemetry as telemetry
from ._auth import Callers
from ._planning import recommendations_response
from ._routes import RouteWatchers, check_pools
from ._watch import StreamCaps, Watchers, check_interval_ms, status_page

log = logging.getLogger("loadwarden.server")

RETRY_AFTER_KEY = "loadwarden-retry-after-ms"
UNAVAILABLE_REASON_KEY = "loadwarden-unavailable-reason"

_STATUS: dict[type[DecisionError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Longest status message sent, characters; gRPC clients refuse trailers over 8 KiB by default.
STATUS_MESSAGE_MAX_LEN = 1_024

# AcquireSlot request ids one ReleaseSlot may abandon, at most.
MAX_ABANDONED_REQUEST_IDS = 100

# AcquireSlot requests of one Decide stream awaiting their answers, at most.
MAX_DECIDE_IN_FLIGHT = 1_000
# Requests in one DecideRequest message, at most.
MAX_DECIDE_CALLS = 1_000

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def check_abandoned(request: _pb.ReleaseSlotRequest) -> list[str]:
    """ReleaseSlot's abandoned_request_ids, checked: at most 100 valid request ids."""
    ids = list(request.abandoned_request_ids)
    if len(ids) > MAX_ABANDONED_REQUEST_IDS:
        raise InvalidArgument(
            "abandoned_request_ids", f"has {len(ids)} entries; at most {MAX_ABANDONED_REQUEST_IDS} allowed"
        )
    for index, request_id in enumerate(ids):
        check_name(request_id, f"abandoned_request_ids[{index}]")
    return ids


@final
@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """What a handler receives instead of a request whose bytes did not decode.

    Attributes:
        message_type: Full name of the expected message, e.g. ``loadwarden.v1.SelectServerRequest``.
        problem: The protobuf decoder's complaint.
    """

    message_type: str
    problem: str

    def error(self) -> InvalidArgument:
        return InvalidArgument("request", f"is not a valid {self.message_type} message: {self.problem}")


def _tolerant_deserializer(message_class: Any) -> Callable[[bytes], Any]:
    from_string = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return from_string(data)
        except Exception as exc:  # noqa: BLE001 - any decode failure is the client's bytes
            return MalformedRequest(name, str(exc) or type(exc).__name__)

    return deserialize


def _status_message(exc: DecisionError) -> str:
    """The status message for ``exc``: its text, ASCII-escaped when its UTF-8 form is over twice
    STATUS_MESSAGE_MAX_LEN bytes, then clipped to STATUS_MESSAGE_MAX_LEN characters."""
    text = str(exc)
    if len(text.encode("utf-8")) > 2 * STATUS_MESSAGE_MAX_LEN:
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    if len(text) > STATUS_MESSAGE_MAX_LEN:
        suffix = "... (truncated)"
        text = text[: STATUS_MESSAGE_MAX_LEN - len(suffix)] + suffix
    return text


def _trailers(exc: DecisionError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that lets clients act on an error without parsing its message."""
    if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
        return ((RETRY_AFTER_KEY, str(max(1, math.ceil(exc.retry_after_s * 1000)))),)  # never early
    if isinstance(exc, Unavailable) and exc.reason:  # no reason: a transient outage, retried by clients
        return ((UNAVAILABLE_REASON_KEY, exc.reason),)
    return ()


def _code(exc: DecisionError) -> grpc.StatusCode:
    """The status code of a domain error; a subclass maps as its base."""
    return next(_STATUS[cls] for cls in type(exc).__mro__ if cls in _STATUS)


def _decide_error(exc: Exception, method: str) -> _pb.DecideError:
    """What a Decide stream answers for a request that failed with ``exc``: the status its
    unary call would end with (an unexpected error: INTERNAL without internals, logged)."""
    if isinstance(exc, DecisionError):
        error = _pb.DecideError(code=_code(exc).value[0], message=_status_message(exc))
        for key, value in _trailers(exc):
            if key == RETRY_AFTER_KEY:
                error.retry_after_ms = int(value)
            elif key == UNAVAILABLE_REASON_KEY:
                error.unavailable_reason = value
        return error
    log.exception("unexpected error in %s", method)
    return _pb.DecideError(
        code=grpc.StatusCode.INTERNAL.value[0], message=f"internal error in {method}; see service logs"
    )


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """Ends the call for ``exc``: a domain error with its status code, anything else as
    INTERNAL without internals (logged with its traceback). Call it from an ``except`` block."""
    if isinstance(exc, DecisionError):
        await context.abort(_code(exc), _status_message(exc), trailing_metadata=_trailers(exc))
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see service logs")


def _past_deadline(context: Any) -> bool:
    """Whether the call's deadline has passed (the client has then given up on the answer)."""
    left = context.time_remaining()
    return left is not None and left <= 0


def _rpc(method: Handler) -> Handler:
    """Maps domain errors raised by a unary handler to gRPC status codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if type(request) is MalformedRequest:
                raise request.error()
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - _abort maps every error to a status; unknown ones to INTERNAL
            await _abort(context, exc, method.__name__)

    return wrapper  # type: ignore[return-value]  # wraps() keeps method's signature; mypy types it _Wrapped


class DecisionServicer(_pb_grpc.DecisionServiceServicer):
    """loadwarden.v1.DecisionService over a DecisionCore."""

    def __init__(self, core: DecisionCore, callers: Callers | None = None, planner: Planner | None = None) -> None:
        self._core = core
        self._callers = callers or Callers()
        self._planner = planner
        self._ttl_ms = core.limits.decision_ttl_ms
        caps = StreamCaps(core.limits.max_watch_streams, core.limits.max_watch_streams_per_caller)
        self._watchers = Watchers(caps.max_streams, caps.max_streams_per_caller, caps=caps)
        self._routes = RouteWatchers(caps, core.limits.route_push_interval_ms / 1000.0)
        self._allotments = Allotments(core)
        # Links from the calls that settle decisions and leases to the calls that made them.
        self._spans = telemetry.DecisionSpans() if telemetry.tracing_on() else None

    @_rpc
    async def SelectServer(self, request: _pb.SelectServerRequest, context: Any) -> _pb.SelectServerResponse:
        return self._select(request, self._callers.of(context))

    def _select(self, request: _pb.SelectServerRequest, caller: str) -> _pb.SelectServerResponse:
        pool = check_name(request.pool, "pool")
        exclude = convert.exclusions(request.exclude_server_ids) if request.exclude_server_ids else ()
        choice = self._core.select(pool, exclude, caller)
        telemetry.record_selection(self._core, pool, choice)
        if self._spans is not None:
            self._spans.remember(choice.decision_id)
        return _pb.SelectServerResponse(
            decision_id=choice.decision_id,
            server_id=choice.server.id,
            address=choice.server.address,
            strategy=choice.strategy,
            explored=choice.explored,
            decision_ttl_ms=self._ttl_ms,
        )

    @_rpc
    async def ReportOutcome(self, request: _pb.ReportOutcomeRequest, context: Any) -> _pb.ReportOutcomeResponse:
        return self._report_outcome(request, self._callers.of(context))

    def _report_outcome(self, request: _pb.ReportOutcomeRequest, caller: str) -> _pb.ReportOutcomeResponse:
        instance, in_flight = convert.local_in_flight(request)
        outcomes = convert.outcomes(request.outcomes, may_be_empty=bool(in_flight))
        if in_flight:  # counts first: they are checked, and an unknown outcome must not lose them
            self._core.report_in_flight(in_flight, caller, instance, request.in_flight_seq)
        if not outcomes:
            return _pb.ReportOutcomeResponse()
        if self._spans is not None:
            self._spans.link((o.decision_id for o in outcomes if o.local is None), "decision")
        applied, unknown, unknown_local = self._core.report_outcomes(outcomes, caller)
        return _pb.ReportOutcomeResponse(applied=applied, unknown_decision_ids=unknown, unknown_local=unknown_local)

    @_rpc
    async def ReportLoad(self, request: _pb.ReportLoadRequest, context: Any) -> _pb.ReportLoadResponse:
        applied = self._core.report_load(convert.load_reports(request.reports))
        return _pb.ReportLoadResponse(applied=applied, received_at=convert.timestamp(self._core.clock.wall()))

    @_rpc
    async def GetLoadStatus(self, request: _pb.GetLoadStatusRequest, context: Any) -> _pb.GetLoadStatusResponse:
        pool = check_name(request.pool, "pool") if request.pool else ""
        status, next_token = await status_page(self._core, pool, request.page_size, request.page_token)
        return _pb.GetLoadStatusResponse(status=status, next_page_token=next_token)

    @_rpc
    async def GetRecommendations(
        self, request: _pb.GetRecommendationsRequest, context: Any
    ) -> _pb.GetRecommendationsResponse:
        if self._planner is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "capacity planning is off: set [planning] enabled = true"
            )
        assert self._planner is not None
        plans = self._planner.answer(list(request.pools), float(request.horizon_s), request.include_operations)
        return recommendations_response(plans, self._planner.settings.interval_s)

    @_rpc
    async def AcquireSlot(self, request: _pb.AcquireSlotRequest, context: Any) -> _pb.AcquireSlotResponse:
        caller, time_left = self._callers.of(context), context.time_remaining()
        return await self._acquire(request, caller, time_left, lambda: _past_deadline(context))

    async def _acquire(
        self, request: _pb.AcquireSlotRequest, caller: str, time_left_s: float | None, expired: Callable[[], bool]
    ) -> _pb.AcquireSlotResponse:
        answer = await self._core.acquire(convert.slot_request(request, caller), time_left_s)
        if isinstance(answer, Granted) and expired():
            # The caller has given up (its deadline passed while the call waited for the
            # event loop): the grant would never reach it, so the slot goes straight back
            # and the (undeliverable) answer is a denial.
            self._core.give_back(answer.lease)
            answer = Denied(
                Denial.QUEUE_TIMEOUT,
                "the call's deadline passed before the grant could be answered",
                MIN_RETRY_AFTER_S,
                answer.queue_wait_s,
            )
        response = convert.acquire_response(answer, self._core, caller)
        telemetry.record_slot(request.pool, response)
        if self._spans is not None and response.granted:
            self._spans.remember(response.lease.lease_id)
        return response

    @_rpc
    async def RenewLease(self, request: _pb.RenewLeaseRequest, context: Any) -> _pb.RenewLeaseResponse:
        ttl_ms = check_ttl_ms(request.ttl_ms, "ttl_ms")
        lease = await self._core.renew_lease(
            check_name(request.lease_id, "lease_id"), ttl_ms / 1000.0 or None, self._callers.of(context)
        )
        clock = self._core.clock
        return _pb.RenewLeaseResponse(lease=convert.lease(lease, clock.monotonic(), clock.wall()))

    @_rpc
    async def ReleaseSlot(self, request: _pb.ReleaseSlotRequest, context: Any) -> _pb.ReleaseSlotResponse:
        return await self._release(request, self._callers.of(context))

    async def _release(self, request: _pb.ReleaseSlotRequest, caller: str) -> _pb.ReleaseSlotResponse:
        latency = check_range(request.latency_ms, "latency_ms", 0.0, convert.MAX_LATENCY_MS)
        abandoned = check_abandoned(request)
        if not request.lease_id and (request.request_id or abandoned):  # end AcquireSlots by request id
            pool = check_name(request.pool, "pool")
            released = False
            if request.request_id:
                released = await self._core.release_request(
                    pool, check_name(request.request_id, "request_id"), request.success, latency, caller
                )
            ended = await self._core.abandon_requests(pool, abandoned, caller) if abandoned else 0
            already = bool(request.request_id) and not released
            return _pb.ReleaseSlotResponse(released=released, already_released=already, abandoned=ended)
        lease_id = check_name(request.lease_id, "lease_id")
        if request.request_id:
            check_name(request.request_id, "request_id")
        if request.pool or abandoned:
            check_name(request.pool, "pool")
        if self._spans is not None:
            self._spans.link((lease_id,), "lease")
        released = await self._core.release_slot(lease_id, request.success, latency, caller)
        ended = await self._core.abandon_requests(request.pool, abandoned, caller) if abandoned else 0
        return _pb.ReleaseSlotResponse(released=released, already_released=not released, abandoned=ended)

    @_rpc
    async def AcquireAllotment(
        self, request: _pb.AcquireAllotmentRequest, context: Any
    ) -> _pb.AcquireAllotmentResponse:
        pool = check_name(request.pool, "pool")
        slots = check_count(request.slots, "slots", 1, MAX_ALLOTMENT_SLOTS)
        ttl_ms = check_ttl_ms(request.ttl_ms, "ttl_ms")
        record, retry_after_s = await self._allotments.acquire(
            pool, slots, ttl_ms / 1000.0 or None, self._callers.of(context)
        )
        if record is None:
            return _pb.AcquireAllotmentResponse(
                allotment=_pb.Allotment(pool=pool), retry_after_ms=max(1, math.ceil(retry_after_s * 1000))
            )
        return _pb.AcquireAllotmentResponse(allotment=self._allotment(record))

    @_rpc
    async def RenewAllotment(self, request: _pb.RenewAllotmentRequest, context: Any) -> _pb.RenewAllotmentResponse:
        allotment_id = check_name(request.allotment_id, "allotment_id")
        ttl_ms = check_ttl_ms(request.ttl_ms, "ttl_ms")
        slots = check_count(request.slots, "slots", 0, MAX_ALLOTMENT_SLOTS)
        record = await self._allotments.renew(allotment_id, ttl_ms / 1000.0 or None, slots, self._callers.of(context))
        return _pb.RenewAllotmentResponse(allotment=self._allotment(record))

    @_rpc
    async def ReleaseAllotment(
        self, request: _pb.ReleaseAllotmentRequest, context: Any
    ) -> _pb.ReleaseAllotmentResponse:
        allotment_id = check_name(request.allotment_id, "allotment_id")
        released = await self._allotments.release(allotment_id, self._callers.of(context))
        return _pb.ReleaseAllotmentResponse(released=released)

    def _allotment(self, record: AllotmentRecord) -> _pb.Allotment:
        clock = self._core.clock
        now = clock.monotonic()
        return _pb.Allotment(
            allotment_id=record.id,
            pool=record.pool,
            slots=record.slots,
            ttl_ms=round(record.ttl_s * 1000),
            expires_at=convert.timestamp(clock.wall() + expires_in_ms(record, now) / 1000.0),
        )

    @_rpc
    async def GetBatchSize(self, request: _pb.GetBatchSizeRequest, context: Any) -> _pb.GetBatchSizeResponse:
        answer = self._core.batch_size(check_name(request.operation, "operation"))
        telemetry.record_batch_size(request.operation, answer)
        return convert.batch_size_response(answer, self._core.new_decision_id(self._callers.of(context)))

    @_rpc
    async def ReportBatch(self, request: _pb.ReportBatchRequest, context: Any) -> _pb.ReportBatchResponse:
        return _pb.ReportBatchResponse(applied=self._core.report_batches(convert.batch_reports(request.reports)))

    async def WatchLoadStatus(self, request: _pb.WatchLoadStatusRequest | MalformedRequest, context: Any) -> Any:
        try:
            if type(request) is MalformedRequest:
                raise request.error()
            pool = check_name(request.pool, "pool") if request.pool else ""
            interval_s = check_interval_ms(request.interval_ms)
            if pool:
                self._core.pool(pool)
            # Each item is a BytesValue whose bytes are the shared serialized snapshot; the
            # response serializer writes them as they are, which is WatchLoadStatusResponse's
            # wire form (field 1, length-delimited), so N streams cost one serialization.
            async for item in self._watchers.stream(self._core, pool, interval_s, caller=self._callers.of(context)):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - _abort maps every error to a status; unknown ones to INTERNAL
            await _abort(context, exc, "WatchLoadStatus")

    async def WatchRoutes(self, request: _pb.WatchRoutesRequest | MalformedRequest, context: Any) -> Any:
        try:
            if type(request) is MalformedRequest:
                raise request.error()
            pools = check_pools(list(request.pools))
            instance = convert.client_instance(request.client_instance) if request.client_instance else ""
            caller = self._callers.of(context)
            # Items are BytesValues holding a serialized RouteTable: WatchRoutesResponse's wire form.
            async for item in self._routes.stream(self._core, pools, caller=caller, instance=instance):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - _abort maps every error to a status; unknown ones to INTERNAL
            await _abort(context, exc, "WatchRoutes")

    async def Decide(self, requests: AsyncIterator[Any], context: Any) -> None:  # type: ignore[override]  # answers by context.write (grpc.aio allows it); the stub types only a returned iterator
        """The Decide stream: each call handled as its unary twin and answered by id.

        The calls of one message that need no wait (select, release, outcome reports)
        are answered in order, together in one message; each AcquireSlot runs as its
        own task (it may wait in the queue) and answers in a message of its own. Writes
        go one at a time under a lock. When the client ends its side, the acquires still
        waiting are answered before the stream ends.
        """
        caller = self._callers.of(context)
        write = asyncio.Lock()
        waiting: set[asyncio.Task[None]] = set()

        async def send(answers: list[_pb.DecideAnswer]) -> None:
            async with write:
                await context.write(_pb.DecideResponse(answers=answers))

        async def acquire(call: _pb.DecideCall) -> None:
            time_left = call.timeout_ms / 1000.0 if call.timeout_ms else None
            deadline = None if time_left is None else self._core.clock.monotonic() + time_left
            expired = (lambda: False) if deadline is None else (lambda: self._core.clock.monotonic() > deadline)
            try:
                answer = _pb.DecideAnswer(
                    id=call.id, acquire=await self._acquire(call.acquire, caller, time_left, expired)
                )
            except Exception as exc:  # noqa: BLE001 - answered as this call's error, the stream goes on
                answer = _pb.DecideAnswer(id=call.id, error=_decide_error(exc, "Decide/acquire"))
            await send([answer])

        try:
            async for message in requests:
                if type(message) is MalformedRequest:
                    raise message.error()
                calls = message.calls
                if not 1 <= len(calls) <= MAX_DECIDE_CALLS:
                    raise InvalidArgument("calls", f"must hold 1-{MAX_DECIDE_CALLS} requests, got {len(calls)}")
                answers = []
                for index, call in enumerate(calls):
                    kind = call.WhichOneof("request")
                    if kind == "acquire":
                        if len(waiting) >= MAX_DECIDE_IN_FLIGHT:
                            raise ResourceExhausted(
                                f"requests in flight: {len(waiting)} AcquireSlot requests of this Decide stream "
                                f"await their answers, at most {MAX_DECIDE_IN_FLIGHT}; wait for answers first"
                            )
                        task = asyncio.get_running_loop().create_task(acquire(call))
                        waiting.add(task)
                        task.add_done_callback(waiting.discard)
                        continue
                    if kind is None:
                        raise InvalidArgument(
                            f"calls[{index}]", "names no request: set one of select, acquire, release, report_outcome"
                        )
                    answers.append(await self._decide_call(call, kind, caller))
                if answers:
                    await send(answers)
            if waiting:  # the client is done sending: answer what still waits, then end
                await asyncio.gather(*waiting)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - _abort maps every error to a status; unknown ones to INTERNAL
            await _abort(context, exc, "Decide")
        finally:
            for task in list(waiting):  # the call ended (cancelled or broken): waits end with it
                task.cancel()

    async def _decide_call(self, call: _pb.DecideCall, kind: str, caller: str) -> _pb.DecideAnswer:
        """The answer to one call that needs no wait: its unary twin's answer, or its error."""
        try:
            if kind == "select":
                return _pb.DecideAnswer(id=call.id, select=self._select(call.select, caller))
            if kind == "release":
                return _pb.DecideAnswer(id=call.id, release=await self._release(call.release, caller))
            return _pb.DecideAnswer(id=call.id, report_outcome=self._report_outcome(call.report_outcome, caller))
        except Exception as exc:  # noqa: BLE001 - answered as this call's error, the stream goes on
            return _pb.DecideAnswer(id=call.id, error=_decide_error(exc, "Decide"))


class ConfigChanges(Protocol):
    """Told of each configuration change AdminService made, after the core took it; it
    stores the change where it outlives the process (and other replicas see it). Raises
    Unavailable when the change could not be stored."""

    async def pool_changed(self, name: str) -> None: ...

    async def pool_deleted(self, name: str) -> None: ...

    async def operation_changed(self, name: str) -> None: ...

    async def operation_deleted(self, name: str) -> None: ...


class _Unrecorded:
    """The memory store's recorder: changes live as long as the process."""

    async def pool_changed(self, name: str) -> None:
        return None

    async def pool_deleted(self, name: str) -> None:
        return None

    async def operation_changed(self, name: str) -> None:
        return None

    async def operation_deleted(self, name: str) -> None:
        return None


class AdminServicer(_admin_grpc.AdminServiceServicer):
    """loadwarden.v1.AdminService over a DecisionCore; ``changes`` records what it changed."""

    def __init__(self, core: DecisionCore, changes: ConfigChanges | None = None) -> None:
        self._core = core
        self._changes: ConfigChanges = changes if changes is not None else _Unrecorded()

    @_rpc
    async def ConfigurePool(self, request: _admin.ConfigurePoolRequest, context: Any) -> _admin.ConfigurePoolResponse:
        settings, servers = convert.pool_config(request.pool, self._core.limits.max_servers_per_pool)
        pool, created = self._core.configure_pool(settings, servers)
        await self._changes.pool_changed(pool.name)
        clock = self._core.clock
        return _admin.ConfigurePoolResponse(
            pool=convert.pool_status(pool, clock.monotonic(), clock.wall()), created=created
        )

    @_rpc
    async def DeletePool(self, request: _admin.DeletePoolRequest, context: Any) -> _admin.DeletePoolResponse:
        name = check_name(request.pool, "pool")
        self._core.delete_pool(name)
        await self._changes.pool_deleted(name)
        return _admin.DeletePoolResponse()

    @_rpc
    async def RegisterServer(
        self, request: _admin.RegisterServerRequest, context: Any
    ) -> _admin.RegisterServerResponse:
        pool_name = check_name(request.pool, "pool")
        server, created = self._core.register_server(pool_name, convert.server_spec(request.server))
        await self._changes.pool_changed(pool_name)
        pool = self._core.pool(pool_name)
        status = convert.server_status(pool, server, self._core.clock.monotonic(), self._core.clock.wall())
        return _admin.RegisterServerResponse(server=status, created=created)

    @_rpc
    async def DeregisterServer(
        self, request: _admin.DeregisterServerRequest, context: Any
    ) -> _admin.DeregisterServerResponse:
        pool_name = check_name(request.pool, "pool")
        self._core.deregister_server(pool_name, check_name(request.server_id, "server_id"))
        await self._changes.pool_changed(pool_name)
        return _admin.DeregisterServerResponse()

    @_rpc
    async def DrainServer(self, request: _admin.DrainServerRequest, context: Any) -> _admin.DrainServerResponse:
        pool_name = check_name(request.pool, "pool")
        server_id = check_name(request.server_id, "server_id")
        if request.state not in (_admin.DRAIN_STATE_DRAINING, _admin.DRAIN_STATE_SERVING):
            raise InvalidArgument(
                "state", f"must be DRAIN_STATE_DRAINING or DRAIN_STATE_SERVING, got {_drain_state_name(request.state)}"
            )
        server = self._core.drain_server(pool_name, server_id, request.state == _admin.DRAIN_STATE_DRAINING)
        await self._changes.pool_changed(pool_name)
        clock = self._core.clock
        status = convert.server_status(self._core.pool(pool_name), server, clock.monotonic(), clock.wall())
        return _admin.DrainServerResponse(server=status)

    @_rpc
    async def ConfigureOperation(
        self, request: _admin.ConfigureOperationRequest, context: Any
    ) -> _admin.ConfigureOperationResponse:
        operation, created = self._core.configure_operation(convert.operation_config(request.operation))
        await self._changes.operation_changed(operation.settings.name)
        return _admin.ConfigureOperationResponse(operation=convert.operation_status(operation), created=created)

    @_rpc
    async def DeleteOperation(
        self, request: _admin.DeleteOperationRequest, context: Any
    ) -> _admin.DeleteOperationResponse:
        name = check_name(request.operation, "operation")
        self._core.delete_operation(name)
        await self._changes.operation_deleted(name)
        return _admin.DeleteOperationResponse()


def _handlers(servicer: object, service: ServiceDescriptor) -> dict[str, grpc.RpcMethodHandler]:
    """``service``'s method handlers over ``servicer``, with deserializers that never raise."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        if method.client_streaming and not method.server_streaming:
            raise TypeError(f"{service.full_name}/{method.name}: client streaming alone is not supported here")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        if method.client_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_tolerant_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    return handlers


def add_to_server(
    server: grpc.aio.Server,
    core: DecisionCore,
    callers: Callers | None = None,
    changes: ConfigChanges | None = None,
    planner: Planner | None = None,
) -> None:
    """Registers DecisionService and AdminService over ``core`` on ``server``.

    ``callers`` names each RPC's caller (the owner of what it makes); every caller is
    the anonymous one when None. ``changes`` records AdminService's configuration
    changes (nothing records them when None). ``planner`` answers GetRecommendations
    (FAILED_PRECONDITION when None: planning is off).

    Same as the generated ``add_*Servicer_to_server`` functions, except that an
    undecodable request is answered INVALID_ARGUMENT instead of gRPC's UNKNOWN.
    """
    services = (
        (DecisionServicer(core, callers, planner), _pb.DESCRIPTOR.services_by_name["DecisionService"]),
        (AdminServicer(core, changes), _admin.DESCRIPTOR.services_by_name["AdminService"]),
    )
    for servicer, service in services:
        handlers = _handlers(servicer, service)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
        server.add_registered_method_handlers(service.full_name, handlers)


def server_options(limits: CoreLimits) -> tuple[tuple[str, int], ...]:
    """gRPC server options enforcing ``limits``: the request size cap (``limits.max_message_bytes``)."""
    return (("grpc.max_receive_message_length", limits.max_message_bytes),)


def _drain_state_name(value: int) -> str:
    """The enum name of ``value``, or the number when no name has it (sent by a newer contract)."""
    try:
        return _admin.DrainState.Name(value)
    except ValueError:
        return str(value)
