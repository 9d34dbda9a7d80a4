"""The service's settings, section by section, as ``loadwarden serve`` runs with them.

Each is checked when built, for what no single value can say (pairings, a token's
form); ``_config_file`` describes the file's keys, types and ranges, and
``_config`` reads a file into these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadwarden.policy import InvalidArgument, OperationSettings, PoolSettings, ServerSpec, check_count, shown

from .._errors import ConfigError
from ..engine._core import CoreLimits
from ..engine._health_checks import HealthCheckSettings
from ..engine._orca_limits import OrcaSettings
from ..engine._planner import PlanningSettings
from ..mesh import RlsSettings, XdsSettings
from ..rpc._auth import AuthSettings
from ..rpc._tls import TlsSettings
from ..shared import RedisSettings

DEFAULT_LISTEN = "127.0.0.1:50051"
MIN_ADMIN_TOKEN_LEN = 16
ADMIN_RANGES = {"history_interval_ms": (100, 3_600_000), "history_retention_s": (60, 366 * 86_400)}


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A pool from config: its settings, servers, active health check and ORCA ingestion (None: none)."""

    settings: PoolSettings
    servers: tuple[ServerSpec, ...] = ()
    health_check: HealthCheckSettings | None = None
    orca: OrcaSettings | None = None


@dataclass(frozen=True, slots=True)
class StateSettings:
    """Where learned state outlives the process.

    Attributes:
        store: ``memory`` (nothing survives a restart), ``file`` (one process, durable)
            or ``redis`` (several replicas share leases, rate buckets and learned state).
        path: Directory for the ``file`` store.
        save_interval_ms: How often learned state is saved (and once more at shutdown).
        redis: The Redis connection, with ``store = "redis"`` (see RedisSettings).
    """

    store: str = "memory"
    path: str = ""
    save_interval_ms: int = 10_000
    redis: RedisSettings | None = None


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """The host load monitor (see loadwarden.server.engine._loadmonitor for the score formula).

    Attributes:
        enabled: False turns it off; host-sourced operations then answer their default size.
        interval_ms: Sampling interval.
        cpu_weight / memory_weight / load_average_weight: Weights of the load score's parts.
        stale_after_ms: A sample older than this is stale (load unknown); 0 means 3 intervals.
    """

    enabled: bool = True
    interval_ms: int = 1_000
    cpu_weight: float = 0.6
    memory_weight: float = 0.2
    load_average_weight: float = 0.2
    stale_after_ms: int = 0


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """How the ``loadwarden`` command logs to stderr.

    Attributes:
        format: ``text`` (one line: time, level, logger, message) or ``json`` (one JSON
            object per line, with the trace and span ids of the current span when
            tracing is on).
    """

    format: str = "text"

    def __post_init__(self) -> None:
        if self.format not in LOG_FORMATS:
            raise ConfigError(
                "logging.format", f"unknown format {shown(self.format)}; valid formats: {', '.join(LOG_FORMATS)}"
            )


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin HTTP port: ``/metrics``, ``/api/load-status`` and the ``/admin/load`` dashboard.

    Attributes:
        listen: host:port to serve on; empty (the default) turns the port off. Meant for
            loopback; any other address without ``[tls]`` is served with a warning at start.
        token: The admin token, at least 16 printable ASCII characters: every request to
            the admin HTTP port and every AdminService RPC must present it as
            ``Authorization: Bearer <token>``. Required when ``listen`` is set; without
            it AdminService is open on a loopback gRPC address and refused on any other.
            Prefer ``LOADWARDEN_ADMIN__TOKEN`` to writing it in the file. Never shown in
            reprs, logs or errors.
        history_path: SQLite file of the dashboard's load history; empty keeps it in memory.
        history_interval_ms: How often a history sample is taken.
        history_retention_s: How long history samples are kept.
    """

    listen: str = ""
    token: str = field(default="", repr=False)
    history_path: str = ""
    history_interval_ms: int = 10_000
    history_retention_s: int = 86_400

    def __post_init__(self) -> None:
        if self.listen:
            check_listen(self.listen, "admin.listen")
            if not self.token:
                raise ConfigError(
                    "admin.token", "is required when admin.listen is set (or set LOADWARDEN_ADMIN__TOKEN)"
                )
        if self.token and (len(self.token) < MIN_ADMIN_TOKEN_LEN or not all("!" <= c <= "~" for c in self.token)):
            # The message never echoes the token.
            raise ConfigError(
                "admin.token",
                f"must be at least {MIN_ADMIN_TOKEN_LEN} printable ASCII characters "
                "without spaces, e.g. from secrets.token_urlsafe(32)",
            )
        for key, (low, high) in ADMIN_RANGES.items():
            try:
                check_count(getattr(self, key), f"admin.{key}", low, high)
            except InvalidArgument as exc:
                raise ConfigError(exc.field, exc.problem) from None


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Everything ``loadwarden serve`` needs.

    Attributes:
        listen: host:port for gRPC; port 0 picks a free port.
        shutdown_grace_ms: How long in-flight RPCs may finish on SIGTERM/SIGINT.
        expiry_interval_ms: How often expired decisions and leases are swept when no call does it.
        readiness_interval_ms: How often readiness checks its dependencies (Redis, the load
            monitor); ``/readyz`` and the gRPC health follow within one interval.
        seed: RNG seed for strategies; None seeds from the OS.
        limits: Bounds on client-grown state.
        pools: Pools to create at start.
        state: Persistence of learned state.
        operations: Batch operations to register at start.
        monitor: The host load monitor.
        admin: The admin HTTP port (off by default) and the admin token.
        tls: TLS for the gRPC and admin HTTP ports (off by default: plaintext).
        auth: The data plane's client token (off by default).
        logging: The ``loadwarden`` command's log format.
        planning: Capacity planning (off by default).
        xds: The xDS (ADS) server (off by default).
        rls: Envoy's rate-limit service (off by default).
    """

    listen: str = DEFAULT_LISTEN
    shutdown_grace_ms: int = 5_000
    expiry_interval_ms: int = 100
    readiness_interval_ms: int = 1_000
    seed: int | None = None
    limits: CoreLimits = field(default_factory=CoreLimits)
    pools: tuple[PoolSpec, ...] = ()
    state: StateSettings = field(default_factory=StateSettings)
    operations: tuple[OperationSettings, ...] = ()
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    planning: PlanningSettings = field(default_factory=PlanningSettings)
    xds: XdsSettings = field(default_factory=XdsSettings)
    rls: RlsSettings = field(default_factory=RlsSettings)

    def __post_init__(self) -> None:
        check_listen(self.listen)
        name = self.auth.tokens().get(self.admin.token) if self.admin.token else None
        if name is not None:
            key = "auth.client_token" if self.admin.token == self.auth.client_token else f"auth.clients.{name}"
            raise ConfigError(key, "must differ from admin.token (a client could call AdminService)")
        for key in ("shutdown_grace_ms", "expiry_interval_ms"):
            if not 0 <= getattr(self, key) <= 3_600_000:
                raise ConfigError(f"service.{key}", "must be in [0, 3600000]")
        # An operation reading a pool that does not exist would answer its default size forever.
        pools = {spec.settings.name for spec in self.pools}
        for operation in self.operations:
            if operation.load_source == "pool" and operation.pool not in pools:
                raise ConfigError(
                    f"operations.{operation.name}.pool",
                    f"no pool named {operation.pool!r} is configured; configured pools: "
                    f"{', '.join(sorted(pools)) or 'none'}",
                )


def check_listen(listen: str, key: str = "service.listen") -> None:
    """``host:port`` (IPv6 hosts in brackets) with a port in 0-65535; 0 picks a free port."""
    wrong = listen_problem(listen)
    if wrong is not None:
        raise ConfigError(key, wrong)


def listen_problem(listen: str) -> str | None:
    """What is wrong with a ``host:port`` listen address, or None."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return f"must be host:port with a port in 0-65535, got {shown(listen)}"
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return f"an IPv6 host needs brackets, e.g. [::1]:50051, got {shown(listen)}"
    return None
