"""Fakes for SDK unit tests: no sockets, no sleeping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import Message

from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb


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
        self.answers: dict[str, Message | BaseException | Callable[[Message], Any]] = {}
        self.closed = False
        self._decisions = 0

    def methods(self) -> list[str]:
        return [call.method for call in self.calls]

    def unary_unary(self, path: str, **_: Any) -> Callable[..., Any]:
        method = path.rsplit("/", 1)[-1]

        def call(request: Message, timeout: float | None = None, **__: Any) -> Any:
            self.calls.append(RecordedCall(method, request, timeout))
            answer = self.answers[method] if method in self.answers else self._default_answer(method)
            if callable(answer) and not isinstance(answer, Message):
                answer = answer(request)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        async def acall(request: Message, timeout: float | None = None, **kwargs: Any) -> Any:
            return call(request, timeout, **kwargs)

        return acall if self.asynchronous else call

    def unary_stream(self, path: str, **_: Any) -> Callable[..., Any]:
        def call(request: Message, timeout: float | None = None, **__: Any) -> Any:
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

        defaults: dict[str, Callable[[Any], Message]] = {
            "SelectServer": select,
            "ReportOutcome": lambda request: _pb.ReportOutcomeResponse(applied=len(request.outcomes)),
            "ReportLoad": lambda request: _pb.ReportLoadResponse(applied=len(request.reports)),
            "GetLoadStatus": lambda request: _pb.GetLoadStatusResponse(status=_common.LoadStatus()),
        }
        return defaults[method]


async def _done() -> None:
    return None


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
