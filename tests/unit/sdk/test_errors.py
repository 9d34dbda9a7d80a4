"""The status code -> error class table, retry-after hints and the breaker predicate."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import (
    DeadlineExceededError,
    InvalidArgumentError,
    LoadwardenError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RpcCancelledError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from loadwarden.sdk._errors import error_from_rpc, is_transport_failure


class FakeRpcError(grpc.RpcError):
    """A failed call as grpc raises it: status code, details, trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._trailing_metadata = code, details, trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing_metadata


EXPECTED_CLASS = {
    grpc.StatusCode.OK: ServiceError,
    grpc.StatusCode.CANCELLED: RpcCancelledError,
    grpc.StatusCode.UNKNOWN: ServiceError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ServiceError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: ServiceError,
    grpc.StatusCode.ABORTED: ServiceError,
    grpc.StatusCode.OUT_OF_RANGE: ServiceError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: ServiceError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: ServiceError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def test_every_status_code_has_an_expectation() -> None:
    assert set(EXPECTED_CLASS) == set(grpc.StatusCode)


@pytest.mark.parametrize(("code", "expected"), EXPECTED_CLASS.items(), ids=lambda v: getattr(v, "name", ""))
def test_status_code_maps_to_its_class(code: grpc.StatusCode, expected: type[LoadwardenError]) -> None:
    error = error_from_rpc(FakeRpcError(code, "pools[0].name: must not be empty"))

    assert type(error) is expected
    assert error.code is code
    assert error.details == "pools[0].name: must not be empty"
    assert code.name in str(error)


@pytest.mark.parametrize(
    ("trailing_metadata", "retry_after_s"),
    [
        ((("loadwarden-retry-after-ms", "1500"),), 1.5),
        ((("other", "x"), ("loadwarden-retry-after-ms", b"250")), 0.25),
        ((("loadwarden-retry-after-ms", "0"),), 0.0),
        ((), None),
        ((("loadwarden-retry-after-ms", "soon"),), None),
        ((("loadwarden-retry-after-ms", "-5"),), None),
        ((("loadwarden-retry-after-ms", "nan"),), None),
    ],
)
def test_resource_exhausted_reads_retry_after_from_trailing_metadata(
    trailing_metadata: tuple, retry_after_s: float | None
) -> None:
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", trailing_metadata))

    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_after_s == retry_after_s


def test_aio_errors_map_the_same_way() -> None:
    aio_error = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("loadwarden-retry-after-ms", "2000")),
        details="rate exhausted",
    )

    error = error_from_rpc(aio_error)

    assert isinstance(error, ResourceExhaustedError)
    assert (error.details, error.retry_after_s) == ("rate exhausted", 2.0)


def test_bare_rpc_error_without_status_is_a_service_error() -> None:
    error = error_from_rpc(grpc.RpcError())

    assert type(error) is ServiceError
    assert error.code is grpc.StatusCode.UNKNOWN
    assert error.details == ""


def test_errors_can_be_raised_directly_with_their_default_code() -> None:
    error = ResourceExhaustedError("slow down", retry_after_s=0.5)

    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retry_after_s == 0.5
    assert NotFoundError().code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda code: code.name)
def test_only_unavailable_and_deadline_exceeded_are_transport_failures(code: grpc.StatusCode) -> None:
    error = error_from_rpc(FakeRpcError(code))

    assert is_transport_failure(error) is (code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def test_non_sdk_exceptions_are_not_transport_failures() -> None:
    assert not is_transport_failure(TimeoutError())
    assert not is_transport_failure(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
