"""Pool settings: one parser shared by the TOML config and AdminService.ConfigurePool.

Keys are the protobuf PoolConfig field names, so an operator and a client see
the same vocabulary, and every error names the field it rejects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidArgument
from ._model import ServerSpec
from ._validation import check_address, check_count, check_name, check_ttl_ms, shown
from .limits import build_limit
from .strategies import check_strategy

_RATE = re.compile(r"(\d{1,9})/(second|minute|hour)")
_UNIT_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
DEFAULT_LEASE_TTL_MS = 30_000
DEFAULT_MAX_LEASE_TTL_MS = 600_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``count`` tokens per ``per_s`` seconds, with ``burst`` spendable at once."""

    count: int
    per_s: float
    burst: int


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    """Outlier ejection (Envoy style).

    Attributes:
        consecutive_failures: Failed outcomes in a row that eject a server.
        base_ejection_time_ms: The n-th ejection lasts n times this.
        max_ejection_time_ms: Cap on one ejection.
        max_ejection_percent: Most of the pool ejected at once (at least one server may be).
        panic_threshold_percent: Below this share of un-ejected routable servers, ejection is ignored.
        disabled: True turns ejection off.
        overdue_factor: A server with ``consecutive_failures`` of this process's requests in
            flight, none answered for this many times its usual latency, is ejected at once:
            they are failures not yet timed out.
        overdue_disabled: True ejects only on failed outcomes.
    """

    consecutive_failures: int = 5
    base_ejection_time_ms: int = 30_000
    max_ejection_time_ms: int = 300_000
    max_ejection_percent: int = 50
    panic_threshold_percent: int = 50
    disabled: bool = False
    overdue_factor: int = 10
    overdue_disabled: bool = False


OUTLIER_FLAGS = ("disabled", "overdue_disabled")
OUTLIER_RANGES = {
    "consecutive_failures": (0, 1_000),
    "base_ejection_time_ms": (0, 3_600_000),
    "max_ejection_time_ms": (0, 86_400_000),
    "max_ejection_percent": (0, 100),
    "panic_threshold_percent": (0, 100),
    "overdue_factor": (0, 1_000),
}


def parse_outlier(values: Any, key: str) -> OutlierSettings:
    """Parses an ``outlier_detection`` table; zero values keep the defaults."""
    table = _table(values, key)
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        if name in OUTLIER_FLAGS:
            kwargs[name] = _bool(value, f"{key}.{name}")
            continue
        if name not in OUTLIER_RANGES:
            valid = ", ".join(sorted([*OUTLIER_RANGES, *OUTLIER_FLAGS]))
            raise InvalidArgument(f"{key}.{name}", f"unknown key; valid keys: {valid}")
        low, high = OUTLIER_RANGES[name]
        number = _int(value, f"{key}.{name}", low, high)
        if name.endswith("_time_ms"):
            check_ttl_ms(number, f"{key}.{name}", high)
        if number:
            kwargs[name] = number
    settings = OutlierSettings(**kwargs)
    if settings.max_ejection_time_ms < settings.base_ejection_time_ms:
        raise InvalidArgument(
            f"{key}.max_ejection_time_ms",
            f"must be >= base_ejection_time_ms ({settings.base_ejection_time_ms}), got {settings.max_ejection_time_ms}",
        )
    return settings


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """A pool's routing and admission settings (validated; see ``parse_pool``).

    Attributes:
        name: Pool name.
        strategy: Routing strategy registry name.
        strategy_params: Parameters for the strategy, by name.
        load_report_ttl_ms: A load report older than this makes a server stale.
        require_load_report: A server that never reported is stale when True.
        max_concurrency: Slots granted at once; 0 is unlimited.
        max_queue_length: Requests waiting for a slot at once.
        max_wait_ms: Longest wait for a slot.
        lease_ttl_ms: Default lease time to live, ms.
        max_lease_ttl_ms: Longest TTL a lease may ask for or be renewed with, ms; at
            least ``lease_ttl_ms``. Unset, the larger of 600,000 and ``lease_ttl_ms``.
        limit_algorithm: Admission limit algorithm name.
        limit_params: Parameters for it, by name.
        rate_limit: Per-client-key token bucket, or None. With caller identities
            configured it also bounds each caller as a whole (unless
            ``identity_rate_limit`` says otherwise), and client keys subdivide it.
        rate_limit_keys: Client keys whose buckets are tracked at once (least recently used evicted).
        identity_rate_limit: One identified caller's rate over all its client keys;
            None means ``rate_limit``. Only with ``rate_limit`` set.
        rate_limit_keys_per_identity: Client keys tracked per identified caller (least
            recently used evicted; the caller's own bucket still bounds it).
        outlier: Outlier ejection settings.
        slow_start_ms: Weight ramp window for joining/returning servers; 0 is off.
    """

    name: str
    strategy: str = "round_robin"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    load_report_ttl_ms: int = 10_000
    require_load_report: bool = False
    max_concurrency: int = 0
    max_queue_length: int = 1_000
    max_wait_ms: int = 30_000
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    max_lease_ttl_ms: int = DEFAULT_MAX_LEASE_TTL_MS
    limit_algorithm: str = "fixed"
    limit_params: Mapping[str, Any] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    rate_limit_keys: int = 10_000
    identity_rate_limit: RateLimit | None = None
    rate_limit_keys_per_identity: int = 1_000
    outlier: OutlierSettings = field(default_factory=OutlierSettings)
    slow_start_ms: int = 0


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(key, f"must be a string, got {shown(value)}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(key, f"must be true or false, got {shown(value)}")
    return value


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_count(value, key, low, high)


def _table(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(key, f"must be a table of parameters, got {shown(value)}")
    return dict(value)


def parse_rate_limit(spec: str, burst: int, key: str) -> RateLimit | None:
    """Parses ``"30/minute"``-style specs; empty means no limit."""
    if not spec:
        return None
    match = _RATE.fullmatch(spec.strip())
    if match is None or int(match.group(1)) == 0:
        raise InvalidArgument(
            key, f"must look like '30/minute' (count >= 1 per second, minute or hour), got {shown(spec)}"
        )
    count = int(match.group(1))
    return RateLimit(count=count, per_s=_UNIT_S[match.group(2)], burst=burst or count)


def parse_server(values: Any, key: str) -> ServerSpec:
    """Parses one ``{id, address, weight}`` table."""
    if not isinstance(values, Mapping):
        raise InvalidArgument(key, f"must be a table with id, address and weight, got {shown(values)}")
    unknown = set(values) - {"id", "address", "weight"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidArgument(f"{key}.{name}", "unknown key; valid keys: address, id, weight")
    weight = _int(values.get("weight", 0), f"{key}.weight", 0, 1000)
    return ServerSpec(
        id=check_name(_str(values.get("id", ""), f"{key}.id"), f"{key}.id"),
        address=check_address(_str(values.get("address", ""), f"{key}.address"), f"{key}.address"),
        weight=weight or 1,
    )


def parse_servers(values: Any, key: str, max_servers: int) -> tuple[ServerSpec, ...]:
    """Parses a server list, rejecting duplicate ids and lists over ``max_servers``."""
    if not isinstance(values, (list, tuple)):
        raise InvalidArgument(key, f"must be a list of servers, got {shown(values)}")
    if len(values) > max_servers:
        raise InvalidArgument(
            key, f"has {len(values)} servers; at most {max_servers} per pool allowed (limits.max_servers_per_pool)"
        )
    specs = tuple(parse_server(v, f"{key}[{i}]") for i, v in enumerate(values))
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.id in seen:
            raise InvalidArgument(f"{key}[{i}].id", f"duplicate server id {spec.id!r}")
        seen.add(spec.id)
    return specs


def parse_pool(
    name: str, name_field: str, values: Mapping[str, Any], where: str, max_servers: int
) -> tuple[PoolSettings, tuple[ServerSpec, ...] | None]:
    """Validates one pool's settings.

    Args:
        name: Pool name, checked here and reported as ``name_field``.
        name_field: Field path of the name, e.g. ``pool.name`` or ``pools``.
        values: PoolConfig field names (except ``name``) to values; missing or
            zero means the default.
        where: Field path prefix for errors, e.g. ``pools.api`` or ``pool``.
        max_servers: Cap on the server list.

    Returns:
        The settings and the server list (None when ``servers`` is absent).

    Raises:
        InvalidArgument: naming ``<where>.<key>``.
    """
    check_name(name, name_field)
    known = (set(PoolSettings.__dataclass_fields__) - {"name", "outlier"}) | {
        "servers",
        "rate_burst",
        "identity_rate_burst",
        "outlier_detection",
    }
    for key in values:
        if key not in known:
            raise InvalidArgument(f"{where}.{key}", f"unknown key; valid keys: {', '.join(sorted(known))}")

    def get(key: str) -> Any:
        return values.get(key)

    kwargs: dict[str, Any] = {"name": name}
    if get("strategy"):
        kwargs["strategy"] = _str(get("strategy"), f"{where}.strategy")
    if get("strategy_params") is not None:
        kwargs["strategy_params"] = _table(get("strategy_params"), f"{where}.strategy_params")
    if get("load_report_ttl_ms"):
        kwargs["load_report_ttl_ms"] = check_ttl_ms(
            _int(get("load_report_ttl_ms"), f"{where}.load_report_ttl_ms", 0, 86_400_000),
            f"{where}.load_report_ttl_ms",
        )
    if get("require_load_report") is not None:
        kwargs["require_load_report"] = _bool(get("require_load_report"), f"{where}.require_load_report")
    if get("max_concurrency") is not None:
        kwargs["max_concurrency"] = _int(get("max_concurrency"), f"{where}.max_concurrency", 0, 1_000_000)
    if get("max_queue_length"):
        kwargs["max_queue_length"] = _int(get("max_queue_length"), f"{where}.max_queue_length", 0, 100_000)
    if get("max_wait_ms"):
        kwargs["max_wait_ms"] = _int(get("max_wait_ms"), f"{where}.max_wait_ms", 0, 3_600_000)
    if get("lease_ttl_ms"):
        kwargs["lease_ttl_ms"] = check_ttl_ms(
            _int(get("lease_ttl_ms"), f"{where}.lease_ttl_ms", 0, 86_400_000), f"{where}.lease_ttl_ms"
        )
    if get("max_lease_ttl_ms"):
        kwargs["max_lease_ttl_ms"] = check_ttl_ms(
            _int(get("max_lease_ttl_ms"), f"{where}.max_lease_ttl_ms", 0, 86_400_000), f"{where}.max_lease_ttl_ms"
        )
        lease_ttl_ms = kwargs.get("lease_ttl_ms", DEFAULT_LEASE_TTL_MS)
        if kwargs["max_lease_ttl_ms"] < lease_ttl_ms:
            raise InvalidArgument(
                f"{where}.max_lease_ttl_ms",
                f"must be >= lease_ttl_ms ({lease_ttl_ms}), got {kwargs['max_lease_ttl_ms']}",
            )
    else:
        kwargs["max_lease_ttl_ms"] = max(DEFAULT_MAX_LEASE_TTL_MS, kwargs.get("lease_ttl_ms", 0))
    if get("limit_algorithm"):
        kwargs["limit_algorithm"] = _str(get("limit_algorithm"), f"{where}.limit_algorithm")
    if get("limit_params") is not None:
        kwargs["limit_params"] = _table(get("limit_params"), f"{where}.limit_params")
    if get("rate_limit_keys"):
        kwargs["rate_limit_keys"] = _int(get("rate_limit_keys"), f"{where}.rate_limit_keys", 1, 1_000_000)
    burst = _int(get("rate_burst") or 0, f"{where}.rate_burst", 0, 1_000_000)
    kwargs["rate_limit"] = parse_rate_limit(
        _str(get("rate_limit") or "", f"{where}.rate_limit"), burst, f"{where}.rate_limit"
    )
    identity_burst = _int(get("identity_rate_burst") or 0, f"{where}.identity_rate_burst", 0, 1_000_000)
    kwargs["identity_rate_limit"] = parse_rate_limit(
        _str(get("identity_rate_limit") or "", f"{where}.identity_rate_limit"),
        identity_burst,
        f"{where}.identity_rate_limit",
    )
    if kwargs["identity_rate_limit"] is not None and kwargs["rate_limit"] is None:
        raise InvalidArgument(f"{where}.identity_rate_limit", "needs rate_limit set too (it subdivides that limit)")
    if get("rate_limit_keys_per_identity"):
        kwargs["rate_limit_keys_per_identity"] = _int(
            get("rate_limit_keys_per_identity"), f"{where}.rate_limit_keys_per_identity", 1, 1_000_000
        )
    if get("outlier_detection") is not None:
        kwargs["outlier"] = parse_outlier(get("outlier_detection"), f"{where}.outlier_detection")
    if get("slow_start_ms") is not None:
        kwargs["slow_start_ms"] = _int(get("slow_start_ms"), f"{where}.slow_start_ms", 0, 3_600_000)
    settings = PoolSettings(**kwargs)
    check_strategy(settings.strategy, settings.strategy_params, where)
    build_limit(settings.limit_algorithm, settings.limit_params, settings.max_concurrency, where)
    servers = get("servers")
    specs = None if servers is None else parse_servers(servers, f"{where}.servers", max_servers)
    return settings, specs
