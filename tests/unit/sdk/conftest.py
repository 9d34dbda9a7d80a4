"""Fakes for SDK unit tests: no sockets, no sleeping."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message

from loadwarden.sdk import AsyncClient, Client
from loadwarden.sdk._async.leases import AsyncReleaseRetries
from loadwarden.sdk._sync.leases import ReleaseRetries
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

RequestT = TypeVar("RequestT", bound=Message)


@dataclass(frozen=True)
class RecordedCall:
    method: str
    request: Message
    timeout: float | None


class FakeChannel:
    """Stands in for grpc.Channel (or grpc.aio.Channel): records every call and answers it.

    `answers[method]` is a response message, an exception to raise, or a function of
    the request returning either; methods without an entry get a plausible default.
    """

    def __init__(self, *, asynchronous: bool = False) -> None:
        self.asynchronous = asynchronous
        self.calls: list[RecordedCall] = []
        # An answer function takes the method's own request type.
        self.answers: dict[str, Message | BaseException | Callable[[Any], Any]] = {}
        self.closed = False
        self._decisions = 0
        self.leases: dict[str, bool] = {}  # lease id -> released
        self.lease_ttl_ms: dict[str, int] = {}
        self.health_calls: list[RecordedCall] = []
        self.health_answer: Message | BaseException = grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no service"
        )

    def methods(self) -> list[str]:
        return [call.method for call in self.calls]

    def requests(self, method: str, kind: type[RequestT]) -> list[RequestT]:
        """The requests of the recorded `method` calls, in order; each must be a `kind`."""
        sent: list[RequestT] = []
        for call in self.calls:
            if call.method == method:
                assert isinstance(call.request, kind), call.request
                sent.append(call.request)
        return sent

    def unary_unary(self, path: str, **_: Any) -> Callable[..., Any]:
        method = path.rsplit("/", 1)[-1]
        if path == "/grpc.health.v1.Health/Check":
            return self._health_check()

        def call(request: Message, timeout: float | None = None, **__: Any) -> Any:
            self.calls.append(RecordedCall(method, request, timeout))
            answer = self.answers[method] if method in self.answers else self._default_answer(method)
            if callable(answer) and not isinstance(answer, Message):
                answer = answer(request)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        async def acall(request: Message, timeout: float | None = None, **kwargs: Any) -> Any:
            answer = call(request, timeout, **kwargs)
            return await answer if inspect.isawaitable(answer) else answer  # an async answer function

        return acall if self.asynchronous else call

    def _health_check(self) -> Callable[..., Any]:
        # The client's background health probe: recorded apart (it runs on its own
        # thread or task), answered by `health_answer`, UNAVAILABLE by default.
        def call(request: Message, timeout: float | None = None, **__: Any) -> Any:
            self.health_calls.append(RecordedCall("Check", request, timeout))
            if isinstance(self.health_answer, BaseException):
                raise self.health_answer
            return self.health_answer

        async def acall(request: Message, timeout: float | None = None, **kwargs: Any) -> Any:
            return call(request, timeout, **kwargs)

        return acall if self.asynchronous else call

    def unary_stream(self, path: str, **_: Any) -> Callable[..., Any]:
        def call(request: Message, timeout: float | None = None, **__: Any) -> Any:
            raise NotImplementedError(f"{path}: streaming is not faked")

        return call

    def stream_stream(self, path: str, **_: Any) -> Callable[..., Any]:
        def call(*_args: Any, **__: Any) -> Any:
            raise NotImplementedError(f"{path}: streaming is not faked")

        return call

    def close(self) -> Any:
        self.closed = True
        if self.asynchronous:
            return _done()
        return None

    def _default_answer(self, method: str) -> Callable[[Message], Message]:
        def select(request: _pb.SelectServerRequest) -> Message:
            self._decisions += 1
            return _pb.SelectServerResponse(
                decision_id=f"d-{self._decisions}", server_id="s1", address="10.0.0.1:80", strategy="round_robin"
            )

        def acquire(request: _pb.AcquireSlotRequest) -> Message:
            self._decisions += 1
            lease_id = f"l-{len(self.leases) + 1}"
            self.leases[lease_id] = False
            self.lease_ttl_ms[lease_id] = request.lease_ttl_ms or DEFAULT_LEASE_TTL_MS
            response = _pb.AcquireSlotResponse(
                granted=True,
                decision_id=f"d-{self._decisions}",
                lease=_lease(lease_id, request.pool, self.lease_ttl_ms[lease_id]),
                queue_wait_ms=7,
            )
            if request.select_server:
                response.server_id, response.address = "s1", "10.0.0.1:80"
            return response

        def renew(request: _pb.RenewLeaseRequest) -> Message:
            if self.leases.get(request.lease_id, True):
                raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details=f"lease {request.lease_id!r} is not held")
            ttl_ms = self.lease_ttl_ms[request.lease_id] = request.ttl_ms or self.lease_ttl_ms[request.lease_id]
            return _pb.RenewLeaseResponse(lease=_lease(request.lease_id, "ml", ttl_ms))

        def release(request: _pb.ReleaseSlotRequest) -> Message:
            if not request.lease_id:  # ending abandoned AcquireSlot calls
                return _pb.ReleaseSlotResponse(abandoned=len(request.abandoned_request_ids))
            if request.lease_id not in self.leases:
                raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details=f"lease {request.lease_id!r} is unknown")
            already = self.leases[request.lease_id]
            self.leases[request.lease_id] = True
            return _pb.ReleaseSlotResponse(released=not already, already_released=already)

        def batch_size(request: _pb.GetBatchSizeRequest) -> Message:
            self._decisions += 1
            return _pb.GetBatchSizeResponse(
                decision_id=f"d-{self._decisions}",
                batch_size=DEFAULT_BATCH_SIZE,
                load_score=30.0,
                load_level=_common.LOAD_LEVEL_LOW,
                reason="load 30.0 <= low threshold 50.0",
            )

        defaults: dict[str, Callable[[Any], Message]] = {
            "SelectServer": select,
            "AcquireSlot": acquire,
            "RenewLease": renew,
            "ReleaseSlot": release,
            "ReportOutcome": lambda request: _pb.ReportOutcomeResponse(applied=len(request.outcomes)),
            "ReportLoad": lambda request: _pb.ReportLoadResponse(applied=len(request.reports)),
            "GetLoadStatus": lambda request: _pb.GetLoadStatusResponse(status=_common.LoadStatus()),
            "GetBatchSize": batch_size,
            "ReportBatch": lambda request: _pb.ReportBatchResponse(applied=len(request.reports)),
        }
        return defaults[method]


async def _done() -> None:
    return None


def as_channel(fake: FakeChannel) -> grpc.Channel:
    """`fake` typed as the `channel=` a Client takes: it fakes only the calls the client makes."""
    return cast(grpc.Channel, fake)


def as_aio_channel(fake: FakeChannel) -> grpc.aio.Channel:
    """`fake` (asynchronous) typed as the `channel=` an AsyncClient takes."""
    assert fake.asynchronous
    return cast(grpc.aio.Channel, fake)


def release_retries(client: Client | AsyncClient) -> ReleaseRetries | AsyncReleaseRetries:
    """The client's release retrier as its class (the shared base declares only `abandon`)."""
    retries = client._releases
    assert isinstance(retries, ReleaseRetries | AsyncReleaseRetries)
    return retries


# Lease TTL the fake grants when the request names none, milliseconds.
DEFAULT_LEASE_TTL_MS = 30_000
# Batch size the fake answers to GetBatchSize, count.
DEFAULT_BATCH_SIZE = 50


def _lease(lease_id: str, pool: str, ttl_ms: int) -> _common.Lease:
    lease = _common.Lease(lease_id=lease_id, pool=pool, ttl_ms=ttl_ms)
    lease.expires_at.FromSeconds(1_700_000_000 + ttl_ms // 1000)
    return lease


@dataclass
class FakeTimer:
    delay_s: float
    callback: Callable[[], Any]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeScheduler:
    """Stands in for the renewal schedulers: records each `call_later`, runs it only when fired.

    `fire()` runs the pending callback in the test's thread (sync) and returns what it
    returned, an awaitable for the async scheduler; nothing ever runs by itself.
    """

    timers: list[FakeTimer] = field(default_factory=list)

    def call_later(self, delay_s: float, callback: Callable[[], Any]) -> FakeTimer:
        timer = FakeTimer(delay_s, callback)
        self.timers.append(timer)
        return timer

    @property
    def pending(self) -> list[FakeTimer]:
        return [timer for timer in self.timers if not (timer.cancelled or timer.fired)]

    @property
    def delays(self) -> list[float]:
        return [timer.delay_s for timer in self.timers]

    def fire(self) -> Any:
        [timer] = self.pending
        timer.fired = True
        return timer.callback()

    async def afire(self) -> None:
        result = self.fire()
        assert isinstance(result, Awaitable)
        await result


class FakeClock:
    """A monotonic clock that moves only when told to, seconds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_channel() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
def fake_aio_channel() -> FakeChannel:
    return FakeChannel(asynchronous=True)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_scheduler() -> FakeScheduler:
    return FakeScheduler()
