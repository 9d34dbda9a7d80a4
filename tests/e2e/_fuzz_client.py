"""Sends fuzzed calls to a running service and judges every answer.

``FuzzClient.send`` fires a batch of calls at once over one (sync) gRPC channel
with futures, so thousands of requests go out in seconds; every answer must be
OK or a client-error code the service documents. The mesh's answers are checked
for what they say too (``rls_problem``, ``ads_problems``). ``check_healthy`` proves
the service still answers correctly after a batch.
"""

from __future__ import annotations

import queue
import re
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from envoy.config.cluster.v3 import cluster_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from envoy.config.core.v3.health_check_pb2 import HEALTHY  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.config.endpoint.v3 import endpoint_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.config.listener.v3 import listener_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.config.route.v3 import route_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.service.discovery.v3 import discovery_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.service.ratelimit.v3 import rls_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2  # type: ignore[import-untyped]  # xds-protos' googleapis: no stubs
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.v1 import decision_pb2 as _pb
from loadwarden.v1 import decision_pb2_grpc as _pb_grpc

from ._fuzz_strategies import (
    ADMIN,
    ADS,
    CANARY_POOL,
    CLUSTER,
    DECISION_REF,
    ENDPOINT,
    LEASE_REF,
    LISTENER,
    RLS,
    ROUTE,
    SERVED_TYPES,
    SHADOW_RULE,
    SHOULD_RATE_LIMIT,
    STREAM_RESOURCES,
    UNLIMITED_RULE,
    Call,
    Conversation,
)

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
# The Envoy services' RESOURCE_EXHAUSTED: the port's own caps, and for ADS its stream caps. A rate
# limit is never one: RLS answers it OK with OVER_LIMIT (Envoy turns a failed call into its
# failure_mode_deny choice, not into a 429). Neither carries loadwarden's retry-after trailer: Envoy
# and gRPC's xDS client do not read it (they retry ADS with their own backoff), and retrying the same
# oversized request cannot succeed.
_PORT_CAPS = r"Received message larger than max|Concurrent RPC limit"
_MESH_EXHAUSTED = {
    RLS: re.compile(_PORT_CAPS),
    ADS: re.compile(r"\(xds\.max_streams(_per_caller)? = \d+\) reached: |" + _PORT_CAPS),
}
UNAVAILABLE_REASON_KEY = "loadwarden-unavailable-reason"
RETRY_AFTER_KEY = "loadwarden-retry-after-ms"

UNARY_TIMEOUT_S = 60.0
ACQUIRE_TIMEOUT_S = 0.5  # bounds a queued AcquireSlot: the service answers just before it
WATCH_TIMEOUT_S = 10.0
# Bounds an ADS conversation: the service answers a subscription at once and ends a half-closed stream.
ADS_TIMEOUT_S = 10.0
CANARY_SERVERS = frozenset({"c1", "c2"})
CANARY_ADDRESSES = frozenset({("127.0.0.1", 9201), ("127.0.0.1", 9202)})  # as the fuzz service configures them
CANARY_DOMAIN = "canary"  # its one rule: key "probe", unlimited
MAX_UINT32 = 2**32 - 1
OK, OVER_LIMIT = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
RLS_HEADERS = frozenset({"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"})
# What names a resource of each served type.
RESOURCE_NAME = {
    LISTENER: (listener_pb2.Listener, "name"),
    ROUTE: (route_pb2.RouteConfiguration, "name"),
    CLUSTER: (cluster_pb2.Cluster, "name"),
    ENDPOINT: (endpoint_pb2.ClusterLoadAssignment, "cluster_name"),
}
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})  # no names on a type's first request: all of them


class Writer:
    """The request iterator of a bidirectional call: what ``write`` queues is sent; ``close``
    half-closes (and frees the gRPC thread that waits on the iterator)."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def write(self, request: Message | bytes) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[Message | bytes]:
        while (item := self._queue.get()) is not self._END:
            yield item


@dataclass
class Open:
    """A started bidirectional call: what it writes with, and its responses."""

    writer: Writer
    responses: Any  # grpc's _MultiThreadedRendezvous: iterates responses, raises RpcError at a bad end


InFlight = list[tuple[Call, Any]]  # a started batch: each call with its future (unary), stream, or Open


@dataclass
class Tally:
    """What a run sent and got back."""

    sent: int = 0
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, code name) -> count
    # What OK answers said: (method, "overall OK" / "overall OVER_LIMIT" / "responses" / "ACKs"...) -> count
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
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

    def __init__(
        self, target: str, tokens: Sequence[str] = (), admin_token: str = "", mesh_probe_token: str | None = None
    ) -> None:
        # Unlimited on the client side, so every size cap seen is the service's.
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.decision = _pb_grpc.DecisionServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        # With a probe token (or "" for an open service), check_healthy asks the mesh services too,
        # as a caller of its own: its streams never meet the fuzzed callers' stream caps.
        self._probe_md = None if mesh_probe_token is None else _bearer(mesh_probe_token)
        self.tally = Tally()
        self._leases: deque[str] = deque(maxlen=32)
        self._decisions: deque[str] = deque(maxlen=256)
        self._callables: dict[str, Any] = {}
        self._callers: list[tuple[tuple[str, str], ...]] = [_bearer(t) for t in tokens] or [()]
        self._admin_md = _bearer(admin_token)
        self._turn = 0

    def _metadata(self, call: Call) -> tuple[tuple[str, str], ...]:
        if call.service == ADMIN:
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
        inflight: InFlight = []
        for call in calls:
            request = call.request
            if isinstance(request, Message):
                request = _resolve(request, self._leases, self._decisions)
            metadata = self._metadata(call)
            if isinstance(request, Conversation):
                inflight.append((call, self._open(call, request, metadata)))
                continue
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
            if isinstance(pending, Open):
                self._converse(call, pending)
                continue
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
                if call.method == SHOULD_RATE_LIMIT and isinstance(call.request, Message):
                    code = rls_pb2.RateLimitResponse.Code.Name(response.overall_code)
                    self.tally.answers[(call.method, f"overall {code}")] += 1
                    self._problem(call, rls_problem(call.request, response))

    def send(self, calls: Sequence[Call]) -> None:
        """Sends ``calls`` at once and judges each answer."""
        self.finish(self.start(calls))

    def _unary_callable(self, call: Call, request: Message | bytes) -> Any:
        # A raw-bytes call gets its own callable (no serializer), cached apart from the typed one.
        key = call.path + ("#raw" if isinstance(request, bytes) else "")
        method = self._callables.get(key)
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
        self._callables[key] = method
        return method

    def _stream_callable(self, call: Call) -> Any:
        request = call.request
        if isinstance(request, bytes):
            return self.channel.unary_stream(call.path)
        assert isinstance(request, Message)
        return self.channel.unary_stream(
            call.path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=_pb.WatchLoadStatusResponse.FromString,
        )

    def _open(self, call: Call, conversation: Conversation, metadata: tuple[tuple[str, str], ...]) -> Open:
        """Starts a bidirectional call writing ``conversation``'s requests; without ``ack`` it
        half-closes at once (the service answers what it can, then ends the stream)."""
        method = self._callables.get(call.path)
        if method is None:
            method = self.channel.stream_stream(
                call.path,
                request_serializer=_serialize,  # messages and raw bytes alike
                response_deserializer=_response_class(call).FromString,
            )
            self._callables[call.path] = method
        writer = Writer()
        for request in conversation.requests:
            writer.write(request)
        if not conversation.ack:
            writer.close()
        return Open(writer, method(iter(writer), timeout=ADS_TIMEOUT_S, metadata=metadata))

    def _converse(self, call: Call, started: Open) -> None:
        """Plays an ADS conversation to its end and judges it and every response."""
        conversation = call.request
        assert isinstance(conversation, Conversation)
        responses: list[Any] = []
        try:
            if conversation.ack:
                waiting = {r.type_url for r in conversation.requests if not isinstance(r, bytes)} & set(SERVED_TYPES)
                while waiting:
                    response = next(started.responses)
                    responses.append(response)
                    waiting.discard(response.type_url)
                    started.writer.write(_reply(conversation, response))
                    self.tally.answers[(call.method, "NACKs sent" if conversation.nack else "ACKs sent")] += 1
                if conversation.hold:  # a client that goes away: the service must let go of the stream
                    started.responses.cancel()
                    self._judge(call, grpc.StatusCode.OK, "", ())
                    return
                started.writer.close()
            responses.extend(started.responses)  # until the service ends the stream
        except StopIteration:
            self._judge(call, grpc.StatusCode.OK, "", ())
            self._problem(call, "the service ended the stream before answering every subscription")
        except grpc.RpcError as exc:
            self._judge(call, exc.code(), exc.details() or "", _trailers(exc))
        else:
            self._judge(call, grpc.StatusCode.OK, "", ())
        finally:
            started.writer.close()
            started.responses.cancel()  # a no-op once it ended
            self.tally.answers[(call.method, "responses")] += len(responses)
            self.tally.answers[(call.method, "resources")] += sum(len(r.resources) for r in responses)
            for problem in ads_problems(conversation, responses):
                self._problem(call, problem)

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
        method = call.method + (" (raw bytes)" if call.raw else "")
        self.tally.sent += 1
        self.tally.codes[(method, code.name)] += 1
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and call.service in _MESH_EXHAUSTED:
            cap = _MESH_EXHAUSTED[call.service].search(details)
            self.tally.answers[(method, f"exhausted: {cap.group(0).strip(': ') if cap else '?'}")] += 1
        problem = judge(call.service, call.method, code, details, dict(trailers))
        if problem:
            self.tally.problems.append(f"{call.describe()}\n  -> {code.name}: {details[:300]!r}: {problem}")

    def _problem(self, call: Call, problem: str) -> None:
        """Records what is wrong with an answer's content (an OK with a wrong answer in it)."""
        if problem:
            self.tally.problems.append(f"{call.describe()}\n  -> {problem}")

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
        if self._probe_md is not None:
            self._check_mesh_healthy(self._probe_md)

    def _check_mesh_healthy(self, metadata: tuple[tuple[str, str], ...]) -> None:
        """RLS answers the canary domain's unlimited rule; ADS serves the canary pool, both servers HEALTHY."""
        probe = ratelimit_pb2.RateLimitDescriptor(entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="probe")])
        request = rls_pb2.RateLimitRequest(domain=CANARY_DOMAIN, descriptors=[probe])
        call = Call(RLS, SHOULD_RATE_LIMIT, request)
        answer = self._unary_callable(call, request)(request, timeout=UNARY_TIMEOUT_S, metadata=metadata)
        assert answer.overall_code == OK and answer.statuses[0].limit_remaining == MAX_UINT32, answer

        subscribe = tuple(
            discovery_pb2.DiscoveryRequest(type_url=t, resource_names=[CANARY_POOL]) for t in SERVED_TYPES
        )
        conversation = Conversation(subscribe, ack=True, hold=True)
        started = self._open(Call(ADS, STREAM_RESOURCES, conversation), conversation, metadata)
        answers: dict[str, Any] = {}
        try:
            while len(answers) < len(SERVED_TYPES):
                response = next(started.responses)
                answers[response.type_url] = response
        finally:
            started.writer.close()
            started.responses.cancel()
        for type_url, response in answers.items():
            cls, name = RESOURCE_NAME[type_url]
            assert [getattr(cls.FromString(r.value), name) for r in response.resources] == [CANARY_POOL], response
        assignment = endpoint_pb2.ClusterLoadAssignment.FromString(answers[ENDPOINT].resources[0].value)
        endpoints = {
            (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value): e.health_status
            for locality in assignment.endpoints
            for e in locality.lb_endpoints
        }
        assert endpoints == dict.fromkeys(CANARY_ADDRESSES, HEALTHY), assignment

    def streams_admitted(self, caller: int, count: int) -> int:
        """How many of ``count`` ADS streams opened at once by fuzzed caller ``caller`` the service admits
        (each answers its subscription); all are cancelled before this returns."""
        subscribe = discovery_pb2.DiscoveryRequest(type_url=LISTENER, resource_names=["api"])
        conversation = Conversation((subscribe,), ack=True, hold=True)
        call = Call(ADS, STREAM_RESOURCES, conversation)
        opened = [self._open(call, conversation, self._callers[caller]) for _ in range(count)]
        admitted = 0
        for started in opened:
            try:
                next(started.responses)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            else:
                admitted += 1
        for started in opened:
            started.writer.close()
            started.responses.cancel()
        return admitted


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _serialize(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def _trailers(exc: grpc.RpcError) -> Sequence[tuple[str, Any]]:
    # grpc's _Metadatum is a (key, value) namedtuple; the stubs declare a plain class.
    return cast("Sequence[tuple[str, Any]]", exc.trailing_metadata() or ())


def judge(service: str, method: str, code: grpc.StatusCode, details: str, trailers: dict[str, Any]) -> str:
    """Why an answer is unacceptable; empty when it is fine."""
    if code == grpc.StatusCode.OK or code in CLIENT_ERRORS - {grpc.StatusCode.RESOURCE_EXHAUSTED}:
        return ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        named = _MESH_EXHAUSTED.get(service, _EXHAUSTED).search(details)
        return "" if named else "RESOURCE_EXHAUSTED that names no cap"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and method in DEADLINE_BOUND:
        return ""
    if code == grpc.StatusCode.UNAVAILABLE and UNAVAILABLE_REASON_KEY in trailers:
        return ""  # the documented "no eligible server" answer, not a transport failure
    return f"{code.name} is not an answer to a client's mistake"


def _response_class(call: Call) -> type[Message]:
    """The response message of ``call``'s method, from the descriptors its generated module registered."""
    service = descriptor_pool.Default().FindServiceByName(call.service)
    return message_factory.GetMessageClass(service.methods_by_name[call.method].output_type)


# --- what the mesh's answers say ---------------------------------------------------------------


def rls_problem(request: Any, response: Any) -> str:
    """What is wrong with an OK ShouldRateLimit answer to ``request``; empty when nothing is.

    A status per descriptor, each OK or OVER_LIMIT, OVER_LIMIT overall exactly when one is
    (the fuzz service has no global shadow mode); an OVER_LIMIT status names its limit and has
    nothing left; the shadow-mode rule never answers OVER_LIMIT, the unlimited one always has
    4294967295 left; headers are the three x-ratelimit ones, of a descriptor with a limit.
    """
    statuses = list(response.statuses)
    if len(statuses) != len(request.descriptors):
        return f"{len(statuses)} statuses for {len(request.descriptors)} descriptors"
    codes = [status.code for status in statuses]
    if not {response.overall_code, *codes} <= {OK, OVER_LIMIT}:
        return "a code that is neither OK nor OVER_LIMIT"
    if (response.overall_code == OVER_LIMIT) != (OVER_LIMIT in codes):
        return "overall_code disagrees with the descriptors' codes"
    for index, (descriptor, status) in enumerate(zip(request.descriptors, statuses, strict=True)):
        entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
        where = f"statuses[{index}]"
        if status.code == OVER_LIMIT and (not status.HasField("current_limit") or status.limit_remaining):
            return f"{where}: OVER_LIMIT without its limit, or with {status.limit_remaining} left"
        if status.duration_until_reset.seconds < 0 or status.duration_until_reset.nanos < 0:
            return f"{where}: a negative duration_until_reset"
        if descriptor.HasField("limit"):
            continue  # Envoy's override: that rate, whatever the rule
        rule = (request.domain, entries[0][0]) if len(entries) == 1 else None
        if rule == SHADOW_RULE and status.code == OVER_LIMIT:
            return f"{where}: the shadow-mode rule answered OVER_LIMIT"
        if (request.domain, entries) == (UNLIMITED_RULE[0], (UNLIMITED_RULE[1:],)) and (
            status.code != OK or status.limit_remaining != MAX_UINT32
        ):
            return f"{where}: the unlimited rule answered {status.code} with {status.limit_remaining} left"
    headers = {header.key for header in response.response_headers_to_add}
    if headers and (headers != RLS_HEADERS or not any(s.HasField("current_limit") for s in statuses)):
        return f"headers {sorted(headers)} with limits on {sum(s.HasField('current_limit') for s in statuses)}"
    return ""


def _asked(conversation: Conversation) -> tuple[dict[str, set[str]], set[str]]:
    """Names asked per type URL, and the types asked for with a wildcard (``*``, or no names)."""
    names: dict[str, set[str]] = {}
    wildcard: set[str] = set()
    for raw in conversation.requests:
        try:
            request = discovery_pb2.DiscoveryRequest.FromString(raw) if isinstance(raw, bytes) else raw
        except DecodeError:
            continue
        asked = set(request.resource_names)
        names.setdefault(request.type_url, set()).update(asked)
        if "*" in asked or (not asked and request.type_url in WILDCARD_TYPES):
            wildcard.add(request.type_url)
    return names, wildcard


def ads_problems(conversation: Conversation, responses: Sequence[Any]) -> list[str]:
    """What is wrong with the DiscoveryResponses an ADS conversation got: a response of a type
    not asked for or not served, without version or nonce, a nonce used twice, or a resource
    of another type, undecodable, or named neither in the subscription nor by a wildcard."""
    names, wildcard = _asked(conversation)
    problems: list[str] = []
    nonces: set[str] = set()
    for response in responses:
        type_url = response.type_url
        if type_url not in names or type_url not in RESOURCE_NAME:
            problems.append(f"a response of {type_url!r}, which was not asked for or is not served")
            continue
        if not response.version_info or not response.nonce or response.nonce in nonces:
            problems.append(f"version {response.version_info!r}, nonce {response.nonce!r} (seen: {sorted(nonces)})")
        nonces.add(response.nonce)
        cls, field_name = RESOURCE_NAME[type_url]
        for resource in response.resources:
            if resource.type_url != type_url:
                problems.append(f"a {resource.type_url!r} resource in a {type_url!r} response")
                continue
            try:
                name = getattr(cls.FromString(resource.value), field_name)
            except DecodeError as exc:
                problems.append(f"an undecodable {type_url!r} resource: {exc}")
                continue
            if type_url not in wildcard and name not in names[type_url]:
                problems.append(f"{type_url.rpartition('.')[2]} {name!r} was not subscribed to")
    return problems


def _reply(conversation: Conversation, response: Any) -> Any:
    """The ACK (or with ``nack`` the NACK) of ``response``, naming what the client subscribed to."""
    subscribed = next(r for r in conversation.requests if not isinstance(r, bytes) and r.type_url == response.type_url)
    reply = discovery_pb2.DiscoveryRequest(
        node=subscribed.node,
        type_url=response.type_url,
        resource_names=subscribed.resource_names,
        response_nonce=response.nonce,
        version_info="" if conversation.nack else response.version_info,  # a NACK keeps the version it had
    )
    if conversation.nack:
        reply.error_detail.CopyFrom(status_pb2.Status(code=3, message="fuzz: rejected, keeping the last version"))
    return reply
