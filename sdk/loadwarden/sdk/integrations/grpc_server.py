"""gRPC server interceptors that admit each incoming RPC through a loadwarden slot.

The idea of Netflix concurrency-limits' `ConcurrencyLimitServerInterceptor`, with
the limit held by the Decision service: per RPC, acquire a slot in the method's
pool, run the handler, release the slot with the handler's latency and success.
A denied RPC ends with RESOURCE_EXHAUSTED and the trailing metadata
`loadwarden-retry-after-ms`, the key the Decision service itself uses.

All four handler kinds are admitted. A unary response holds the slot while the
handler runs; a streamed response holds it until the stream ends (exhausted,
raised, or cancelled by the caller). A handler is "successful" unless it raised,
or ended (by `abort` or `set_code`) with a code in `SERVER_FAULT_CODES`; a client
error such as INVALID_ARGUMENT is the backend working as intended.

While the Decision service is unreachable the client's `slot_fallback` decides:
"local_limit" and "fail_open" serve with local slots, "fail_closed" answers
RESOURCE_EXHAUSTED. Any other failure to acquire (unknown pool, a service error)
is logged and follows the same rule: served unadmitted, or RESOURCE_EXHAUSTED
under "fail_closed". No control-plane error ever reaches the handler or becomes
INTERNAL/UNKNOWN for the caller.

Example:
    client = AsyncClient("127.0.0.1:50051")
    reporter = BackendReporter(client, "ml", "ml-1")
    server = grpc.aio.server(interceptors=[AsyncAdmissionInterceptor(
        client, lambda method: "ml" if method.startswith("/ml.v1.") else None,
        wait_s=0.5, reporter=reporter)])
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

import grpc

from loadwarden.sdk._async_client import AsyncClient
from loadwarden.sdk._client import Client
from loadwarden.sdk._errors import RETRY_AFTER_METADATA_KEY, LoadwardenError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk._reporter import BackendReporter

__all__ = [
    "SERVER_FAULT_CODES",
    "AdmissionInterceptor",
    "AsyncAdmissionInterceptor",
    "priority_from_metadata",
]

_log = logging.getLogger("loadwarden.sdk.grpc_server")

Metadata = Sequence[tuple[str, str | bytes]]
PoolOf = Callable[[str], str | None]
PriorityOf = Callable[[Metadata], int]
# A string: grpc.RpcMethodHandler is generic only in its stubs.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
AnyClient = TypeVar("AnyClient", Client, AsyncClient)

MAX_PRIORITY = 9
DEFAULT_RETRY_AFTER_S = 1.0  # retry-after sent when a denial carries no hint, seconds

# Codes that mean the backend failed the call, not the caller: they count as
# failures in the release and the reporter. CANCELLED and client errors do not.
SERVER_FAULT_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
    }
)


def priority_from_metadata(key: str = "loadwarden-priority", default: int = 0) -> PriorityOf:
    """A priority function reading an integer 0-9 from request metadata `key`.

    A missing or malformed value gives `default`; values are clamped into 0-9.
    """
    key = key.lower()

    def priority(metadata: Metadata) -> int:
        for k, v in metadata:
            if k == key:
                try:
                    return int(v.decode() if isinstance(v, bytes) else v)
                except ValueError:
                    return default
        return default

    return priority


class _HandlerFailed(Exception):
    """Raised into a `slot` block so its release reports success=False; never escapes."""


class _Outcome:
    """How one handler run ended: its exception (re-raised later) and whether it failed."""

    __slots__ = ("exc", "failed")

    def __init__(self) -> None:
        self.exc: BaseException | None = None
        self.failed = False

    def settle(self, context: Any, exc: Exception | None) -> None:
        self.exc = exc
        code = _code_of(context)
        if exc is None:
            self.failed = code in SERVER_FAULT_CODES
        else:  # an abort leaves its code on the context; any other raise is UNKNOWN
            self.failed = code is None or code == grpc.StatusCode.OK or code in SERVER_FAULT_CODES


def _code_of(context: Any) -> grpc.StatusCode | None:
    try:
        code: grpc.StatusCode | int | None = context.code()
    except Exception:  # noqa: BLE001 - a context without code() counts as unset
        return None
    if isinstance(code, int) and not isinstance(code, grpc.StatusCode):  # grpc.aio may answer the raw value
        return next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return code


def _retry_after_ms(denied: SlotDenied | ResourceExhaustedError) -> str:
    hint = denied.retry_after_s
    if hint is None or not math.isfinite(hint) or hint <= 0:
        hint = DEFAULT_RETRY_AFTER_S
    return str(max(1, math.ceil(hint * 1000)))  # never early


def _denied_details(denied: SlotDenied | ResourceExhaustedError) -> str:
    return f"loadwarden: {denied}"


class _Admitter(Generic[AnyClient]):
    """Configuration and per-RPC choices shared by the sync and async interceptors."""

    def __init__(
        self,
        client: AnyClient,
        pool: PoolOf,
        priority: PriorityOf | None,
        wait_s: float,
        reporter: BackendReporter | None,
        lease_ttl_s: float | None,
    ) -> None:
        if not callable(pool):
            raise ValueError(f"pool must be a callable from the full method name to a pool name or None, got {pool!r}")
        if priority is not None and not callable(priority):
            raise ValueError(f"priority must be a callable from invocation metadata to 0-9, or None, got {priority!r}")
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not 0 <= wait_s < math.inf:
            raise ValueError(f"wait_s must be a finite number of seconds >= 0, got {wait_s!r}")
        if lease_ttl_s is not None and (
            isinstance(lease_ttl_s, bool) or not isinstance(lease_ttl_s, int | float) or not 0 < lease_ttl_s < math.inf
        ):
            raise ValueError(f"lease_ttl_s must be a positive number of seconds or None, got {lease_ttl_s!r}")
        if reporter is not None and not isinstance(reporter, BackendReporter):
            raise ValueError(f"reporter must be a BackendReporter or None, got {reporter!r}")
        self.client: AnyClient = client
        self.pool_of = pool
        self.priority_of = priority
        self.wait_s = float(wait_s)
        self.reporter = reporter
        self.lease_ttl_s = lease_ttl_s
        # The client's fallback also decides unexpected acquire failures (see module docstring).
        self.fail_closed = getattr(getattr(client, "_local_slots", None), "policy", "") == "fail_closed"

    def pool(self, method: str) -> str | None:
        try:
            chosen = self.pool_of(method)
        except Exception:  # noqa: BLE001 - a broken pool function must not break the backend
            _log.exception(
                "pool function %r failed for %s; the call is not admitted through loadwarden", self.pool_of, method
            )
            return None
        if chosen is not None and (not isinstance(chosen, str) or not chosen):
            _log.error(
                "pool function %r returned %r for %s, not a pool name or None; not admitted",
                self.pool_of,
                chosen,
                method,
            )
            return None
        return chosen

    def priority(self, metadata: Metadata | None) -> int:
        if self.priority_of is None:
            return 0
        try:
            value = self.priority_of(tuple(metadata or ()))
        except Exception:  # noqa: BLE001 - a broken priority function must not break the backend
            _log.exception("priority function %r failed; using priority 0", self.priority_of)
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            _log.error("priority function %r returned %r, not an int; using priority 0", self.priority_of, value)
            return 0
        return min(max(value, 0), MAX_PRIORITY)

    def slot_options(self, priority: int) -> dict[str, Any]:
        return {"priority": priority, "wait_s": self.wait_s, "lease_ttl_s": self.lease_ttl_s}

    def unexpected(self, pool: str, method: str, err: Exception) -> bool:
        """Logs an acquire failure that is not a denial; True when the RPC is to be rejected."""
        _log.warning(
            "loadwarden could not admit %s in pool %r (%s); %s",
            method,
            pool,
            err,
            "rejecting (fail_closed)" if self.fail_closed else "serving it unadmitted",
        )
        return self.fail_closed


def _handler_factory(handler: Handler) -> tuple[Callable[..., Handler], Any, str]:
    """(the factory of `handler`'s kind, its behaviour, its kind)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, handler.unary_unary, "unary_unary"
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream, "unary_stream"
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary, "stream_unary"
    return grpc.stream_stream_rpc_method_handler, handler.stream_stream, "stream_stream"


def _rebuild(handler: Handler, factory: Callable[..., Handler], behavior: Any) -> Handler:
    return factory(
        behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


# --------------------------------------------------------------------------- sync


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Admits RPCs of a `grpc.server` through loadwarden slots, with a sync `Client`.

    Args:
        client: Client to acquire and release slots with; the caller keeps
            ownership and closes it. Its `slot_fallback` applies while the
            Decision service is unreachable.
        pool: Full method name ("/pkg.Service/Method") -> pool name, or None to
            let the RPC through without a slot.
        priority: Invocation metadata -> priority 0-9 (clamped); 0 when None.
            See `priority_from_metadata`.
        wait_s: Longest an RPC waits in the pool's queue for a slot, seconds, >= 0.
        reporter: When given, each admitted handler runs inside `reporter.track()`,
            so the backend's in-flight count and latency are reported.
        lease_ttl_s: Lease time to live, seconds (renewed while the RPC runs);
            None means the pool's default.

    Raises:
        ValueError: An argument is out of range or of the wrong kind; the message names it.
    """

    def __init__(
        self,
        client: Client,
        pool: PoolOf,
        *,
        priority: PriorityOf | None = None,
        wait_s: float = 0.0,
        reporter: BackendReporter | None = None,
        lease_ttl_s: float | None = None,
    ) -> None:
        if not isinstance(client, Client):
            raise ValueError(f"client must be a loadwarden Client, got {client!r}")
        self._admit: _Admitter[Client] = _Admitter(client, pool, priority, wait_s, reporter, lease_ttl_s)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        pool = self._admit.pool(method)
        if pool is None:
            return handler
        priority = self._admit.priority(handler_call_details.invocation_metadata)
        factory, behavior, kind = _handler_factory(handler)
        if kind.endswith("_stream"):
            return _rebuild(handler, factory, self._streaming(behavior, method, pool, priority))
        return _rebuild(handler, factory, self._unary(behavior, method, pool, priority))

    @contextlib.contextmanager
    def _admitted(self, method: str, pool: str, priority: int, context: grpc.ServicerContext) -> Iterator[_Outcome]:
        """Holds a slot around the block; aborts the RPC when the slot is refused.

        The block settles the outcome instead of raising; the outcome's exception
        is re-raised once the slot is released.
        """
        admit, outcome, entered = self._admit, _Outcome(), False
        try:
            with admit.client.slot(pool, **admit.slot_options(priority)):
                entered = True
                with self._tracked(outcome):
                    yield outcome
                if outcome.failed:
                    raise _HandlerFailed
        except _HandlerFailed:
            pass
        except (SlotDenied, ResourceExhaustedError) as denied:
            if entered:
                raise
            context.set_trailing_metadata(((RETRY_AFTER_METADATA_KEY, _retry_after_ms(denied)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _denied_details(denied))
        except LoadwardenError as err:
            if entered:
                raise
            if admit.unexpected(pool, method, err):
                context.set_trailing_metadata(((RETRY_AFTER_METADATA_KEY, _retry_after_ms(SlotDenied())),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "loadwarden: the slot could not be acquired")
            with self._tracked(outcome):
                yield outcome
        if outcome.exc is not None:
            raise outcome.exc

    @contextlib.contextmanager
    def _tracked(self, outcome: _Outcome) -> Iterator[None]:
        reporter = self._admit.reporter
        if reporter is None:
            yield
            return
        with reporter.track() as tracked:
            yield
            if outcome.failed:
                tracked.fail()

    def _unary(self, behavior: Callable[..., Any], method: str, pool: str, priority: int) -> Callable[..., Any]:
        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            response = None
            with self._admitted(method, pool, priority, context) as outcome:
                try:
                    response = behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - settled, re-raised after the release
                    outcome.settle(context, exc)
                else:
                    outcome.settle(context, None)
            return response

        return admitted

    def _streaming(self, behavior: Callable[..., Any], method: str, pool: str, priority: int) -> Callable[..., Any]:
        def admitted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._admitted(method, pool, priority, context) as outcome:
                try:
                    yield from behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - settled, re-raised after the release
                    outcome.settle(context, exc)
                else:
                    outcome.settle(context, None)

        return admitted


# -------------------------------------------------------------------------- async


class AsyncAdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Admits RPCs of a `grpc.aio.server` through loadwarden slots, with an `AsyncClient`.

    Args:
        client: AsyncClient to acquire and release slots with, used from the
            server's event loop; the caller keeps ownership and closes it. Its
            `slot_fallback` applies while the Decision service is unreachable.
        pool: Full method name ("/pkg.Service/Method") -> pool name, or None to
            let the RPC through without a slot.
        priority: Invocation metadata -> priority 0-9 (clamped); 0 when None.
        wait_s: Longest an RPC waits in the pool's queue for a slot, seconds, >= 0.
        reporter: When given, each admitted handler runs inside
            `reporter.track_async()`.
        lease_ttl_s: Lease time to live, seconds; None means the pool's default.

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
        # A grpc.aio streaming handler is an async generator, or a coroutine that writes with context.write.
        if kind.endswith("_stream") and _is_async_gen(behavior):
            return _rebuild(handler, factory, self._streaming(behavior, method, pool, priority))
        return _rebuild(handler, factory, self._unary(behavior, method, pool, priority))

    @contextlib.asynccontextmanager
    async def _admitted(
        self, method: str, pool: str, priority: int, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[_Outcome]:
        """`AdmissionInterceptor._admitted` for asyncio."""
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
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                _denied_details(denied),
                trailing_metadata=((RETRY_AFTER_METADATA_KEY, _retry_after_ms(denied)),),
            )
        except LoadwardenError as err:
            if entered:
                raise
            if admit.unexpected(pool, method, err):
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "loadwarden: the slot could not be acquired",
                    trailing_metadata=((RETRY_AFTER_METADATA_KEY, _retry_after_ms(SlotDenied())),),
                )
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


def _is_async_gen(fn: Any) -> bool:
    return inspect.isasyncgenfunction(fn) or (callable(fn) and inspect.isasyncgenfunction(fn.__call__))
