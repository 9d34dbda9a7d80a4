"""Hypothesis strategies for fuzzing every RPC of DecisionService and AdminService, and
the mesh's Envoy services: RateLimitService/ShouldRateLimit and
AggregatedDiscoveryService/StreamAggregatedResources.

Each strategy builds ``Call`` values: one RPC with a request message (or raw bytes
for the undecodable-bytes fuzzing; for ADS a ``Conversation``, the requests one
stream carries). Values mix valid ones (names of the pools, servers, operations and
rate-limit rules the fuzz service is started with, sensible numbers), so the valid
paths run too, with malformed ones: any unicode (NUL included), names of 129 to
200,000 characters, NaN and infinities, extreme integers, raw integers on enum
fields, repeated fields far over their caps, and ids that were never issued.
``LEASE_REF`` / ``DECISION_REF`` stand for a lease or decision id issued earlier in
the run; the sender swaps them for a real one.

Nothing here names the ``CANARY_POOL`` (nor the ``canary`` rate-limit domain): the
fuzz test uses them to check that the service still routes, limits and serves xDS
after every batch.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2 as _base  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as _ratelimit  # type: ignore[import-untyped]  # no stubs
from envoy.service.discovery.v3 import ads_pb2 as _ads  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.service.discovery.v3 import discovery_pb2 as _discovery  # (mypy reports the package once, above)
from envoy.service.ratelimit.v3 import rls_pb2 as _rls  # type: ignore[import-untyped]  # xds-protos: no stubs
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2 as _status  # type: ignore[import-untyped]  # xds-protos' googleapis: no stubs
from hypothesis import strategies as st

from loadwarden.v1 import admin_pb2 as _admin
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

DECISION = _pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN = _admin.DESCRIPTOR.services_by_name["AdminService"].full_name
CANARY_POOL = "canary"
POOLS = ("api", "ml", "ghost")  # "ghost" exists only while the fuzzer has created it
SERVERS = ("api-1", "api-2", "api-3", "ml-1", "nobody")
OPERATIONS = ("import", "latency", "poolop", "ghost-op")
STRATEGIES = ("round_robin", "least_connections", "p2c", "peak_ewma", "q_learning", "q_linear")
LIMIT_ALGORITHMS = ("fixed", "aimd", "gradient2")
PARAM_NAMES = (
    "choice_count",
    "decay_ms",
    "failure_penalty_ms",
    "default_rtt_ms",
    "alpha",
    "gamma",
    "epsilon",
    "epsilon_decay",
    "epsilon_min",
    "cpu_medium_percent",
    "cpu_high_percent",
    "active_medium_requests",
    "active_high_requests",
    "response_medium_ms",
    "response_high_ms",
    "initial_q",
    "virtual_loss",
    "unknown_load",
    "sample_size",
    "latency_scale_ms",
    "active_scale_requests",
    "td_error_clip",
    "min_limit",
    "max_limit",
    "backoff_ratio",
    "timeout_ms",
    "long_window",
    "rtt_tolerance",
    "queue_size",
    "smoothing",
)
LEASE_REF = "\x00lease-ref\x00"
DECISION_REF = "\x00decision-ref\x00"
NAME_ALPHABET = string.ascii_letters + string.digits + "._:@/-"


@dataclass(frozen=True)
class Conversation:
    """What a client says on a bidirectional stream (ADS).

    The sender writes ``requests`` at once. With ``ack`` it then reads one response per
    type URL it asked for and answers each as a client that applied it would: an ACK
    echoing its version and nonce, or (``nack``) a NACK with an error detail keeping the
    previous version. Then it half-closes and reads until the service ends the stream,
    or (``hold``) cancels it there, as a client that goes away does.
    """

    requests: tuple[Any, ...]  # DiscoveryRequests (xds-protos has no stubs: Any) or bytes
    ack: bool = False
    nack: bool = False
    hold: bool = False

    @property
    def raw(self) -> bool:
        return any(isinstance(request, bytes) for request in self.requests)

    def __str__(self) -> str:
        mode = "ack" if self.ack else "close"
        mode += "+nack" if self.nack else ""
        mode += "+hold" if self.hold else ""
        parts = (repr(r) if isinstance(r, bytes) else "{" + str(r).replace("\n", " ") + "}" for r in self.requests)
        return f"[{mode}] " + " | ".join(parts)


@dataclass(frozen=True)
class Call:
    """One RPC to send: ``/<service>/<method>`` with ``request``; ``service`` is the full
    name (``loadwarden.v1.DecisionService``, ``envoy.service.ratelimit.v3.RateLimitService``).

    ``request`` is a message, bytes sent as they are (no serializer), or for a
    bidirectional stream a ``Conversation``.
    """

    service: str
    method: str
    request: Message | bytes | Conversation

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"

    @property
    def streaming(self) -> bool:
        """A server stream (one request, answers until the client cancels)."""
        return self.method == "WatchLoadStatus"

    @property
    def raw(self) -> bool:
        """Bytes that are sent as they are, not a message."""
        request = self.request
        return isinstance(request, bytes) or (isinstance(request, Conversation) and request.raw)

    def describe(self, limit: int = 600) -> str:
        """A short description for a failure message (long values cut)."""
        text = repr(self.request) if isinstance(self.request, bytes) else str(self.request)
        text = text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
        return f"{self.service}/{self.method} {text}"


def _not_canary(value: str) -> str:
    return value + "-x" if value == CANARY_POOL else value


# --- scalars ----------------------------------------------------------------------

long_strings = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["a", "\x00", "é", "\U0001f642", "ab/", " "]),
    st.one_of(st.integers(129, 5_000), st.sampled_from([65_536, 200_000])),
)
odd_strings = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "é",
        "\U0001f642",
        "a" * 128,
        "a" * 129,
        "../..",
        "api ",
        "API",
        "\ufeffapi",
        "api\n",
        "%s%n",
        "' OR 1=1",
        "\\",
        "a/b:c@d.e-f_g",
    ]
)
texts = st.one_of(
    odd_strings,
    st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=130),
    st.text(max_size=40),  # any unicode but surrogates (protobuf strings are UTF-8), NUL included
    long_strings,
).map(_not_canary)


def names(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Mostly one of ``known``, otherwise any string."""
    return st.one_of(st.sampled_from(known), st.sampled_from(known), texts)


def refs(ref: str) -> st.SearchStrategy[str]:
    """An id issued earlier (``ref``), or any string (never issued)."""
    return st.one_of(st.just(ref), st.just(ref), texts)


floats = st.one_of(
    st.floats(),
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            -0.0,
            0.0,
            0.5,
            1.0,
            50.0,
            100.0,
            100.0001,
            1e308,
            -1e308,
            5e-324,
            86_400_000.0,
            86_400_000.5,
        ]
    ),
)
u32 = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 0, 1, 2, 9, 10, 100, 1_000, 1_001, 65_535, 86_400_000, 2**31 - 1, 2**31, 2**32 - 1]),
)
small_u32 = st.sampled_from([0, 0, 1, 2, 5, 10, 50, 100, 101, 1_000])
enum_values = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-1, 4))


# Bytes one repeated field may take: past the fuzz service's 1 MiB request cap, yet cheap to send often.
REPEATED_MAX_BYTES = 1_500_000


def _size(item: Any) -> int:
    return item.ByteSize() if isinstance(item, Message) else len(str(item).encode("utf-8"))


def _repeat(item: Any, n: int) -> list[Any]:
    return [item] * max(1, min(n, REPEATED_MAX_BYTES // (_size(item) + 2)))


def repeated(item: st.SearchStrategy[Any], huge: int = 3_000) -> st.SearchStrategy[list[Any]]:
    """A short list, or one item repeated up to ``huge`` times (far over every batch cap)."""
    return st.one_of(
        st.lists(item, max_size=4),
        st.lists(item, min_size=1, max_size=3),
        st.builds(_repeat, item, st.integers(1, huge)),
    )


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        floats,
        st.integers(-(2**60), 2**60),
        st.text(max_size=12),
        st.sampled_from(["action_mean", "zero", "optimistic"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=8,
)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


structs = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=12)), json_values, max_size=5).map(
        _struct
    ),
)


def blend(*strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``strategies``, each as often, however many alternatives each holds (``st.one_of``
    flattens nested ``one_of``s, so a strategy of five alternatives would weigh five)."""
    return st.sampled_from(strategies).flatmap(lambda strategy: strategy)


def _message(cls: type[Message], **fields: Any) -> Message:
    """``cls(**fields)`` without the fields drawn as None (unset submessages)."""
    return cls(**{k: v for k, v in fields.items() if v is not None})


def _call(service: str, method: str, cls: type[Message], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Call]:
    return st.builds(lambda **kw: Call(service, method, _message(cls, **kw)), **fields)


def _decision(method: str, cls: type[Message], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Call]:
    return _call(DECISION, method, cls, **fields)


def _admin_call(method: str, cls: type[Message], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Call]:
    return _call(ADMIN, method, cls, **fields)


pools = names(POOLS)
servers = names(SERVERS)
operations = names(OPERATIONS)

# --- DecisionService ----------------------------------------------------------------

select_server = _decision("SelectServer", _pb.SelectServerRequest, pool=pools, exclude_server_ids=repeated(servers))
report_outcome = _decision(
    "ReportOutcome",
    _pb.ReportOutcomeRequest,
    outcomes=repeated(
        st.builds(
            lambda **kw: _pb.Outcome(**kw),
            decision_id=refs(DECISION_REF),
            success=st.booleans(),
            latency_ms=floats,
            status=st.one_of(st.just(""), texts),
        )
    ),
)
acquire_slot = _decision(
    "AcquireSlot",
    _pb.AcquireSlotRequest,
    pool=pools,
    request_id=st.one_of(st.just(""), st.sampled_from(["r1", "r2"]), texts),
    priority=st.one_of(st.integers(0, 9), u32),
    max_wait_ms=st.one_of(st.just(0), st.just(0), small_u32, u32),
    lease_ttl_ms=st.one_of(st.just(0), small_u32, u32),
    client_key=st.one_of(st.just(""), st.sampled_from(["c1", "c2"]), texts),
    select_server=st.booleans(),
)
renew_lease = _decision("RenewLease", _pb.RenewLeaseRequest, lease_id=refs(LEASE_REF), ttl_ms=st.one_of(small_u32, u32))
release_slot = _decision(
    "ReleaseSlot",
    _pb.ReleaseSlotRequest,
    lease_id=refs(LEASE_REF),
    request_id=st.one_of(st.just(""), texts),
    success=st.booleans(),
    latency_ms=floats,
)
get_batch_size = _decision("GetBatchSize", _pb.GetBatchSizeRequest, operation=operations)
report_batch = _decision(
    "ReportBatch",
    _pb.ReportBatchRequest,
    reports=repeated(
        st.builds(
            lambda **kw: _pb.BatchReport(**kw),
            operation=operations,
            decision_id=st.one_of(st.just(""), texts),
            batch_size=st.one_of(small_u32, u32),
            duration_ms=floats,
            success=st.booleans(),
        )
    ),
)
report_load = _decision(
    "ReportLoad",
    _pb.ReportLoadRequest,
    reports=repeated(
        st.builds(
            lambda **kw: _common.LoadReport(**kw),
            pool=pools,
            server_id=servers,
            cpu_percent=floats,
            memory_percent=floats,
            active_requests=u32,
            mean_latency_ms=floats,
            error_rate=floats,
        )
    ),
)
get_load_status = _decision("GetLoadStatus", _pb.GetLoadStatusRequest, pool=st.one_of(st.just(""), pools))
watch_load_status = _decision(
    "WatchLoadStatus",
    _pb.WatchLoadStatusRequest,
    pool=st.one_of(st.just(""), pools),
    interval_ms=st.one_of(st.just(0), small_u32, u32),
)

get_recommendations = _decision(
    "GetRecommendations",
    _pb.GetRecommendationsRequest,
    pools=repeated(pools, huge=1_200),
    horizon_s=st.one_of(small_u32, u32),
    include_operations=st.booleans(),
)

# Well-formed requests about things that exist, so that the paths past validation run as often as the rejections.
MEMBERS = (("api", "api-1"), ("api", "api-2"), ("api", "api-3"), ("ml", "ml-1"))
_valid_pools = st.sampled_from(("api", "ml"))
_latencies = st.floats(0.0, 10_000.0)
_percent = st.floats(0.0, 100.0)


def _load_report(
    member: tuple[str, str], cpu: float, memory: float, active: int, latency: float, error_rate: float
) -> _common.LoadReport:
    return _common.LoadReport(
        pool=member[0],
        server_id=member[1],
        cpu_percent=cpu,
        memory_percent=memory,
        active_requests=active,
        mean_latency_ms=latency,
        error_rate=error_rate,
    )


VALID_DECISION_CALLS: dict[str, st.SearchStrategy[Call]] = {
    "SelectServer": _decision(
        "SelectServer",
        _pb.SelectServerRequest,
        pool=_valid_pools,
        exclude_server_ids=st.lists(st.sampled_from(SERVERS), max_size=2),
    ),
    "ReportOutcome": _decision(
        "ReportOutcome",
        _pb.ReportOutcomeRequest,
        outcomes=st.lists(
            st.builds(
                lambda **kw: _pb.Outcome(**kw),
                decision_id=st.just(DECISION_REF),
                success=st.booleans(),
                latency_ms=_latencies,
            ),
            min_size=1,
            max_size=5,
        ),
    ),
    "AcquireSlot": _decision(
        "AcquireSlot",
        _pb.AcquireSlotRequest,
        pool=_valid_pools,
        request_id=st.one_of(st.just(""), st.text(NAME_ALPHABET, min_size=1, max_size=8)),
        priority=st.integers(0, 9),
        max_wait_ms=st.sampled_from([0, 0, 10, 50]),
        lease_ttl_ms=st.sampled_from([0, 100, 500, 2_000]),
        client_key=st.sampled_from(["", "c1", "c2", "c3"]),
        select_server=st.booleans(),
    ),
    "RenewLease": _decision(
        "RenewLease", _pb.RenewLeaseRequest, lease_id=st.just(LEASE_REF), ttl_ms=st.sampled_from([0, 100, 1_000, 5_000])
    ),
    "ReleaseSlot": _decision(
        "ReleaseSlot", _pb.ReleaseSlotRequest, lease_id=st.just(LEASE_REF), success=st.booleans(), latency_ms=_latencies
    ),
    "GetBatchSize": _decision(
        "GetBatchSize", _pb.GetBatchSizeRequest, operation=st.sampled_from(("import", "latency", "poolop"))
    ),
    "ReportBatch": _decision(
        "ReportBatch",
        _pb.ReportBatchRequest,
        reports=st.lists(
            st.builds(
                lambda **kw: _pb.BatchReport(**kw),
                operation=st.sampled_from(("import", "latency", "poolop")),
                batch_size=st.integers(1, 1_000),
                duration_ms=_latencies,
                success=st.booleans(),
            ),
            min_size=1,
            max_size=5,
        ),
    ),
    "ReportLoad": _decision(
        "ReportLoad",
        _pb.ReportLoadRequest,
        reports=st.lists(
            st.builds(
                _load_report,
                st.sampled_from(MEMBERS),
                _percent,
                _percent,
                st.integers(0, 1_000),
                _latencies,
                st.floats(0.0, 1.0),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    "GetLoadStatus": _decision("GetLoadStatus", _pb.GetLoadStatusRequest, pool=st.sampled_from(("", "api", "ml"))),
    "GetRecommendations": _decision(
        "GetRecommendations",
        _pb.GetRecommendationsRequest,
        pools=st.lists(st.sampled_from(("api", "ml", "canary")), max_size=3),
        horizon_s=st.sampled_from([0, 60, 900, 3_600]),
        include_operations=st.booleans(),
    ),
    "WatchLoadStatus": _decision(
        "WatchLoadStatus",
        _pb.WatchLoadStatusRequest,
        pool=st.sampled_from(("", "api", "ml")),
        interval_ms=st.sampled_from([0, 100, 1_000]),
    ),
}

FUZZ_DECISION_CALLS: dict[str, st.SearchStrategy[Call]] = {
    "SelectServer": select_server,
    "ReportOutcome": report_outcome,
    "AcquireSlot": acquire_slot,
    "RenewLease": renew_lease,
    "ReleaseSlot": release_slot,
    "GetBatchSize": get_batch_size,
    "ReportBatch": report_batch,
    "ReportLoad": report_load,
    "GetLoadStatus": get_load_status,
    "GetRecommendations": get_recommendations,
    "WatchLoadStatus": watch_load_status,
}
# Per method: a well-formed request one time in three, a fuzzed one otherwise.
DECISION_CALLS: dict[str, st.SearchStrategy[Call]] = {
    name: st.one_of(VALID_DECISION_CALLS[name], fuzzed, fuzzed) for name, fuzzed in FUZZ_DECISION_CALLS.items()
}

# --- AdminService -------------------------------------------------------------------

addresses = st.one_of(st.sampled_from(["127.0.0.1:9001", "backend-3.internal:443", "[::1]:80", "h:1"]), texts)
server_specs = st.builds(
    lambda **kw: _common.ServerSpec(**kw), id=servers, address=addresses, weight=st.one_of(small_u32, u32)
)
outliers = st.one_of(
    st.none(),
    st.builds(
        lambda **kw: _common.OutlierDetection(**kw),
        consecutive_failures=st.one_of(small_u32, u32),
        base_ejection_time_ms=st.one_of(small_u32, u32),
        max_ejection_time_ms=st.one_of(small_u32, u32),
        max_ejection_percent=st.one_of(small_u32, u32),
        panic_threshold_percent=st.one_of(small_u32, u32),
        disabled=st.booleans(),
    ),
)
pool_configs = st.builds(
    lambda **kw: _message(_common.PoolConfig, **kw),
    name=pools,
    strategy=st.one_of(st.just(""), st.sampled_from(STRATEGIES), texts),
    strategy_params=structs,
    load_report_ttl_ms=st.one_of(small_u32, u32),
    require_load_report=st.booleans(),
    max_concurrency=st.one_of(small_u32, u32),
    max_queue_length=st.one_of(small_u32, u32),
    max_wait_ms=st.one_of(small_u32, u32),
    lease_ttl_ms=st.one_of(small_u32, u32),
    limit_algorithm=st.one_of(st.just(""), st.sampled_from(LIMIT_ALGORITHMS), texts),
    limit_params=structs,
    rate_limit=st.one_of(
        st.just(""),
        st.sampled_from(
            ["30/minute", "5/second", "1/hour", "0/second", "9999999999/second", "x/minute", "5/fortnight"]
        ),
        texts,
    ),
    rate_burst=st.one_of(small_u32, u32),
    servers=repeated(server_specs, huge=200),
    outlier_detection=outliers,
    slow_start_ms=st.one_of(small_u32, u32),
    rate_limit_keys=st.one_of(small_u32, u32),
)
operation_configs = st.builds(
    lambda **kw: _message(_common.OperationConfig, **kw),
    name=operations,
    min_batch_size=st.one_of(small_u32, u32),
    max_batch_size=st.one_of(small_u32, u32),
    default_batch_size=st.one_of(small_u32, u32),
    low_threshold_percent=floats,
    high_threshold_percent=floats,
    cooldown_ms=st.one_of(small_u32, u32),
    min_step=st.one_of(small_u32, u32),
    mode=st.one_of(st.integers(0, 2), enum_values),
    target_latency_ms=floats,
    additive_step=st.one_of(small_u32, u32),
    backoff_ratio=floats,
    load_source=st.one_of(st.integers(0, 2), enum_values),
    pool=st.one_of(st.just(""), pools),
)

_extra_pools = st.sampled_from(("ghost", "extra-1", "extra-2", "extra-3"))
_valid_specs = st.builds(
    lambda sid, port, weight: _common.ServerSpec(id=sid, address=f"127.0.0.1:{port}", weight=weight),
    st.sampled_from(("api-1", "api-2", "api-4", "x1", "x2")),
    st.integers(1, 65_535),
    st.integers(0, 10),
)
_valid_pool_configs = st.builds(
    lambda **kw: _message(_common.PoolConfig, **kw),
    name=st.one_of(_valid_pools, _extra_pools),
    strategy=st.sampled_from(("", *STRATEGIES)),
    max_concurrency=st.sampled_from([0, 1, 4, 100]),
    max_queue_length=st.sampled_from([0, 1, 8]),
    max_wait_ms=st.sampled_from([10, 100]),
    lease_ttl_ms=st.sampled_from([0, 1_000]),
    limit_algorithm=st.sampled_from(("", *LIMIT_ALGORITHMS)),
    rate_limit=st.sampled_from(("", "100/second")),
    servers=st.lists(_valid_specs, max_size=3, unique_by=lambda spec: spec.id),
    slow_start_ms=st.sampled_from([0, 1_000]),
)
_valid_operation_configs = st.builds(
    lambda name, low, high, mode, source: _common.OperationConfig(
        name=name,
        min_batch_size=low,
        max_batch_size=high,
        mode=mode,
        target_latency_ms=100.0,
        load_source=source,
        pool="api" if source == _common.LOAD_SOURCE_POOL else "",
    ),
    st.sampled_from(("import", "latency", "ghost-op")),
    st.integers(1, 10),
    st.integers(10, 1_000),
    st.sampled_from([0, 1, 2]),
    st.sampled_from([0, 1, 2]),
)

VALID_ADMIN_CALLS: dict[str, st.SearchStrategy[Call]] = {
    "ConfigurePool": _admin_call("ConfigurePool", _admin.ConfigurePoolRequest, pool=_valid_pool_configs),
    "DeletePool": _admin_call("DeletePool", _admin.DeletePoolRequest, pool=_extra_pools),
    "RegisterServer": _admin_call(
        "RegisterServer", _admin.RegisterServerRequest, pool=st.one_of(_valid_pools, _extra_pools), server=_valid_specs
    ),
    "DeregisterServer": _admin_call(
        "DeregisterServer",
        _admin.DeregisterServerRequest,
        pool=st.one_of(_valid_pools, _extra_pools),
        server_id=st.sampled_from(("api-4", "x1", "x2")),
    ),
    "DrainServer": _admin_call(
        "DrainServer",
        _admin.DrainServerRequest,
        pool=st.just("api"),
        server_id=st.sampled_from(("api-1", "api-2", "api-3")),
        state=st.sampled_from((_admin.DRAIN_STATE_DRAINING, _admin.DRAIN_STATE_SERVING)),
    ),
    "ConfigureOperation": _admin_call(
        "ConfigureOperation", _admin.ConfigureOperationRequest, operation=_valid_operation_configs
    ),
    "DeleteOperation": _admin_call(
        "DeleteOperation", _admin.DeleteOperationRequest, operation=st.sampled_from(("ghost-op",))
    ),
}

FUZZ_ADMIN_CALLS: dict[str, st.SearchStrategy[Call]] = {
    "ConfigurePool": _admin_call("ConfigurePool", _admin.ConfigurePoolRequest, pool=st.one_of(st.none(), pool_configs)),
    "DeletePool": _admin_call("DeletePool", _admin.DeletePoolRequest, pool=pools),
    "RegisterServer": _admin_call(
        "RegisterServer", _admin.RegisterServerRequest, pool=pools, server=st.one_of(st.none(), server_specs)
    ),
    "DeregisterServer": _admin_call("DeregisterServer", _admin.DeregisterServerRequest, pool=pools, server_id=servers),
    "DrainServer": _admin_call(
        "DrainServer", _admin.DrainServerRequest, pool=pools, server_id=servers, state=enum_values
    ),
    "ConfigureOperation": _admin_call(
        "ConfigureOperation", _admin.ConfigureOperationRequest, operation=st.one_of(st.none(), operation_configs)
    ),
    "DeleteOperation": _admin_call("DeleteOperation", _admin.DeleteOperationRequest, operation=operations),
}
# Per method: a well-formed request one time in three, a fuzzed one otherwise.
ADMIN_CALLS: dict[str, st.SearchStrategy[Call]] = {
    name: st.one_of(VALID_ADMIN_CALLS[name], fuzzed, fuzzed) for name, fuzzed in FUZZ_ADMIN_CALLS.items()
}

# --- raw bytes ------------------------------------------------------------------------

ALL_METHODS = tuple([(DECISION, m) for m in DECISION_CALLS] + [(ADMIN, m) for m in ADMIN_CALLS])


def _flip(data: bytes, position: int, value: int) -> bytes:
    if not data:
        return bytes([value])
    i = position % len(data)
    return data[:i] + bytes([value]) + data[i + 1 :]


def _cut(data: bytes, keep: int) -> bytes:
    return data[: keep % (len(data) + 1)]


def _serialized(call: Call) -> bytes:
    request = call.request
    if isinstance(request, Conversation):
        request = request.requests[0] if request.requests else b""
    return request if isinstance(request, bytes) else request.SerializeToString()


def garbage(calls: st.SearchStrategy[Call]) -> st.SearchStrategy[bytes]:
    """Bytes that are mostly no message: random, ``calls``' requests with a byte changed or cut, classics."""
    valid = calls.map(_serialized)
    return st.one_of(
        st.binary(max_size=256),
        st.builds(_flip, valid, st.integers(0, 10**6), st.integers(0, 255)),
        st.builds(_cut, valid, st.integers(0, 10**6)),
        st.sampled_from(
            [
                b"\xff" * 11,  # a varint that never ends
                b"\x0a\xff\xff\xff\xff\x0f",  # a length far beyond the message
                b"\x08",  # a tag without its value
                b"\x0b\x0c",  # group start/end (deprecated wire types)
                b"\x0f",  # wire type 7: invalid
                b"\x00",  # field number 0: invalid
                b"\x12\x02\xc3\x28",  # a string field holding invalid UTF-8
                b"\x0a\x03\xed\xa0\x80",  # a surrogate encoded in UTF-8
                (b"\x5a\x02" * 2) + b"\x5a\x00" * 2,  # nested empty messages
                b"\x1a" + b"\x80" * 9 + b"\x01",  # a 10-byte length varint
            ]
        ),
    )


raw_calls = st.builds(
    lambda target, data: Call(target[0], target[1], data),
    st.sampled_from(ALL_METHODS),
    garbage(st.one_of(*DECISION_CALLS.values(), *ADMIN_CALLS.values())),
)

# --- the mesh: Envoy's rate-limit service and ADS -------------------------------------------

RLS = _rls.DESCRIPTOR.services_by_name["RateLimitService"].full_name
ADS = _ads.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
SHOULD_RATE_LIMIT = "ShouldRateLimit"
STREAM_RESOURCES = "StreamAggregatedResources"
# The fuzz service's [rls] domains (``canary`` is the health probe's, never named here).
RLS_DOMAINS = ("edge", "api", "nowhere")
RLS_KEYS = ("remote_address", "user", "client_id", "generic_key", "path", "method", "tenant", "plan")
RLS_VALUES = ("10.0.0.1", "10.0.0.2", "u1", "c1", "c2", "free", "pro", "/api/x", "/other", "POST", "GET", "t1")
SHADOW_RULE = ("edge", "user")  # (domain, key): the shadow-mode rule, a request descriptor of that one entry
UNLIMITED_RULE = ("edge", "generic_key", "free")
_Entry = _ratelimit.RateLimitDescriptor.Entry
u64 = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 0, 1, 2, 100, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64 - 1]),
)


def _descriptor(
    entries: list[tuple[str, str]], limit: Any = None, hits: int | None = None
) -> _ratelimit.RateLimitDescriptor:
    descriptor = _ratelimit.RateLimitDescriptor(entries=[_Entry(key=k, value=v) for k, v in entries])
    if limit is not None:
        descriptor.limit.CopyFrom(limit)
    if hits is not None:
        descriptor.hits_addend.value = hits
    return descriptor


def _rls_request(domain: str, descriptors: list[Any], hits: int) -> Call:
    return Call(RLS, SHOULD_RATE_LIMIT, _rls.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits))


_entries = repeated(
    st.tuples(st.one_of(st.just(""), names(RLS_KEYS)), st.one_of(st.just(""), names(RLS_VALUES))), huge=100
)
_overrides = st.one_of(
    st.none(),
    st.builds(
        lambda rpu, unit: _ratelimit.RateLimitDescriptor.RateLimitOverride(requests_per_unit=rpu, unit=unit),
        u32,
        st.one_of(st.integers(0, 7), enum_values),  # 0 is UNKNOWN; 7 (WEEK) only in the response's enum
    ),
)
fuzzed_rls = st.builds(
    _rls_request,
    st.one_of(st.just(""), names(RLS_DOMAINS)),
    repeated(
        st.builds(_descriptor, _entries, _overrides, st.one_of(st.none(), st.none(), u64)),
        huge=2_000,  # Envoy sends a handful; each costs the service ~25 µs, there is no cap but the 1 MiB
    ),
    u32,  # the request's hits_addend is a uint32, a descriptor's a UInt64Value
)

# Well-formed requests that reach the configured rules, from few values: their buckets run out.
_edge_descriptors = st.one_of(
    st.sampled_from(("10.0.0.1", "10.0.0.2", "10.0.0.3")).map(lambda v: [("remote_address", v)]),
    st.sampled_from(("u1", "u2")).map(lambda v: [("user", v)]),
    st.sampled_from(("c1", "c2", "c3")).map(lambda v: [("client_id", v)]),  # the ml pool's buckets
    st.just([UNLIMITED_RULE[1:]]),
    st.tuples(st.sampled_from(("/api/x", "/api/y", "/other")), st.sampled_from(("POST", "GET"))).map(
        lambda pm: [("path", pm[0]), ("method", pm[1])]
    ),
    st.sampled_from(("/api/x", "/api/y")).map(lambda v: [("path", v)]),
)
_api_descriptors = st.one_of(
    st.tuples(st.sampled_from(("t1", "t2")), st.sampled_from(("free", "pro"))).map(
        lambda tp: [("tenant", tp[0]), ("plan", tp[1])]
    ),
    st.sampled_from(("u1", "u2")).map(lambda v: [("user", v)]),
)
_valid_overrides = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.builds(
        lambda rpu, unit: _ratelimit.RateLimitDescriptor.RateLimitOverride(requests_per_unit=rpu, unit=unit),
        st.sampled_from([0, 3, 1_000]),
        st.integers(1, 6),
    ),
)
_valid_hits = st.one_of(st.none(), st.none(), st.none(), st.sampled_from([0, 1, 5, 250]))


def _valid_rls(domain: str, descriptors: st.SearchStrategy[list[tuple[str, str]]]) -> st.SearchStrategy[Call]:
    return st.builds(
        _rls_request,
        st.just(domain),
        st.lists(st.builds(_descriptor, descriptors, _valid_overrides, _valid_hits), min_size=1, max_size=3),
        st.sampled_from([0, 0, 1, 2, 5]),
    )


valid_rls = st.one_of(_valid_rls("edge", _edge_descriptors), _valid_rls("api", _api_descriptors))

# ADS: type URLs the service serves, ones it does not, and malformed ones.
_TYPE = "type.googleapis.com/envoy.config."
LISTENER, ROUTE, CLUSTER, ENDPOINT = (
    _TYPE + "listener.v3.Listener",
    _TYPE + "route.v3.RouteConfiguration",
    _TYPE + "cluster.v3.Cluster",
    _TYPE + "endpoint.v3.ClusterLoadAssignment",
)
SERVED_TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
type_urls = st.one_of(
    st.sampled_from(SERVED_TYPES),
    st.sampled_from(SERVED_TYPES),
    st.sampled_from(
        [
            "",
            "*",
            "type.googleapis.com/",
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "type.googleapis.com/envoy.config.listener.v3.Listener ",
            LISTENER.upper(),
            LISTENER + "\x00",
            "type.googleapis.com/" + "x" * 1_024,
        ]
    ),
    texts,
)
_resource_names = names(("api", "ml", "ghost", "extra-1", "*", ""))
_nonces = st.one_of(st.just(""), st.sampled_from(["1", "2", "3", "0", "-1", "01"]), texts)
_nodes = st.one_of(
    st.none(),
    st.builds(
        lambda **kw: _base.Node(**kw),
        id=st.one_of(st.just(""), texts),
        cluster=st.one_of(st.just(""), texts),
        user_agent_name=st.one_of(st.just("grpc-python"), texts),
        client_features=st.lists(texts, max_size=3),
    ),
)
_error_details = st.one_of(
    st.none(),
    st.builds(lambda code, message: _status.Status(code=code, message=message), enum_values, texts),
)
discovery_requests = st.builds(
    lambda **kw: _message(_discovery.DiscoveryRequest, **kw),
    version_info=st.one_of(st.just(""), texts),
    node=_nodes,
    resource_names=st.one_of(
        repeated(_resource_names, huge=100),
        st.builds(_repeat, _resource_names, st.sampled_from([1_000, 10_000, 10_001])),  # the service's cap: 10,000
    ),
    resource_locators=st.lists(st.builds(lambda n: _discovery.ResourceLocator(name=n), texts), max_size=2),
    type_url=type_urls,
    response_nonce=_nonces,
    error_detail=_error_details,
)
fuzzed_ads = st.builds(
    lambda requests: Call(ADS, STREAM_RESOURCES, Conversation(tuple(requests))),
    st.lists(discovery_requests, max_size=4),
)


def _subscriptions(subscribed: list[tuple[str, list[str]]], node: str) -> tuple[Message, ...]:
    return tuple(
        _discovery.DiscoveryRequest(node=_base.Node(id=node), type_url=t, resource_names=n) for t, n in subscribed
    )


# Well-formed: a client subscribes to some of the pools' resources (by name, "*" or the legacy
# wildcard), then ACKs (or NACKs) what it gets, and leaves by half-closing or cancelling.
valid_ads = st.builds(
    lambda subscribed, node, nack, hold: Call(
        ADS, STREAM_RESOURCES, Conversation(_subscriptions(subscribed, node), ack=True, nack=nack, hold=hold)
    ),
    st.lists(
        st.tuples(
            st.sampled_from(SERVED_TYPES),
            st.one_of(st.lists(st.sampled_from(("api", "ml", "ghost")), max_size=3, unique=True), st.just(["*"])),
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda subscription: subscription[0],
    ),
    st.sampled_from(("fuzz-node-1", "fuzz-node-2")),
    st.booleans(),
    st.booleans(),
)

# Per method: a well-formed request one time in three, a fuzzed one otherwise.
MESH_CALLS: dict[str, st.SearchStrategy[Call]] = {
    SHOULD_RATE_LIMIT: blend(valid_rls, fuzzed_rls, fuzzed_rls),
    STREAM_RESOURCES: blend(valid_ads, fuzzed_ads, fuzzed_ads),
}
_mesh_garbage = garbage(st.one_of(*MESH_CALLS.values()))
mesh_raw_calls = blend(
    st.builds(lambda data: Call(RLS, SHOULD_RATE_LIMIT, data), _mesh_garbage),
    st.builds(
        lambda data: Call(ADS, STREAM_RESOURCES, Conversation(tuple(data))),
        st.lists(_mesh_garbage, min_size=1, max_size=3),
    ),
)
