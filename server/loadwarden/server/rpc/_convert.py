"""Protobuf <-> domain translation. Every check names the request field it rejects."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from loadwarden.policy import (
    NAME_CHARS,
    Backend,
    BatchAnswer,
    Health,
    InvalidArgument,
    LoadSample,
    LocalChoice,
    LocalInFlight,
    Operation,
    OperationSettings,
    Pool,
    PoolSettings,
    ServerSpec,
    check_count,
    check_name,
    check_range,
    check_ttl_ms,
    parse_operation,
    parse_pool,
    parse_server,
    shown,
)
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

from ..engine._admission import Answer, Denial, Granted, Lease, SlotRequest
from ..engine._core import BatchReportIn, DecisionCore, LoadReportIn, OutcomeReport
from ..engine._loadmonitor import HostMonitor
from ..engine._orca_limits import (
    MAX_APPLICATION_UTILIZATION,
    MAX_NAMED_METRICS,
    MAX_RATE,
    NAMED_METRIC_MAX_LEN,
    NAMED_METRIC_PATTERN,
)

MAX_BATCH = 1_000
MAX_EXCLUDE = 64
MAX_LATENCY_MS = 86_400_000.0
MAX_ACTIVE_REQUESTS = 1_000_000
MAX_STATUS_LEN = 64
MAX_LOCAL_FEATURES = 16  # LocalDecision.features values, at most
FEATURE_LIMIT = 10.0  # largest LocalDecision.features value (q_linear clips its features there)
MAX_LOCAL_STATE_LEN = 2_048  # LocalDecision.state characters, at most
MAX_SAMPLE_WEIGHT = 1_000_000.0  # LocalDecision.sample_weight, at most
MAX_PRIORITY = 9
MAX_CLIENT_INSTANCE_LEN = 64  # ReportOutcomeRequest.client_instance characters, at most
MAX_IN_FLIGHT_POOLS = 100  # ReportOutcomeRequest.in_flight entries, at most
MAX_IN_FLIGHT_SERVERS = 10_000  # servers over every in_flight entry, at most
MAX_WAIT_MS = 3_600_000

_DENIAL = {
    Denial.AT_CAPACITY: _pb.DENIAL_REASON_AT_CAPACITY,
    Denial.QUEUE_TIMEOUT: _pb.DENIAL_REASON_QUEUE_TIMEOUT,
    Denial.NO_ELIGIBLE_SERVER: _pb.DENIAL_REASON_NO_ELIGIBLE_SERVER,
}

_HEALTH = {
    Health.SERVING: _common.SERVER_STATE_SERVING,
    Health.STALE: _common.SERVER_STATE_STALE,
    Health.DRAINING: _common.SERVER_STATE_DRAINING,
    Health.EJECTED: _common.SERVER_STATE_EJECTED,
    Health.UNHEALTHY: _common.SERVER_STATE_UNHEALTHY,
    Health.DEGRADED: _common.SERVER_STATE_DEGRADED,
}


def check_batch(entries: Any, field: str) -> None:
    """A repeated field must hold 1 to MAX_BATCH entries."""
    if not 1 <= len(entries) <= MAX_BATCH:
        raise InvalidArgument(field, f"must hold 1-{MAX_BATCH} entries, got {len(entries)}")


def exclusions(ids: Any) -> frozenset[str]:
    if len(ids) > MAX_EXCLUDE:
        raise InvalidArgument("exclude_server_ids", f"at most {MAX_EXCLUDE} ids, got {len(ids)}")
    return frozenset(check_name(v, f"exclude_server_ids[{i}]") for i, v in enumerate(ids))


def outcomes(entries: Any, *, may_be_empty: bool = False) -> list[OutcomeReport]:
    """ReportOutcomeRequest.outcomes, checked: 1-1,000 entries (0 allowed with ``may_be_empty``)."""
    if not (may_be_empty and not entries):
        check_batch(entries, "outcomes")
    out = []
    names: set[str] = set()  # local pool and server names already checked in this batch
    for i, o in enumerate(entries):
        where = f"outcomes[{i}]"
        if len(o.status) > MAX_STATUS_LEN or not o.status.isprintable():
            raise InvalidArgument(f"{where}.status", f"must be at most {MAX_STATUS_LEN} printable characters")
        local = None
        if o.HasField("local"):
            if o.decision_id:
                raise InvalidArgument(f"{where}.decision_id", "must be empty when local is set")
            local = local_choice(o.local, f"{where}.local", names)
        out.append(
            OutcomeReport(
                decision_id="" if local is not None else check_name(o.decision_id, f"{where}.decision_id"),
                success=o.success,
                latency_ms=check_range(o.latency_ms, f"{where}.latency_ms", 0.0, MAX_LATENCY_MS),
                status=o.status,
                local=local,
            )
        )
    return out


def local_choice(local: _pb.LocalDecision, where: str, names: set[str]) -> LocalChoice:
    """A LocalDecision, checked: names (those in ``names`` passed already; checked ones are
    added), at most MAX_LOCAL_FEATURES features in 0-FEATURE_LIMIT, a state of at most
    MAX_LOCAL_STATE_LEN characters, a sample weight of 1-MAX_SAMPLE_WEIGHT."""
    features = tuple(local.features)
    if len(features) > MAX_LOCAL_FEATURES:
        raise InvalidArgument(f"{where}.features", f"at most {MAX_LOCAL_FEATURES} values, got {len(features)}")
    for j, value in enumerate(features):
        check_range(value, f"{where}.features[{j}]", 0.0, FEATURE_LIMIT)
    if len(local.state) > MAX_LOCAL_STATE_LEN or not local.state.isprintable():
        raise InvalidArgument(f"{where}.state", f"must be at most {MAX_LOCAL_STATE_LEN} printable characters")
    weight = local.sample_weight or 1.0
    check_range(weight, f"{where}.sample_weight", 1.0, MAX_SAMPLE_WEIGHT)
    pool, server_id = local.pool, local.server_id
    for name, field in ((pool, "pool"), (server_id, "server_id")):
        if name not in names:
            names.add(check_name(name, f"{where}.{field}"))
    return LocalChoice(
        pool=pool,
        server_id=server_id,
        features=features,
        state=local.state,
        weight=weight,
    )


def client_instance(name: str) -> str:
    """A client_instance (ReportOutcomeRequest, WatchRoutesRequest), checked: name rules, 1-64 characters."""
    instance = check_name(name, "client_instance")
    if len(instance) > MAX_CLIENT_INSTANCE_LEN:
        raise InvalidArgument("client_instance", f"at most {MAX_CLIENT_INSTANCE_LEN} characters, got {len(instance)}")
    return instance


def local_in_flight(request: _pb.ReportOutcomeRequest) -> tuple[str, list[LocalInFlight]]:
    """ReportOutcomeRequest's client_instance and in_flight, checked: an instance name when
    there are counts, at most MAX_IN_FLIGHT_POOLS distinct pools and MAX_IN_FLIGHT_SERVERS
    servers in all, distinct server ids per pool, one count of 0-MAX_ACTIVE_REQUESTS each."""
    entries = request.in_flight
    if not entries:
        if request.client_instance:
            check_name(request.client_instance, "client_instance")
        return "", []
    instance = client_instance(request.client_instance)
    if len(entries) > MAX_IN_FLIGHT_POOLS:
        raise InvalidArgument("in_flight", f"at most {MAX_IN_FLIGHT_POOLS} pools, got {len(entries)}")
    total = sum(len(entry.server_ids) for entry in entries)
    if total > MAX_IN_FLIGHT_SERVERS:
        raise InvalidArgument("in_flight", f"at most {MAX_IN_FLIGHT_SERVERS} servers in all, got {total}")
    out = []
    pools: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"in_flight[{i}]"
        pool = check_name(entry.pool, f"{where}.pool")
        if pool in pools:
            raise InvalidArgument(f"{where}.pool", f"names pool {pool!r} twice")
        pools.add(pool)
        if len(entry.counts) != len(entry.server_ids):
            raise InvalidArgument(
                f"{where}.counts", f"must hold one count per server id: {len(entry.counts)} for {len(entry.server_ids)}"
            )
        counts: dict[str, int] = {}
        for j, (server_id, count) in enumerate(zip(entry.server_ids, entry.counts, strict=True)):
            check_name(server_id, f"{where}.server_ids[{j}]")
            if server_id in counts:
                raise InvalidArgument(f"{where}.server_ids[{j}]", f"names server {server_id!r} twice")
            counts[server_id] = check_count(count, f"{where}.counts[{j}]", 0, MAX_ACTIVE_REQUESTS)
        out.append(LocalInFlight(pool, counts, entry.complete))
    return instance, out


def load_reports(entries: Any) -> list[LoadReportIn]:
    check_batch(entries, "reports")
    out = []
    for i, r in enumerate(entries):
        where = f"reports[{i}]"
        sample = LoadSample(
            cpu_percent=check_range(r.cpu_percent, f"{where}.cpu_percent", 0.0, 100.0),
            memory_percent=check_range(r.memory_percent, f"{where}.memory_percent", 0.0, 100.0),
            active_requests=check_count(r.active_requests, f"{where}.active_requests", 0, MAX_ACTIVE_REQUESTS),
            mean_latency_ms=check_range(r.mean_latency_ms, f"{where}.mean_latency_ms", 0.0, MAX_LATENCY_MS),
            error_rate=check_range(r.error_rate, f"{where}.error_rate", 0.0, 1.0),
            application_utilization=check_range(
                r.application_utilization, f"{where}.application_utilization", 0.0, MAX_APPLICATION_UTILIZATION
            ),
            requests_per_second=check_range(r.requests_per_second, f"{where}.requests_per_second", 0.0, MAX_RATE),
            errors_per_second=check_range(r.errors_per_second, f"{where}.errors_per_second", 0.0, MAX_RATE),
            named_metrics=_named_metrics(r.named_metrics, f"{where}.named_metrics"),
        )
        out.append(
            LoadReportIn(
                pool=check_name(r.pool, f"{where}.pool"),
                server_id=check_name(r.server_id, f"{where}.server_id"),
                sample=sample,
            )
        )
    return out


def _named_metrics(values: Any, field: str) -> dict[str, float]:
    if len(values) > MAX_NAMED_METRICS:
        raise InvalidArgument(field, f"at most {MAX_NAMED_METRICS} entries, got {len(values)}")
    out = {}
    for name, value in sorted(values.items()):
        if not NAMED_METRIC_PATTERN.fullmatch(name):
            raise InvalidArgument(
                field, f"names are 1-{NAMED_METRIC_MAX_LEN} characters from {NAME_CHARS}, got {shown(name)}"
            )
        if not math.isfinite(value):
            raise InvalidArgument(f"{field}[{shown(name)}]", f"must be a finite number, got {value!r}")
        out[name] = value
    return out


def _check_struct(message: Any, field: str) -> None:
    """A Struct (parameter table) must convert to JSON: NaN and infinities cannot."""
    try:
        json_format.MessageToDict(message)
    except (json_format.SerializeToJsonError, ValueError) as exc:
        raise InvalidArgument(
            field, f"must hold only finite numbers, strings, booleans, lists and tables: {exc}"
        ) from None


def pool_config(message: _common.PoolConfig, max_servers: int) -> tuple[PoolSettings, tuple[ServerSpec, ...] | None]:
    for name in ("strategy_params", "limit_params"):
        if message.HasField(name):
            _check_struct(getattr(message, name), f"pool.{name}")
    values = json_format.MessageToDict(message, preserving_proto_field_name=True)
    values.pop("name", None)
    if not values.get("servers"):
        values.pop("servers", None)  # an empty list keeps the pool's current servers
    return parse_pool(message.name, "pool.name", values, "pool", max_servers)


def server_spec(message: _common.ServerSpec) -> ServerSpec:
    return parse_server(json_format.MessageToDict(message, preserving_proto_field_name=True), "server")


def timestamp(wall_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(wall_s * 1e9))
    return ts


def load_report(load: LoadSample, pool: str = "", server_id: str = "") -> _common.LoadReport:
    """A stored load sample as the contract carries it."""
    return _common.LoadReport(
        pool=pool,
        server_id=server_id,
        cpu_percent=load.cpu_percent,
        memory_percent=load.memory_percent,
        active_requests=load.active_requests,
        mean_latency_ms=load.mean_latency_ms,
        error_rate=load.error_rate,
        application_utilization=load.application_utilization,
        requests_per_second=load.requests_per_second,
        errors_per_second=load.errors_per_second,
        named_metrics=load.named_metrics,
    )


def server_status(pool: Pool, server: Backend, now: float, wall_now: float) -> _common.ServerStatus:
    status = _common.ServerStatus(
        id=server.id,
        address=server.address,
        weight=server.weight,
        state=server_state(pool, server, now),
        in_flight=server.in_flight_total,  # every replica's
        ewma_latency_ms=server.ewma_latency_ms,
        error_rate=server.error_rate,
        selections_total=server.selections_total,
        ejections_total=server.ejections_total,
        effective_weight=server.effective_weight,
        consecutive_failures=server.consecutive_failures,
    )
    if server.ejected_until > now:
        status.ejected_until.CopyFrom(timestamp(wall_now + server.ejected_until - now))
    if server.load is not None and server.load_wall is not None:
        status.load.CopyFrom(load_report(server.load, pool.name, server.id))
        status.load_reported_at.CopyFrom(timestamp(server.load_wall))
    probe = server.probe
    if probe is not None:
        check = status.health_check
        check.state = probe.state.value
        check.latency_ms = probe.latency_ms
        check.problem = probe.problem
        check.consecutive_failures = probe.consecutive_failures
        check.consecutive_successes = probe.consecutive_successes
        check.checks_total = probe.checks_total
        if probe.checked_wall is not None:
            check.checked_at.CopyFrom(timestamp(probe.checked_wall))
    return status


def pool_status(pool: Pool, now: float, wall_now: float) -> _common.PoolStatus:
    servers = [server_status(pool, pool.servers[sid], now, wall_now) for sid in sorted(pool.servers)]
    status = pool_header(pool, sum(1 for s in servers if s.state in _ELIGIBLE), sum(s.in_flight for s in servers))
    status.servers.extend(servers)
    return status


def pool_header(pool: Pool, eligible: int, in_flight: int) -> _common.PoolStatus:
    """``pool``'s status without its servers, with the given whole-pool counts."""
    return _common.PoolStatus(
        name=pool.name,
        strategy=pool.settings.strategy,
        eligible_servers=eligible,
        in_flight=in_flight,
        active_leases=pool.slots.in_use,
        queue_length=pool.slots.waiting,
        concurrency_limit=pool.slots.current_limit,
        strategy_stats=pool.strategy.stats(),
        panic=pool.panic,
        requests_total=pool.requests_total + pool.peer_requests_total,
    )


def server_state(pool: Pool, server: Backend, now: float) -> _common.ServerState:
    """``server``'s state as statuses and routing tables show it (the one Health -> ServerState table)."""
    return _HEALTH[pool.health(server, now)]


_ELIGIBLE = frozenset({_common.SERVER_STATE_SERVING, _common.SERVER_STATE_DEGRADED})


def is_serving(pool: Pool, server: Backend, now: float) -> bool:
    """Whether ``server`` shows as eligible (SERVING or DEGRADED) in a status."""
    return server_state(pool, server, now) in _ELIGIBLE


def load_status(core: DecisionCore, pool_name: str) -> _common.LoadStatus:
    now, wall_now = core.clock.monotonic(), core.clock.wall()
    pools = [core.pool(pool_name)] if pool_name else core.pools()
    status = _common.LoadStatus(
        generated_at=timestamp(wall_now),
        pools=[pool_status(p, now, wall_now) for p in pools],
        pending_decisions=len(core.pending),
    )
    if not pool_name:
        status.operations.extend(operation_status(core.operations[n]) for n in sorted(core.operations))
        if core.monitor is not None:
            status.host.CopyFrom(host_load(core.monitor, now))
    return status


def _optional_name(value: str, field: str) -> str:
    return check_name(value, field) if value else ""


def slot_request(request: _pb.AcquireSlotRequest, owner: str = "") -> SlotRequest:
    ttl_ms = check_ttl_ms(request.lease_ttl_ms, "lease_ttl_ms")
    return SlotRequest(
        pool=check_name(request.pool, "pool"),
        request_id=_optional_name(request.request_id, "request_id"),
        priority=check_count(request.priority, "priority", 0, MAX_PRIORITY),
        max_wait_s=check_count(request.max_wait_ms, "max_wait_ms", 0, MAX_WAIT_MS) / 1000.0,
        lease_ttl_s=ttl_ms / 1000.0 if ttl_ms else None,
        client_key=_optional_name(request.client_key, "client_key"),
        select_server=request.select_server,
        owner=owner,
    )


def lease(lease_: Lease, now: float, wall_now: float) -> _common.Lease:
    return _common.Lease(
        lease_id=lease_.id,
        pool=lease_.slots.settings.name,
        ttl_ms=round(lease_.ttl_s * 1000),
        expires_at=timestamp(wall_now + lease_.expires_at - now),
    )


def acquire_response(answer: Answer, core: DecisionCore, owner: str = "") -> _pb.AcquireSlotResponse:
    now, wall_now = core.clock.monotonic(), core.clock.wall()
    if isinstance(answer, Granted):
        granted = answer.lease
        response = _pb.AcquireSlotResponse(
            granted=True,
            decision_id=granted.decision_id or granted.id,
            lease=lease(granted, now, wall_now),
            queue_wait_ms=round(answer.queue_wait_s * 1000),
        )
        if granted.server is not None:
            response.server_id, response.address = granted.server.id, granted.server.address
        return response
    return _pb.AcquireSlotResponse(
        granted=False,
        decision_id=core.new_decision_id(owner),
        denial_reason=_DENIAL[answer.denial],
        reason=answer.reason,
        retry_after_ms=math.ceil(answer.retry_after_s * 1000),  # never early
        queue_wait_ms=round(answer.queue_wait_s * 1000),
    )


_LEVEL = {
    "low": _common.LOAD_LEVEL_LOW,
    "medium": _common.LOAD_LEVEL_MEDIUM,
    "high": _common.LOAD_LEVEL_HIGH,
    "unknown": _common.LOAD_LEVEL_UNKNOWN,
}
_MODE = {"threshold": _common.BATCH_MODE_THRESHOLD, "latency_target": _common.BATCH_MODE_LATENCY_TARGET}
_SOURCE = {"host": _common.LOAD_SOURCE_HOST, "pool": _common.LOAD_SOURCE_POOL}


def batch_size_response(answer: BatchAnswer, decision_id: str) -> _pb.GetBatchSizeResponse:
    return _pb.GetBatchSizeResponse(
        decision_id=decision_id,
        batch_size=answer.size,
        load_score=answer.load_score or 0.0,
        load_level=_LEVEL[answer.level],
        reason=answer.reason,
        fallback=answer.fallback,
    )


def batch_reports(entries: Any) -> list[BatchReportIn]:
    check_batch(entries, "reports")
    out = []
    for i, r in enumerate(entries):
        where = f"reports[{i}]"
        out.append(
            BatchReportIn(
                operation=check_name(r.operation, f"{where}.operation"),
                batch_size=check_count(r.batch_size, f"{where}.batch_size", 1, 1_000_000),
                duration_ms=check_range(r.duration_ms, f"{where}.duration_ms", 0.0, MAX_LATENCY_MS),
                success=r.success,
            )
        )
        if r.decision_id:
            check_name(r.decision_id, f"{where}.decision_id")
    return out


def operation_config(message: _common.OperationConfig) -> OperationSettings:
    values = json_format.MessageToDict(message, preserving_proto_field_name=True)
    values.pop("name", None)
    return parse_operation(message.name, "operation.name", values, "operation")


def operation_status(operation: Operation) -> _common.OperationStatus:
    s = operation.settings
    return _common.OperationStatus(
        name=s.name,
        batch_size=operation.size,
        last_load_score=operation.last_load,
        adjustments_total=operation.adjustments_total,
        recent_adjustments=[
            _common.BatchAdjustment(
                at=timestamp(e.at_wall),
                previous_size=e.previous_size,
                new_size=e.new_size,
                reason=e.reason,
                load_score=e.load_score,
            )
            for e in operation.events
        ],
        mode=_MODE[s.mode],
        load_source=_SOURCE[s.load_source],
        pool=s.pool,
        min_batch_size=s.min_batch_size,
        max_batch_size=s.max_batch_size,
        default_batch_size=s.default_batch_size,
        last_reason=operation.last_reason,
        fallback=operation.fallback,
        decisions_total=operation.decisions_total,
    )


def host_load(monitor: HostMonitor, now: float) -> _common.HostLoad:
    reading = monitor.reading(now)
    host = _common.HostLoad(stale=reading.score is None, problem=reading.problem, load_score=reading.score or 0.0)
    if monitor.sample is not None and monitor.sampled_wall is not None:
        host.cpu_percent = monitor.sample.cpu_percent
        host.memory_percent = monitor.sample.memory_percent
        host.load_average_percent = monitor.sample.load_average_percent
        host.sampled_at.CopyFrom(timestamp(monitor.sampled_wall))
    return host
