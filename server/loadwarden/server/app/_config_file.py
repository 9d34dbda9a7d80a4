"""The config file's shape: a pydantic Table per section, and the file's JSON Schema.

``parse_config`` validates a file's mapping against ``CONFIG_FILE``: every key,
type and range below, in the words config errors have always used. What one
value alone cannot say stays with the settings it builds: pairings (TLS files,
the admin token with the admin port), a Redis URL's parts, an operation reading
a configured pool.

Pools and operations are the exception: the kernel validates them
(``loadwarden.policy.parse_pool`` and ``parse_operation``), because
``ConfigurePool`` and ``RegisterOperation`` take the same keys over the wire and
must answer alike, and the kernel is standard library only. ``POOL_TABLE`` and
``OPERATION_TABLE`` describe them for the schema; a test holds them to the
kernel's answers (tests/unit/server/test_config_schema.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, create_model

from loadwarden.policy import (
    MAX_BATCH_SIZE,
    OPERATION_SOURCES,
    OUTLIER_FLAGS,
    OUTLIER_RANGES,
    OperationSettings,
    OutlierSettings,
    PoolSettings,
    ServerSpec,
    shown,
)
from loadwarden.policy.batching import MODES
from loadwarden.policy.limits import LIMITS
from loadwarden.policy.strategies import STRATEGIES

from ..engine._core import LIMIT_RANGES, CoreLimits
from ..engine._health_checks import PROTOCOLS, HealthCheckSettings
from ..engine._orca_limits import OrcaSettings
from ..engine._planner import FORECAST_BOUNDS, METRICS, PlanningSettings, PoolScaling
from ..engine._predictive import OperationPlanning
from ..fields import SCHEMA_DIALECT, Checked, Choice, Count, Flag, Number, Table, problem, table_of
from ..mesh import XdsSettings
from ..rpc._auth import AuthSettings
from ..rpc._tls import TlsSettings
from ..shared import FAILURE_MODES, REDIS_KEYS, RedisSettings, host_port
from ._settings import (
    ADMIN_RANGES,
    LOG_FORMATS,
    AdminSettings,
    LoggingSettings,
    MonitorSettings,
    ServiceConfig,
    StateSettings,
    listen_problem,
)
from ._store import STORE_NAMES

_NUL = "must not contain a NUL character"


def _count(low: int, high: int, *, whole_floats: bool = False) -> Any:
    return Annotated[int, Count(low, high, whole_floats=whole_floats)]


def _string(wrong: str, nul: str = "") -> Any:
    """A string; ``wrong`` is the problem when it is not one (``{got}`` shows the value),
    ``nul`` the problem when it holds a NUL character (empty: NUL is fine)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise problem(wrong.format(got=shown(value)))
        if nul and "\0" in value:
            raise problem(nul.format(got=shown(value)))
        return value

    return Annotated[str, Checked(check, type="string")]


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"must be a string host:port, got {shown(value)}")
    wrong = listen_problem(value)
    if wrong is not None:
        raise problem(wrong)
    return value


def _secret(value: Any) -> str:
    if not isinstance(value, str):
        raise problem("must be a string, got a non-string value")  # never echoes a token
    return value


def _key_prefix(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not value.isprintable() or " " in value:
        raise problem(f"must be 1-64 printable characters without spaces, got {shown(value)}")
    return value


def _sentinels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and host_port(s) for s in value):
        raise problem(f"must be a list of host:port strings, got {shown(value)}")
    return tuple(value)


def _failure_mode(*, empty: bool) -> Any:
    def check(value: Any) -> str:
        if isinstance(value, str) and (value in FAILURE_MODES or (empty and value == "")):
            return value
        raise problem(f"must be one of {', '.join(FAILURE_MODES)}, got {shown(value)}")

    return Annotated[str, Checked(check, type="string", enum=["", *FAILURE_MODES] if empty else list(FAILURE_MODES))]


def _clients(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise problem("must be a table of name = token")
    return value


def _tables(value: Any) -> dict[str, Any]:
    """A table of tables, each checked by the kernel (its keys are names)."""
    if not isinstance(value, dict):
        raise problem("must be a table")
    return value


Secret = Annotated[str, Checked(_secret, type="string", writeOnly=True)]
Weight = Annotated[float, Number(0, 1000, wording="a number in")]
_TIME = 3_600_000

SERVICE_TABLE = table_of(
    "Service",
    {
        ServiceConfig: {
            "listen": Annotated[str, Checked(_listen, type="string")],
            "shutdown_grace_ms": _count(0, _TIME),
            "expiry_interval_ms": _count(0, _TIME),
            "readiness_interval_ms": _count(100, 60_000),
            "seed": _count(0, 2**63 - 1),
        },
        CoreLimits: {"auto_register_operations": Flag},
    },
    "The gRPC listener and the service's own timers.",
)
LIMITS_TABLE = table_of(
    "Limits",
    {CoreLimits: {key: _count(low, high) for key, (low, high) in LIMIT_RANGES.items()}},
    "Bounds on client-grown state and on connections.",
)
MONITOR_TABLE = table_of(
    "Monitor",
    {
        MonitorSettings: {
            "enabled": Flag,
            "interval_ms": _count(10, _TIME),
            "cpu_weight": Weight,
            "memory_weight": Weight,
            "load_average_weight": Weight,
            "stale_after_ms": _count(0, _TIME),
        }
    },
    MonitorSettings.__doc__.splitlines()[0] if MonitorSettings.__doc__ else "",
)
LOGGING_TABLE = table_of(
    "Logging",
    {LoggingSettings: {"format": Annotated[str, Choice(LOG_FORMATS, "unknown format {got}; valid formats: {valid}")]}},
    "How the loadwarden command logs to stderr.",
)
ADMIN_TABLE = table_of(
    "Admin",
    {
        AdminSettings: {
            "listen": _string("must be a string, got {got}"),
            "token": Secret,
            "history_path": _string("must be a string, got {got}", _NUL),
            **{key: _count(low, high) for key, (low, high) in ADMIN_RANGES.items()},
        }
    },
    "The admin HTTP port (/metrics, /api/load-status, the /admin/load dashboard) and the admin token.",
)
TLS_TABLE = table_of(
    "Tls",
    {
        TlsSettings: {
            "cert_file": _string("must be a file path string, got {got}", _NUL),
            "key_file": _string("must be a file path string, got {got}", _NUL),
            "client_ca_file": _string("must be a file path string, got {got}", _NUL),
            "require_client_cert": Flag,
        }
    },
    "TLS on the gRPC and admin HTTP ports: off (plaintext) unless cert_file is set.",
)
AUTH_TABLE = table_of(
    "Auth",
    {
        AuthSettings: {
            "client_token": Secret,
            "clients": Annotated[
                dict[str, Any],
                Checked(_clients, type="object", additionalProperties={"type": "string", "writeOnly": True}),
            ],
        }
    },
    "The data plane's bearer tokens and the callers they name.",
)
STATE_TABLE = table_of(
    "State",
    {
        StateSettings: {
            "store": Annotated[str, Choice(sorted(STORE_NAMES), "unknown store {got}; valid stores: {valid}")],
            "path": _string("must be a directory path, got {got}", "must be a directory path, got {got}"),
            "save_interval_ms": _count(10, _TIME),
        },
        RedisSettings: {
            "url": _string("must be a string such as redis://127.0.0.1:6379/0"),
            "key_prefix": Annotated[str, Checked(_key_prefix, type="string", minLength=1, maxLength=64)],
            "pool_size": _count(1, 10_000),
            "connect_timeout_ms": _count(10, 60_000),
            "command_timeout_ms": _count(10, 60_000),
            "sentinels": Annotated[tuple[str, ...], Checked(_sentinels, type="array", items={"type": "string"})],
            "sentinel_master": _string("must be a string, got {got}"),
            "cluster": Flag,
            "on_failure": _failure_mode(empty=False),
            "rate_limit_on_failure": _failure_mode(empty=True),
            "replicas": _count(1, 1_000),
            "exchange_interval_ms": _count(10, 60_000),
            "merge_interval_ms": _count(100, _TIME),
        },
    },
    'Where learned state outlives the process; the Redis keys go with store = "redis".',
)
assert set(REDIS_KEYS) <= set(STATE_TABLE.model_fields)  # every Redis key is described

# --- pools and operations: described here, validated by the kernel ---------------------
# The kernel's wording differs by key and 0 often means "the default"; these tables give
# the schema only. A test checks that the kernel accepts every bound and rejects beyond.


def _rate(value: Any) -> str:
    return value if isinstance(value, str) else ""


SERVER_TABLE = table_of(
    "Server",
    {ServerSpec: {"id": _string("{got}"), "address": _string("{got}"), "weight": _count(0, 1_000)}},
    "A server: its id (pool-name characters), its address (host:port) and its weight (0 means 1).",
)
OUTLIER_TABLE = table_of(
    "OutlierDetection",
    {
        OutlierSettings: {
            **{key: _count(*bounds) for key, bounds in OUTLIER_RANGES.items()},
            **dict.fromkeys(OUTLIER_FLAGS, Flag),
        }
    },
    "Outlier ejection (Envoy style); 0 keeps a key's default.",
)


def _http_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 1024:
        raise problem(f"must be a path starting with '/', at most 1024 characters, got {shown(value)}")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise problem(f"must be printable ASCII without spaces, got {shown(value)}")
    return value


def _grpc_service(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 256 or not value.isascii() or not value.isprintable():
        raise problem(f"must be a gRPC service name (printable ASCII, at most 256 characters), got {shown(value)}")
    return value


HEALTH_CHECK_TABLE = table_of(
    "HealthCheck",
    {
        HealthCheckSettings: {
            "protocol": Annotated[str, Choice(PROTOCOLS, "unknown protocol {got}; valid protocols: {valid}")],
            "path": Annotated[str, Checked(_http_path, type="string", pattern="^/", maxLength=1024)],
            "service": Annotated[str, Checked(_grpc_service, type="string", maxLength=256)],
            "interval_ms": _count(10, _TIME),
            "timeout_ms": _count(1, _TIME),
            "unhealthy_threshold": _count(1, 1_000),
            "healthy_threshold": _count(1, 1_000),
            "jitter_ms": _count(0, _TIME),
            "degraded_latency_ms": _count(0, _TIME),
            "degraded_weight_percent": _count(1, 100),
            "max_concurrent": _count(1, 10_000),
        }
    },
    "Active health checks of the pool's configured servers (Envoy's shape): HTTP GET or grpc.health.v1.",
)
ORCA_TABLE = table_of(
    "Orca",
    {
        OrcaSettings: {
            "enabled": Flag,
            "report_interval_ms": _count(100, _TIME),
            "initial_backoff_ms": _count(10, _TIME),
            "max_backoff_ms": _count(10, _TIME),
            "max_streams": _count(1, 100_000),
        }
    },
    "ORCA ingestion: xds.service.orca.v3 OpenRcaService streams from the pool's configured servers.",
)
_PARAMS = Annotated[dict[str, Any], Checked(_tables, type="object")]
_MS = _count(0, _TIME)
_TTL = _count(0, 86_400_000)
_MANY = _count(1, 1_000_000)
_RATE_SPEC = Annotated[str, Checked(_rate, type="string", pattern=r"^(\d{1,9}/(second|minute|hour))?$")]
POOL_TABLE = table_of(
    "Pool",
    {
        PoolSettings: {
            "strategy": Annotated[str, Choice(sorted(STRATEGIES))],
            "strategy_params": _PARAMS,
            "load_report_ttl_ms": _TTL,
            "require_load_report": Flag,
            "max_concurrency": _count(0, 1_000_000),
            "max_queue_length": _count(0, 100_000),
            "max_wait_ms": _MS,
            "lease_ttl_ms": _TTL,
            "max_lease_ttl_ms": _TTL,
            "limit_algorithm": Annotated[str, Choice(sorted(LIMITS))],
            "limit_params": _PARAMS,
            "rate_limit": _RATE_SPEC,
            "rate_limit_keys": _MANY,
            "identity_rate_limit": _RATE_SPEC,
            "rate_limit_keys_per_identity": _MANY,
            "slow_start_ms": _MS,
        }
    },
    "A pool: its servers, routing strategy and admission settings (the keys of PoolConfig).",
    extra={
        "servers": (list[SERVER_TABLE], [], "The pool's servers at start."),  # type: ignore[valid-type]  # made at import
        "rate_burst": (_count(0, 1_000_000), 0, "Tokens rate_limit lets through at once; 0 means its count."),
        "identity_rate_burst": (_count(0, 1_000_000), 0, "The same for identity_rate_limit."),
        "outlier_detection": (OUTLIER_TABLE, OUTLIER_TABLE(), "Outlier ejection (Envoy style)."),
        "health_check": (
            HEALTH_CHECK_TABLE | None,
            None,
            "Active health checks of the servers listed here (config file only: ConfigurePool cannot set them).",
        ),
        "orca": (
            ORCA_TABLE | None,
            None,
            "ORCA load reports streamed from the servers listed here (the mesh extra; config file only).",
        ),
    },
)
_BATCH = _count(1, MAX_BATCH_SIZE)
OPERATION_TABLE = table_of(
    "Operation",
    {
        OperationSettings: {
            "min_batch_size": _BATCH,
            "max_batch_size": _BATCH,
            "default_batch_size": _BATCH,
            "low_threshold_percent": Annotated[float, Number(0, 100)],
            "high_threshold_percent": Annotated[float, Number(0, 100)],
            "cooldown_ms": _TTL,
            "min_step": _count(0, MAX_BATCH_SIZE),
            "mode": Annotated[str, Choice(MODES)],
            "target_latency_ms": Annotated[float, Number(0, 86_400_000)],
            "additive_step": _BATCH,
            "backoff_ratio": Annotated[float, Number(0, 1, above=True, below=True)],
            "load_source": Annotated[str, Choice(OPERATION_SOURCES)],
            "pool": _string("{got}"),
        }
    },
    "A batch operation: how GetBatchSize sizes its batches (the keys of OperationConfig).",
)

_DAYS = 86_400.0


def _seasons(value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 4:
        raise problem(f"must be a list of at most 4 periods in seconds, got {shown(value)}")
    for period in value:
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not 1 <= period <= 366 * _DAYS:
            raise problem(f"each period must be a number of seconds in [1, {366 * _DAYS:g}], got {shown(period)}")
    return tuple(float(period) for period in value)


_BOUND = Annotated[str, Choice(FORECAST_BOUNDS, "unknown bound {got}; valid bounds: {valid}")]
POOL_SCALING_TABLE = table_of(
    "PoolScaling",
    {
        PoolScaling: {
            "metric": Annotated[str, Choice(sorted(METRICS), "unknown metric {got}; valid metrics: {valid}")],
            "target": Annotated[float, Number(0, 1e9, above=True, wording="bounds")],
            "tolerance": Annotated[float, Number(0, 1, below=True)],
            "scale_up_window_s": Annotated[float, Number(0, _DAYS)],
            "scale_down_window_s": Annotated[float, Number(0, _DAYS)],
            "min_servers": _count(0, 1_000_000),
            "max_servers": _count(1, 1_000_000),
            "lead_time_s": Annotated[float, Number(0, 7 * _DAYS, above=True, wording="bounds")],
            "predictive": Flag,
            "forecast_bound": _BOUND,
            "predictive_limit": Flag,
            "limit_lead_s": Annotated[float, Number(0, 7 * _DAYS)],
            "surge_mads": Annotated[float, Number(0, 100)],
        }
    },
    "How one pool is scaled: the per-server metric and its target, the HPA rule's tolerance and windows; "
    "and whether its adaptive limit moves ahead of forecast surges.",
)
OPERATION_PLANNING_TABLE = table_of(
    "OperationPlanning",
    {
        OperationPlanning: {
            "predictive": Flag,
            "lead_s": Annotated[float, Number(0, 7 * _DAYS)],
            "forecast_bound": _BOUND,
        }
    },
    "How the planner manages one batch operation: whether its batch sizes move ahead of its forecast load.",
)
PLANNING_TABLE = table_of(
    "Planning",
    {
        PlanningSettings: {
            "enabled": Flag,
            "interval_s": Annotated[float, Number(1, _DAYS)],
            "step_s": Annotated[float, Number(1, _DAYS)],
            "horizon_s": Annotated[float, Number(1, 7 * _DAYS)],
            "history_s": Annotated[float, Number(60, 366 * _DAYS)],
            "coverage": Annotated[float, Number(0.5, 0.99)],
            "seasons_s": Annotated[tuple[float, ...], Checked(_seasons, type="array", items={"type": "number"})],
        }
    },
    "Capacity planning: load forecasts and scaling recommendations (GetRecommendations; off by default).",
    extra={
        "pools": (
            dict[str, POOL_SCALING_TABLE],  # type: ignore[valid-type]  # made at import
            {},
            "Per-pool scaling, by pool name; other pools scale on CPU at a 0.7 target.",
        ),
        "operations": (
            dict[str, OPERATION_PLANNING_TABLE],  # type: ignore[valid-type]  # made at import
            {},
            "Per-operation planning, by operation name; other operations are sized from their measured load alone.",
        ),
    },
)

XDS_TABLE = table_of(
    "Xds",
    {
        XdsSettings: {
            "enabled": Flag,
            "listen": _string("must be a host:port string, got {got}", _NUL),
            "push_interval_ms": _count(10, 1_000),
            "max_streams": _count(1, 100_000),
            "max_streams_per_caller": _count(1, 100_000),
        }
    },
    "The xDS (ADS) server: each pool a Listener, Route, Cluster and endpoints for xds:///<pool> clients.",
)

# --- the file --------------------------------------------------------------------------

_TABLES_BY_SECTION: dict[str, tuple[type[Table], str]] = {
    "service": (SERVICE_TABLE, "The gRPC listener and the service's own timers."),
    "limits": (LIMITS_TABLE, "Bounds on client-grown state and on connections."),
    "state": (STATE_TABLE, "Persistence of learned state, and the replicas' shared state on Redis."),
    "monitor": (MONITOR_TABLE, "The host load monitor."),
    "admin": (ADMIN_TABLE, "The admin HTTP port (off by default) and the admin token."),
    "tls": (TLS_TABLE, "TLS for the gRPC and admin HTTP ports (off by default: plaintext)."),
    "auth": (AUTH_TABLE, "The data plane's client tokens (off by default)."),
    "logging": (LOGGING_TABLE, "The loadwarden command's log format."),
    "planning": (PLANNING_TABLE, "Capacity planning: load forecasts and scaling recommendations (off by default)."),
    "xds": (XDS_TABLE, "The xDS (ADS) server for proxyless gRPC and Envoy (off by default)."),
}
_TABLES = Annotated[dict[str, Any], Checked(_tables, type="object")]
SECTIONS = frozenset({*_TABLES_BY_SECTION, "pools", "operations", "rls"})


def _file(title: str, pools: Any, operations: Any) -> type[Table]:
    fields: dict[str, Any] = {
        name: (table, Field(default=table(), description=doc)) for name, (table, doc) in _TABLES_BY_SECTION.items()
    }
    fields["pools"] = (pools, Field(default={}, description="Pools to create at start, by name."))
    fields["operations"] = (operations, Field(default={}, description="Batch operations to register at start."))
    fields["rls"] = (
        _TABLES,
        Field(
            default={},
            description="Envoy's rate-limit service (envoy.service.ratelimit.v3), off by default: domains and "
            "nested descriptors in envoyproxy/ratelimit's shape (README: From Envoy and proxyless gRPC).",
        ),
    )
    model: type[Table] = create_model(title, __base__=Table, **fields)
    return model


CONFIG_FILE = _file("ConfigFile", _TABLES, _TABLES)
"""What parse_config validates: pools and operations go to the kernel as they are."""
_DESCRIBED = _file(
    "LoadwardenConfig",
    dict[str, POOL_TABLE],  # type: ignore[valid-type]  # made at import
    dict[str, OPERATION_TABLE],  # type: ignore[valid-type]  # made at import
)


def config_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the config file, for editors and ``loadwarden config-schema``."""
    schema = _DESCRIBED.model_json_schema()
    schema["description"] = (
        "loadwarden serve's config file (TOML). LOADWARDEN_<SECTION>__<KEY> environment variables override single keys."
    )
    return {"$schema": SCHEMA_DIALECT, **schema}
