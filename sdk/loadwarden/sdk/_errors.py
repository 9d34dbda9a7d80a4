"""Typed SDK errors: one table from gRPC status codes to exception classes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar, Self

import grpc

# Trailing metadata key carrying a RESOURCE_EXHAUSTED retry-after hint, milliseconds.
RETRY_AFTER_METADATA_KEY = "loadwarden-retry-after-ms"
# Trailing metadata key the service sets on an UNAVAILABLE it decided itself
# (e.g. "no-eligible-server"): the service answered, so it is not a transport failure.
UNAVAILABLE_REASON_METADATA_KEY = "loadwarden-unavailable-reason"


class LoadwardenError(Exception):
    """Base class of every error the SDK raises for a failed call.

    Attributes:
        code: The gRPC status code the call ended with.
        details: The service's explanation; names the field for INVALID_ARGUMENT.
    """

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", *, code: grpc.StatusCode | None = None) -> None:
        self.code: grpc.StatusCode = type(self).default_code if code is None else code
        self.details = details
        super().__init__(f"{self.code.name}: {details}" if details else self.code.name)

    @classmethod
    def _from_rpc(
        cls, code: grpc.StatusCode, details: str, trailing_metadata: Iterable[tuple[str, str | bytes]]
    ) -> Self:
        return cls(details, code=code)


class InvalidArgumentError(LoadwardenError):
    """The request was malformed; `details` names the offending field."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(LoadwardenError):
    """The pool, server, lease, operation or decision is not known to the service."""

    default_code = grpc.StatusCode.NOT_FOUND


class ResourceExhaustedError(LoadwardenError):
    """A queue is full or a rate is exhausted.

    Attributes:
        retry_after_s: How long the service asks the caller to wait before trying
            again, seconds; None when the service sent no hint.
    """

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(details, code=code)
        self.retry_after_s = retry_after_s

    @classmethod
    def _from_rpc(
        cls, code: grpc.StatusCode, details: str, trailing_metadata: Iterable[tuple[str, str | bytes]]
    ) -> Self:
        return cls(details, code=code, retry_after_s=_retry_after_s(trailing_metadata))


class UnavailableError(LoadwardenError):
    """The service is unreachable, or the pool has no eligible server right now.

    Attributes:
        reason: Set when the service itself answered UNAVAILABLE, e.g.
            "no-eligible-server"; None when the service could not be reached.
    """

    default_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, details: str = "", *, code: grpc.StatusCode | None = None, reason: str | None = None) -> None:
        super().__init__(details, code=code)
        self.reason = reason

    @classmethod
    def _from_rpc(
        cls, code: grpc.StatusCode, details: str, trailing_metadata: Iterable[tuple[str, str | bytes]]
    ) -> Self:
        reason = None
        for key, value in trailing_metadata:
            if key == UNAVAILABLE_REASON_METADATA_KEY:
                reason = value.decode() if isinstance(value, bytes) else value
        return cls(details, code=code, reason=reason)


class DeadlineExceededError(LoadwardenError):
    """The call did not finish within its deadline."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(LoadwardenError):
    """The call carried no valid credentials."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(LoadwardenError):
    """The credentials do not allow this call."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class UnimplementedError(LoadwardenError):
    """The service does not implement this method (e.g. an older service version)."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class RpcCancelledError(LoadwardenError):
    """The call was cancelled before it finished (e.g. its channel was closed)."""

    default_code = grpc.StatusCode.CANCELLED


class ServiceError(LoadwardenError):
    """The service failed in a way the caller cannot fix (INTERNAL, UNKNOWN and the rest)."""

    default_code = grpc.StatusCode.INTERNAL


class LeaseLostError(LoadwardenError):
    """A lease held by `slot()` stopped being this client's before the block ended.

    Raised at the slot's exit when the block itself did not raise, and passed to
    `slot(on_lost=...)` when it happens. Not a failed call, so never a transport
    failure: its code is NOT_FOUND (the service no longer holds the lease for
    this client) whatever ended it; `__cause__` is the renewal error that did.

    Attributes:
        lease_id: The lost lease.
        pool: Its pool.
        why: "reclaimed" (a renewal was answered NOT_FOUND: the service reclaimed
            the lease, or it was never this caller's), "expired" (no renewal
            succeeded within the lease's TTL: the service was unreachable) or
            "renewal_refused" (a renewal failed with another error).
    """

    default_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, details: str = "", *, lease_id: str = "", pool: str = "", why: str = "reclaimed") -> None:
        super().__init__(details)
        self.lease_id = lease_id
        self.pool = pool
        self.why = why

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.details,), self.__dict__


class SlotDenied(Exception):
    """The service answered an AcquireSlot and did not grant the slot.

    A denial is the service's decision, not a failed call: it is not a
    `LoadwardenError` and never counts as a transport failure (a circuit breaker
    ignores it). A rate-limited or queue-full request is different: the call fails
    with `ResourceExhaustedError`.

    Attributes:
        reason: The service's human-readable explanation.
        denial: Why, as the contract's `DenialReason` name without its prefix:
            "AT_CAPACITY" (full, and the request did not wait), "QUEUE_TIMEOUT"
            (waited its whole wait time), "NO_ELIGIBLE_SERVER" (`select_server`
            and no server can take it); "UNSPECIFIED" when the service sent none
            this SDK version knows.
        retry_after_s: How long the service suggests waiting before trying again,
            seconds; None when it sent no hint.
        pool: Pool the slot was asked for.
        decision_id: Id of the admission decision, for logs and traces.
        queue_wait_s: How long the request waited in the queue, seconds.
    """

    def __init__(
        self,
        reason: str = "",
        *,
        denial: str = "UNSPECIFIED",
        retry_after_s: float | None = None,
        pool: str = "",
        decision_id: str = "",
        queue_wait_s: float = 0.0,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.denial = denial
        self.retry_after_s = retry_after_s
        self.pool = pool
        self.decision_id = decision_id
        self.queue_wait_s = queue_wait_s

    def __str__(self) -> str:
        text = f"slot denied in pool {self.pool!r}: {self.denial}"
        if self.reason:
            text += f": {self.reason}"
        if self.retry_after_s is not None:
            text += f" (retry after {self.retry_after_s:g} s)"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields do not survive Exception's default pickling (args only).
        return type(self), (self.reason,), self.__dict__


# The one mapping from status code to error class; codes not listed map to ServiceError.
# (LeaseLostError is raised by the SDK itself, never mapped from a call's status.)
_ERROR_BY_CODE: dict[grpc.StatusCode, type[LoadwardenError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.CANCELLED: RpcCancelledError,
}

# Codes that say the call did not reach a working service: only these trip a breaker.
_TRANSPORT_FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def error_from_rpc(err: grpc.RpcError) -> LoadwardenError:
    """Translates a failed gRPC call (sync or grpc.aio) into the SDK's typed error.

    Args:
        err: The error raised by the call; `grpc.aio.AioRpcError` is a `grpc.RpcError`.

    Returns:
        An instance of the class `_ERROR_BY_CODE` names for the call's status code.
    """
    code = _call_attr(err, "code") or grpc.StatusCode.UNKNOWN
    details = _call_attr(err, "details") or ""
    trailing_metadata = _call_attr(err, "trailing_metadata") or ()
    error_class = _ERROR_BY_CODE.get(code, ServiceError)
    return error_class._from_rpc(code, details, trailing_metadata)  # noqa: SLF001 - this module's own constructor hook


def is_transport_failure(exc: BaseException) -> bool:
    """Tells whether an error means the service could not be reached in time.

    Business answers (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) and a
    denied slot (`SlotDenied`) are not transport failures and must not open a
    circuit breaker.
    """
    if isinstance(exc, UnavailableError) and exc.reason is not None:
        return False  # the service answered: a decision, not a transport failure
    return isinstance(exc, LoadwardenError) and exc.code in _TRANSPORT_FAILURE_CODES


def _call_attr(err: grpc.RpcError, name: str) -> Any:
    # A bare grpc.RpcError (raised by some interceptors) has no call accessors.
    accessor = getattr(err, name, None)
    return accessor() if callable(accessor) else None


def _retry_after_s(trailing_metadata: Iterable[tuple[str, str | bytes]]) -> float | None:
    for key, value in trailing_metadata:
        if key != RETRY_AFTER_METADATA_KEY:
            continue
        try:
            retry_after_ms = float(value.decode() if isinstance(value, bytes) else value)
        except (UnicodeDecodeError, ValueError):
            return None
        if not math.isfinite(retry_after_ms) or retry_after_ms < 0:
            return None
        return retry_after_ms / 1000.0
    return None
