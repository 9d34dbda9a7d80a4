"""The Decide stream: the client's decision calls carried on one long-lived call (`transport="stream"`).

`SelectServer`, `AcquireSlot`, `ReleaseSlot` and `ReportOutcome` go as calls of the
service's `Decide` stream instead of one unary call each. Every caller's call joins
an outbox; one request iterator sends what gathered while the previous message was
being written as one `DecideRequest`, so under load many decisions share a message;
a reader task (async) or thread (sync) hands each answer to its caller by id.

Answers and errors look to the client exactly like the unary calls' (a failed call
raises `StreamRpcError`, a `grpc.RpcError` with the code, details and trailers the
unary call would have had), so the client's breakers, retries, fallbacks and
abandons work unchanged. A call that outlives its timeout fails DEADLINE_EXCEEDED;
an AcquireSlot's timeout also bounds its wait at the service (`timeout_ms`). When
the stream breaks, every call waiting on it fails UNAVAILABLE (a transport failure,
retried like one) and the next call opens a new stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from loadwarden.sdk._errors import RETRY_AFTER_METADATA_KEY, UNAVAILABLE_REASON_METADATA_KEY
from loadwarden.sdk._synchronization import AsyncCancelled, AsyncOutbox, AsyncReply, AsyncThreadLock, AsyncWorker
from loadwarden.v1 import decision_pb2 as _pb

# The unary methods the stream carries, and their DecideCall / DecideAnswer field.
STREAMED = {
    "SelectServer": "select",
    "AcquireSlot": "acquire",
    "ReleaseSlot": "release",
    "ReportOutcome": "report_outcome",
}
MAX_CALLS_PER_MESSAGE = 1_000  # the contract's bound on DecideRequest.calls
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class StreamRpcError(grpc.RpcError):
    """A Decide call's failure, shaped as the failed unary call it stands for."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing_metadata = trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:  # grpc's stubs type it as their own _Metadatum tuple
        return self._trailing_metadata


def error_of(error: _pb.DecideError) -> StreamRpcError:
    """The unary call's failure a DecideError stands for (its code, message and trailers)."""
    trailers: list[tuple[str, str]] = []
    if error.retry_after_ms:
        trailers.append((RETRY_AFTER_METADATA_KEY, str(error.retry_after_ms)))
    if error.unavailable_reason:
        trailers.append((UNAVAILABLE_REASON_METADATA_KEY, error.unavailable_reason))
    return StreamRpcError(_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.message, tuple(trailers))


@dataclass(eq=False)
class _Connection:
    """One Decide call: its outbox and the calls awaiting answers on it."""

    outbox: AsyncOutbox
    call: Any = None
    pending: dict[int, AsyncReply] = field(default_factory=dict)


class AsyncDecideStream:
    """The client's Decide stream, opened on the first call and again after a break.

    Args:
        open_call: Starts the Decide call with a request iterator (the client's stub,
            with its metadata); returns the call, which iterates the responses.
    """

    def __init__(self, open_call: Callable[[Any], Any]) -> None:
        self._open = open_call
        self._lock = AsyncThreadLock()
        self._connection: _Connection | None = None
        self._next_id = 0
        self._closed = False

    async def call(self, method: str, request: Any, timeout_s: float | None) -> Any:
        """Sends `request` as a call of `method` and returns its answer, as the unary call would.

        Raises:
            StreamRpcError: the call failed (its status as the unary call's), timed out
                (DEADLINE_EXCEEDED) or its stream broke (UNAVAILABLE).
        """
        kind = STREAMED[method]
        reply = AsyncReply()
        with self._lock:
            if self._closed:
                raise StreamRpcError(grpc.StatusCode.CANCELLED, "the client is closed")
            connection = self._connection
            if connection is None:
                connection = self._connect()
            self._next_id = call_id = self._next_id + 1
            connection.pending[call_id] = reply
        decide_call = _pb.DecideCall(id=call_id, **{kind: request})
        if kind == "acquire" and timeout_s is not None:
            decide_call.timeout_ms = max(1, math.ceil(timeout_s * 1000))
        connection.outbox.put(decide_call)
        try:
            answer = await reply.wait(timeout_s)
        except TimeoutError:
            raise StreamRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            with self._lock:
                connection.pending.pop(call_id, None)
        got = answer.WhichOneof("response")
        if got == "error":
            raise error_of(answer.error)
        if got != kind:
            raise StreamRpcError(grpc.StatusCode.INTERNAL, f"the service answered a {kind} call with {got}")
        return getattr(answer, kind)

    async def close(self) -> None:
        """Ends the stream; calls still waiting on it fail CANCELLED."""
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.outbox.close()
            if connection.call is not None:
                connection.call.cancel()
            self._fail(connection, StreamRpcError(grpc.StatusCode.CANCELLED, "the client is closed"))

    def _connect(self) -> _Connection:
        # Caller holds the lock.
        connection = self._connection = _Connection(AsyncOutbox())
        connection.call = self._open(self._requests(connection.outbox))
        AsyncWorker.start(lambda: self._read(connection), "loadwarden-decide")
        return connection

    async def _requests(self, outbox: AsyncOutbox) -> Any:
        while True:
            calls = await outbox.take(MAX_CALLS_PER_MESSAGE)
            if not calls:
                return
            yield _pb.DecideRequest(calls=calls)

    async def _read(self, connection: _Connection) -> None:
        reason = "the service ended the stream"
        try:
            async for response in connection.call:
                self._answer(connection, response.answers)
        except grpc.RpcError as err:
            reason = f"the stream broke: {err.code()} {err.details()}"
        except AsyncCancelled:
            reason = "the stream was cancelled"
        finally:
            with self._lock:
                if self._connection is connection:
                    self._connection = None  # the next call opens a new stream
            connection.outbox.close()
            self._fail(connection, StreamRpcError(grpc.StatusCode.UNAVAILABLE, f"Decide stream: {reason}"))

    def _answer(self, connection: _Connection, answers: Iterable[_pb.DecideAnswer]) -> None:
        with self._lock:
            for answer in answers:
                reply = connection.pending.get(answer.id)
                if reply is not None:
                    reply.set(answer)

    def _fail(self, connection: _Connection, error: StreamRpcError) -> None:
        with self._lock:
            waiting = list(connection.pending.values())
            connection.pending.clear()
        for reply in waiting:
            reply.fail(error)
