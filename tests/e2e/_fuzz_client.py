"""Sends fuzzed calls to a running service and judges every answer.

``FuzzClient.send`` fires a batch of calls at once over one (sync) gRPC channel
with futures, so thousands of requests go out in seconds; every answer must be
OK or a client-error code the service documents. ``check_healthy`` proves the
service still answers correctly after a batch.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.v1 import decision_pb2 as _pb
from loadwarden.v1 import decision_pb2_grpc as _pb_grpc

from ._fuzz_strategies import CANARY_POOL, DECISION_REF, LEASE_REF, Call

# Codes a client's mistake may get (DESIGN.md "Errors"); never UNKNOWN or INTERNAL.
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Calls whose answer may legitimately come at their deadline: a slot wait, a stream.
DEADLINE_BOUND = frozenset({"AcquireSlot", "WatchLoadStatus"})
# Every RESOURCE_EXHAUSTED names what was exhausted: a configured cap (``... (limits.x = n) reached: ...``),
# a rate limit, a strategy's size, or gRPC's own request-size / concurrent-RPC caps.
_EXHAUSTED = re.compile(
    r"\) reached: |rate limit|server\.id: pool |Received message larger than max|Concurrent RPC limit"
)
UNAVAILABLE_REASON_KEY = "loadwarden-unavailable-reason"
RETRY_AFTER_KEY = "loadwarden-retry-after-ms"

UNARY_TIMEOUT_S = 60.0
ACQUIRE_TIMEOUT_S = 0.5  # bounds a queued AcquireSlot: the service answers just before it
WATCH_TIMEOUT_S = 10.0
CANARY_SERVERS = frozenset({"c1", "c2"})

InFlight = list[tuple[Call, Any]]  # a started batch: each call with its future (unary) or stream


@dataclass
class Tally:
    """What a run sent and got back."""

    sent: int = 0
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, code name) -> count
    problems: list[str] = field(default_factory=list)

    def methods_with(self, code: str) -> set[str]:
        return {method for (method, c) in self.codes if c == code}


def _resolve(request: Message, leases: deque[str], decisions: deque[str]) -> Message:
    """Swaps LEASE_REF / DECISION_REF for ids the service issued earlier in the run."""
    lease = leases[-1] if leases else "no-lease-yet"
    decision = decisions[-1] if decisions else "no-decision-yet"
    if isinstance(request, (_pb.RenewLeaseRequest, _pb.ReleaseSlotRequest)) and request.lease_id == LEASE_REF:
        request.lease_id = lease
    elif isinstance(request, _pb.ReportOutcomeRequest):
        for i, outcome in enumerate(request.outcomes):
            if outcome.decision_id == DECISION_REF:
                outcome.decision_id = decisions[i % len(decisions)] if decisions else decision
    elif isinstance(request, _pb.ReportBatchRequest):
        for report in request.reports:
            if report.decision_id == DECISION_REF:
                report.decision_id = decision
    return request


class FuzzClient:
    """One channel to the service under fuzz; ``tally`` accumulates over every ``send``.

    With ``tokens``, DecisionService calls take turns between the callers they name, so
    ids one caller was issued are tried by the other (answered NOT_FOUND); AdminService
    calls carry ``admin_token``.
    """

    def __init__(self, target: str, tokens: Sequence[str] = (), admin_token: str = "") -> None:
        # Unlimited on the client side, so every size cap seen is the service's.
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.decision = _pb_grpc.DecisionServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.tally = Tally()
        self._leases: deque[str] = deque(maxlen=32)
        self._decisions: deque[str] = deque(maxlen=256)
        self._unary: dict[str, Any] = {}
        self._callers: list[tuple[tuple[str, str], ...]] = [(("authorization", f"Bearer {t}"),) for t in tokens] or [()]
        self._admin_md = (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        self._turn = 0

    def _metadata(self, call: Call) -> tuple[tuple[str, str], ...]:
        if call.service != "DecisionService":
            return self._admin_md
        self._turn += 1
        return self._callers[self._turn % len(self._callers)]

    def close(self) -> None:
        self.channel.close()

    def start(self, calls: Sequence[Call]) -> InFlight:
        """Sends ``calls`` at once (streams are opened); ``finish`` collects and judges the answers.

        Starting a batch before finishing the previous one lets the service work on
        one batch while Hypothesis draws the next.
        """
        inflight = []
        for call in calls:
            request = call.request
            if isinstance(request, Message):
                request = _resolve(request, self._leases, self._decisions)
            metadata = self._metadata(call)
            if call.streaming:
                stream = self._stream_callable(call)(request, timeout=WATCH_TIMEOUT_S, metadata=metadata)
                inflight.append((call, stream))
                continue
            timeout = ACQUIRE_TIMEOUT_S if call.method == "AcquireSlot" else UNARY_TIMEOUT_S
            future = self._unary_callable(call, request).future(request, timeout=timeout, metadata=metadata)
            inflight.append((call, future))
        return inflight

    def finish(self, inflight: InFlight) -> None:
        """Waits for every answer of a started batch and judges it; problems go to ``tally.problems``."""
        for call, pending in inflight:
            if call.streaming:
                self._first_snapshot(call, pending)
                continue
            try:
                response = pending.result()
            except grpc.RpcError as exc:
                self._judge(call, exc.code(), exc.details() or "", _trailers(exc))
            else:
                self._judge(call, grpc.StatusCode.OK, "", ())
                self._harvest(response)

    def send(self, calls: Sequence[Call]) -> None:
        """Sends ``calls`` at once and judges each answer."""
        self.finish(self.start(calls))

    def _unary_callable(self, call: Call, request: Message | bytes) -> Any:
        # A raw-bytes call gets its own callable (no serializer), cached apart from the typed one.
        key = call.path + ("#raw" if isinstance(request, bytes) else "")
        method = self._unary.get(key)
        if method is not None:
            return method
        if isinstance(request, bytes):
            method = self.channel.unary_unary(call.path)  # bytes in, bytes out
        else:
            method = self.channel.unary_unary(
                call.path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=_response_class(call).FromString,
            )
        self._unary[key] = method
        return method

    def _stream_callable(self, call: Call) -> Any:
        if isinstance(call.request, bytes):
            return self.channel.unary_stream(call.path)
        return self.channel.unary_stream(
            call.path,
            request_serializer=type(call.request).SerializeToString,
            response_deserializer=_pb.WatchLoadStatusResponse.FromString,
        )

    def _first_snapshot(self, call: Call, stream: Any) -> None:
        """Reads a stream's first snapshot (or its error), then cancels it."""
        try:
            next(stream)
        except StopIteration:
            self._judge(call, grpc.StatusCode.OK, "", ())
            self.tally.problems.append(f"{call.describe()}: the stream ended without sending a snapshot")
        except grpc.RpcError as exc:
            self._judge(call, exc.code(), exc.details() or "", _trailers(exc))
        else:
            self._judge(call, grpc.StatusCode.OK, "", ())
        finally:
            stream.cancel()

    def _harvest(self, response: Any) -> None:
        if isinstance(response, _pb.AcquireSlotResponse) and response.granted:
            self._leases.append(response.lease.lease_id)
            self._decisions.append(response.decision_id)
        elif isinstance(response, _pb.SelectServerResponse):
            self._decisions.append(response.decision_id)

    def _judge(self, call: Call, code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, Any]]) -> None:
        method = call.method + (" (raw bytes)" if isinstance(call.request, bytes) else "")
        self.tally.sent += 1
        self.tally.codes[(method, code.name)] += 1
        problem = judge(call.method, code, details, dict(trailers))
        if problem:
            self.tally.problems.append(f"{call.describe()}\n  -> {code.name}: {details[:300]!r}: {problem}")

    def check_healthy(self) -> None:
        """Health says SERVING, and a valid SelectServer on the canary pool succeeds."""
        health = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=UNARY_TIMEOUT_S)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, health
        metadata = self._callers[0]
        choice = self.decision.SelectServer(
            _pb.SelectServerRequest(pool=CANARY_POOL), timeout=UNARY_TIMEOUT_S, metadata=metadata
        )
        assert choice.server_id in CANARY_SERVERS, choice
        applied = self.decision.ReportOutcome(
            _pb.ReportOutcomeRequest(
                outcomes=[_pb.Outcome(decision_id=choice.decision_id, success=True, latency_ms=1.0)]
            ),
            timeout=UNARY_TIMEOUT_S,
            metadata=metadata,
        )
        assert applied.applied == 1, applied


def _trailers(exc: grpc.RpcError) -> Sequence[tuple[str, Any]]:
    # grpc's _Metadatum is a (key, value) namedtuple; the stubs declare a plain class.
    return cast("Sequence[tuple[str, Any]]", exc.trailing_metadata() or ())


def judge(method: str, code: grpc.StatusCode, details: str, trailers: dict[str, Any]) -> str:
    """Why an answer is unacceptable; empty when it is fine."""
    if code == grpc.StatusCode.OK or code in CLIENT_ERRORS - {grpc.StatusCode.RESOURCE_EXHAUSTED}:
        return ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "" if _EXHAUSTED.search(details) else "RESOURCE_EXHAUSTED that names no cap"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and method in DEADLINE_BOUND:
        return ""
    if code == grpc.StatusCode.UNAVAILABLE and UNAVAILABLE_REASON_KEY in trailers:
        return ""  # the documented "no eligible server" answer, not a transport failure
    return f"{code.name} is not an answer to a client's mistake"


def _response_class(call: Call) -> type[Message]:
    from google.protobuf import message_factory

    from loadwarden.v1 import admin_pb2, decision_pb2

    module = decision_pb2 if call.service == "DecisionService" else admin_pb2
    method = module.DESCRIPTOR.services_by_name[call.service].methods_by_name[call.method]
    return message_factory.GetMessageClass(method.output_type)
