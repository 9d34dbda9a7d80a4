"""What the sync and async admission interceptors share (see `loadwarden.sdk.integrations.grpc_server`)."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

import grpc

from loadwarden.sdk._async.client import AsyncClient
from loadwarden.sdk._errors import RETRY_AFTER_METADATA_KEY, ResourceExhaustedError, SlotDenied
from loadwarden.sdk._reporter import BackendReporter
from loadwarden.sdk._sync.client import Client

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


async def abort_denied_async(
    context: grpc.aio.ServicerContext[Any, Any], details: str, denied: SlotDenied | ResourceExhaustedError
) -> None:
    """Ends the RPC with RESOURCE_EXHAUSTED, `details` and the retry-after trailing metadata."""
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        details,
        trailing_metadata=((RETRY_AFTER_METADATA_KEY, _retry_after_ms(denied)),),
    )


def abort_denied(context: grpc.ServicerContext, details: str, denied: SlotDenied | ResourceExhaustedError) -> None:
    """`abort_denied_async` for a sync context, whose `abort` takes no trailing metadata."""
    context.set_trailing_metadata(((RETRY_AFTER_METADATA_KEY, _retry_after_ms(denied)),))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)


def streams_async(behavior: Any) -> bool:
    """Whether a grpc.aio streaming handler is an async generator (else a coroutine that writes with context.write)."""
    return inspect.isasyncgenfunction(behavior) or (
        callable(behavior) and inspect.isasyncgenfunction(behavior.__call__)
    )


def streams(behavior: Any) -> bool:
    """`streams_async` for a sync handler: a sync streaming handler is always a generator."""
    return True
