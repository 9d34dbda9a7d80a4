"""``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``: the wire and the auth.

The servicer translates a RateLimitRequest into ``_rls_limiter.Descriptor``s, asks
``RlsLimiter.decide`` and translates the ``Verdict`` back; what the answers mean is
``_rls_limiter``'s docstring. An undecodable request, an empty domain or descriptor
list, and an override without a unit are INVALID_ARGUMENT; unreachable shared buckets
failing closed are UNAVAILABLE; nothing a client sends is INTERNAL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from envoy.service.ratelimit.v3 import rls_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from google.protobuf import descriptor_pb2
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from loadwarden.policy import InvalidArgument, Unavailable

from ..engine._core import DecisionCore
from ..rpc._auth import Callers, _digest, _presented_token
from ..rpc._servicer import _handlers, _rpc
from ._rls_config import UNIT_SECONDS, RlsSettings
from ._rls_limiter import RESULTS, Descriptor, RlsLimiter, RlsStats, Verdict

MAX_DESCRIPTORS = 1_000  # descriptors in one ShouldRateLimit, as the DecisionService's batches
MAX_ENTRIES = 64  # entries in one descriptor (Envoy sends one per rate_limits action)
SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]
SERVICE_NAME: str = SERVICE.full_name
_Code = rls_pb2.RateLimitResponse.Code
_Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
_OverrideUnit = ratelimit_pb2.RateLimitDescriptor.RateLimitOverride.DESCRIPTOR.fields_by_name["unit"].enum_type


def descriptors_of(request: Any) -> list[Descriptor]:
    """A RateLimitRequest's descriptors, each with the hits it spends (its own
    ``hits_addend`` when set, even 0; else the request's, 0 meaning 1).

    Raises:
        InvalidArgument: a ``limit`` override with no unit; more than MAX_DESCRIPTORS
            descriptors or MAX_ENTRIES entries in one (each costs event-loop time, and a
            request within the message size cap could carry tens of thousands).
    """
    if len(request.descriptors) > MAX_DESCRIPTORS:
        raise InvalidArgument(
            "descriptors", f"has {len(request.descriptors)} descriptors; at most {MAX_DESCRIPTORS} in one request"
        )
    for index, raw in enumerate(request.descriptors):
        if len(raw.entries) > MAX_ENTRIES:
            raise InvalidArgument(
                f"descriptors[{index}].entries", f"has {len(raw.entries)} entries; at most {MAX_ENTRIES}"
            )
    default_hits = max(1, int(request.hits_addend))
    found = []
    for index, raw in enumerate(request.descriptors):
        hits = int(raw.hits_addend.value) if raw.HasField("hits_addend") else default_hits
        override = None
        if raw.HasField("limit"):
            unit = _OverrideUnit.values_by_number.get(raw.limit.unit)
            if unit is None or unit.name.lower() not in UNIT_SECONDS:
                raise InvalidArgument(
                    f"descriptors[{index}].limit.unit", "must be SECOND, MINUTE, HOUR, DAY, MONTH or YEAR"
                )
            override = (int(raw.limit.requests_per_unit), unit.name.lower())
        found.append(Descriptor(tuple((entry.key, entry.value) for entry in raw.entries), hits, override))
    return found


def response_of(verdict: Verdict) -> Any:
    """The RateLimitResponse for ``verdict``."""
    response = rls_pb2.RateLimitResponse(overall_code=_Code.OVER_LIMIT if verdict.over else _Code.OK)
    for status in verdict.statuses:
        answer = response.statuses.add(code=_Code.OVER_LIMIT if status.over else _Code.OK)
        answer.limit_remaining = status.remaining
        if status.limit is not None:
            limit = status.limit
            answer.current_limit.requests_per_unit = limit.requests_per_unit
            answer.current_limit.unit = _Unit.Value(limit.unit.upper())
            answer.current_limit.name = limit.name
        if status.reset_s is not None:
            answer.duration_until_reset.FromNanoseconds(math.ceil(status.reset_s * 1e9))
    for key, value in verdict.headers:
        response.response_headers_to_add.add(key=key, value=value)
    return response


class RateLimitService:
    """``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` over a DecisionCore.

    Auth as the DecisionService: with client tokens configured, each call presents
    ``authorization: Bearer <token>`` (Envoy: the gRPC service's ``initial_metadata``),
    UNAUTHENTICATED without one, PERMISSION_DENIED for an unknown one; the token's
    caller owns the buckets, as for AcquireSlot.

    Args:
        settings: ``[rls]``.
        tokens: Token -> caller name (``config.auth.tokens()``); empty leaves it open.
        core: The core whose admission keeps the buckets; or ``attach`` it later (calls
            before are UNAVAILABLE).
        certificates: Whether client certificates name callers (``tls.require_client_cert``).
        meter_provider: Where the ``loadwarden.rls.*`` counters go; the global provider by default.
    """

    def __init__(
        self,
        settings: RlsSettings,
        tokens: Mapping[str, str] | None = None,
        *,
        core: DecisionCore | None = None,
        certificates: bool = False,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        self.stats = RlsStats()
        self._limiter = RlsLimiter(settings, self.stats)
        self._core = core
        self._callers = Callers(tokens, certificates=certificates)
        self._expected = frozenset(_digest(token.encode("utf-8")) for token in tokens or {})
        self._observe(meter_provider or metrics.get_meter_provider())

    def attach(self, core: DecisionCore) -> None:
        """Serves from ``core``'s buckets from now on."""
        self._core = core

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """The generic handlers for a grpc.aio server (``start_service(extra_handlers=...)``);
        an undecodable request is INVALID_ARGUMENT."""
        return (grpc.method_handlers_generic_handler(SERVICE_NAME, _handlers(self, SERVICE)),)

    @_rpc
    async def ShouldRateLimit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - the .proto's RPC name
        caller = await self._caller(context)
        if self._core is None:
            raise Unavailable("the rate-limit service is starting: no decision core yet", reason="starting")
        verdict = await self._limiter.decide(self._core, request.domain, descriptors_of(request), caller)
        return response_of(verdict)

    async def _caller(self, context: grpc.aio.ServicerContext) -> str:
        if self._expected:
            presented = _presented_token(context.invocation_metadata())
            if presented is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{SERVICE_NAME} needs a token: send 'authorization: Bearer <token>' metadata",
                )
            elif _digest(presented) not in self._expected:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"the token is not valid for {SERVICE_NAME}")
        return self._callers.of(context)

    def _observe(self, provider: metrics.MeterProvider) -> None:
        meter = provider.get_meter("loadwarden.server")
        stats = self.stats

        def hits(options: CallbackOptions) -> Iterable[Observation]:
            for key, counts in stats.snapshot().items():
                for result in RESULTS:
                    yield Observation(counts.get(result, 0), {"descriptor": key, "result": result})

        def near(options: CallbackOptions) -> Iterable[Observation]:
            for key, counts in stats.snapshot().items():
                yield Observation(counts.get("near_limit", 0), {"descriptor": key})

        def unknown(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(stats.unknown_domain_requests)

        meter.create_observable_counter(
            "loadwarden.rls.hits", [hits], "{hit}", "Rate-limit service hits by descriptor rule and result"
        )
        meter.create_observable_counter(
            "loadwarden.rls.near_limit_hits", [near], "{hit}", "Hits within a rule's limit past near_limit_ratio"
        )
        meter.create_observable_counter(
            "loadwarden.rls.unknown_domain_requests",
            [unknown],
            "{request}",
            "ShouldRateLimit calls for no [rls] domain",
        )


def protoset() -> bytes:
    """``envoy/service/ratelimit/v3/rls.proto`` and every file it imports, as a serialized
    FileDescriptorSet: what ``grpcurl -protoset`` reads where the port has no reflection."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: Any) -> None:
        if file.name in files:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files[file.name] = proto

    add(rls_pb2.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString()
