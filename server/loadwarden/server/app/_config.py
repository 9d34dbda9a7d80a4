"""Service configuration: a TOML file, then ``LOADWARDEN_*`` environment overrides.

Example::

    [service]
    listen = "127.0.0.1:50051"
    decision_ttl_ms = 30000

    [pools.api]
    strategy = "least_connections"
    servers = [
      { id = "api-1", address = "10.0.0.1:8080" },
      { id = "api-2", address = "10.0.0.2:8080", weight = 2 },
    ]

Environment variables override single keys: ``LOADWARDEN_SERVICE__LISTEN`` sets
``service.listen``, ``LOADWARDEN_POOLS__API__STRATEGY`` sets
``pools.api.strategy`` (``__`` separates levels; names are lower-cased, so a pool
whose name has upper-case letters or dashes is set in the file only). Values are
read as TOML values (``30000``, ``true``, ``"x"``) and otherwise as plain strings.
Any invalid key stops the start with a ConfigError naming it.

Security (see loadwarden.server.rpc._tls and loadwarden.server.rpc._auth)::

    [tls]                                  # both ports serve TLS when cert_file is set
    cert_file = "/etc/loadwarden/server.pem"
    key_file = "/etc/loadwarden/server.key"
    client_ca_file = "/etc/loadwarden/clients-ca.pem"
    require_client_cert = true             # mutual TLS on the gRPC port

    [admin]
    token = "..."                          # AdminService RPCs and the admin HTTP port
    [auth]
    client_token = "..."                   # DecisionService RPCs (optional)

Without ``admin.token`` the AdminService is open on a loopback listen address and
refused on any other. Tokens are best set as ``LOADWARDEN_ADMIN__TOKEN`` and
``LOADWARDEN_AUTH__CLIENT_TOKEN``; they never appear in reprs, logs or errors.
"""

from __future__ import annotations

import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadwarden.policy import (
    InvalidArgument,
    OperationSettings,
    PoolSettings,
    ServerSpec,
    check_count,
    parse_operation,
    parse_pool,
    shown,
)

from .._errors import ConfigError
from ..engine._core import LIMIT_RANGES, CoreLimits
from ..rpc._auth import AuthSettings, parse_auth
from ..rpc._tls import TlsSettings, parse_tls
from ..shared import REDIS_KEYS, RedisSettings, parse_redis
from ._store import STORE_NAMES

ENV_PREFIX = "LOADWARDEN_"
DEFAULT_LISTEN = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A pool from config: its settings and servers."""

    settings: PoolSettings
    servers: tuple[ServerSpec, ...] = ()


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
        for key, (low, high) in _ADMIN_RANGES.items():
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
    """

    listen: str = DEFAULT_LISTEN
    shutdown_grace_ms: int = 5_000
    expiry_interval_ms: int = 100
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
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(key, f"must be host:port with a port in 0-65535, got {shown(listen)}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(key, f"an IPv6 host needs brackets, e.g. [::1]:50051, got {shown(listen)}")


_SERVICE_KEYS = {"listen", "shutdown_grace_ms", "expiry_interval_ms", "seed", "auto_register_operations"}
_LIMIT_KEYS = LIMIT_RANGES  # [limits] keys and their ranges; defaults and meanings on CoreLimits
_TOP_KEYS = {"service", "limits", "pools", "state", "operations", "monitor", "admin", "tls", "auth", "logging"}
MIN_ADMIN_TOKEN_LEN = 16
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config file larger than this is a mistake, not a config
_VERBATIM_ENV = (
    ["admin", "token"],
    ["auth", "client_token"],
    ["tls", "cert_file"],
    ["tls", "key_file"],
    ["tls", "client_ca_file"],
)
_ADMIN_RANGES = {"history_interval_ms": (100, 3_600_000), "history_retention_s": (60, 366 * 86_400)}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Reads ``path`` (if given), applies environment overrides and validates.

    Raises:
        ConfigError: naming the offending key (or environment variable).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _parse_toml(_read_config_text(Path(path)), str(path))
    apply_env_overrides(raw, environ if environ is not None else {})
    return parse_config(raw)


def _read_config_text(path: Path) -> str:
    """The file's text: UTF-8, a leading UTF-8 byte order mark dropped; a ConfigError naming the file otherwise."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a fifo or device would block the start, a directory fail vaguely
            kind = (
                "a directory"
                if stat.S_ISDIR(info.st_mode)
                else "a named pipe"
                if stat.S_ISFIFO(info.st_mode)
                else "a device or socket"
            )
            raise ConfigError(str(path), f"cannot read config file: it is {kind}, not a regular file")
        size = info.st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), f"config file is {size} bytes; at most {MAX_CONFIG_BYTES} allowed")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(str(path), "config file is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            str(path),
            f"config file is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} "
            f"(offset {exc.start}); save it as UTF-8",
        ) from None


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    """``tomllib.loads`` with every failure (syntax, nesting, huge numbers) a ConfigError naming ``where``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(where, "invalid TOML: arrays or tables nested too deeply") from None
    except ValueError:  # the only ValueError tomllib lets through: an integer too long to convert
        raise ConfigError(
            where, f"invalid TOML: an integer has more than {sys.get_int_max_str_digits()} digits"
        ) from None


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Sets ``raw[a][b][c]`` from each ``LOADWARDEN_A__B__C`` variable, in sorted order.

    A ``LOADWARDEN_`` name without a double underscore is an application's or a tool's
    (``LOADWARDEN_TARGET``, ``LOADWARDEN_CLIENT_TOKEN``) and is left alone, unless it reads
    like a service setting spelled with one underscore (``LOADWARDEN_SERVICE_LISTEN``).
    """
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest and "__" not in rest and rest.lower() not in _TOP_KEYS:
            section, _, key = rest.lower().partition("_")
            if section in _TOP_KEYS and key:
                raise ConfigError(
                    name,
                    f"unknown setting; a service setting takes two underscores after its section: "
                    f"{ENV_PREFIX}{section.upper()}__{key.upper()} (names without them are left to applications)",
                )
            continue
        path = [part.lower() for part in rest.split("__")]
        if not all(path) or path[0] not in _TOP_KEYS:
            raise ConfigError(
                name, f"unknown setting; use LOADWARDEN_<SECTION>__<KEY> with a section in {sorted(_TOP_KEYS)}"
            )
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(name, f"{part!r} is not a table in the config file")
            node = child
        # A secret is taken verbatim: read as TOML, "1e5" would become a number and "\"x\"" lose its quotes.
        verbatim = path in _VERBATIM_ENV or (len(path) == 3 and path[:2] == ["auth", "clients"])
        node[path[-1]] = environ[name] if verbatim else _env_value(environ[name])


def _env_value(text: str) -> Any:
    try:
        parsed = tomllib.loads(f"v = {text}")
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):  # ValueError: an integer too long to read
        return text
    return parsed["v"] if len(parsed) == 1 else text  # "1\nx = 2" is one string, never two settings


def parse_config(raw: Mapping[str, Any]) -> ServiceConfig:
    """Validates a config mapping shaped like the TOML file."""
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(key, f"unknown section; valid sections: {', '.join(sorted(_TOP_KEYS))}")
    service = _section(raw, "service")
    for key in service:
        if key not in _SERVICE_KEYS:
            raise ConfigError(f"service.{key}", f"unknown key; valid keys: {', '.join(sorted(_SERVICE_KEYS))}")
    limits_raw = _section(raw, "limits")
    try:
        limit_values = {}
        for key, value in limits_raw.items():
            if key not in _LIMIT_KEYS:
                raise ConfigError(f"limits.{key}", f"unknown key; valid keys: {', '.join(sorted(_LIMIT_KEYS))}")
            low, high = _LIMIT_KEYS[key]
            limit_values[key] = check_count(value, f"limits.{key}", low, high)
        auto = service.get("auto_register_operations", False)
        if not isinstance(auto, bool):
            raise ConfigError("service.auto_register_operations", f"must be true or false, got {shown(auto)}")
        limits = CoreLimits(**limit_values, auto_register_operations=auto)
        pools_raw = _section(raw, "pools")
        if len(pools_raw) > limits.max_pools:
            raise ConfigError("pools", f"{len(pools_raw)} pools configured; limits.max_pools is {limits.max_pools}")
        pools = []
        for name, values in pools_raw.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"pools.{name}", "must be a table")
            settings, servers = parse_pool(name, f"pools.{name}", values, f"pools.{name}", limits.max_servers_per_pool)
            pools.append(PoolSpec(settings, servers or ()))
        operations_raw = _section(raw, "operations")
        if len(operations_raw) > limits.max_operations:
            raise ConfigError(
                "operations",
                f"{len(operations_raw)} operations configured; limits.max_operations is {limits.max_operations}",
            )
        operations = []
        for name, values in operations_raw.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"operations.{name}", "must be a table")
            operations.append(parse_operation(name, f"operations.{name}", values, f"operations.{name}"))
        monitor = _parse_monitor(_section(raw, "monitor"))
        for key in ("shutdown_grace_ms", "expiry_interval_ms"):
            if key in service:
                check_count(service[key], f"service.{key}", 0, 3_600_000)
        seed = service.get("seed")
        if seed is not None:
            check_count(seed, "service.seed", 0, 2**63 - 1)
        listen = service.get("listen", DEFAULT_LISTEN)
        if not isinstance(listen, str):
            raise ConfigError("service.listen", f"must be a string host:port, got {shown(listen)}")
    except InvalidArgument as exc:
        raise ConfigError(exc.field, exc.problem) from None
    return ServiceConfig(
        operations=tuple(operations),
        monitor=monitor,
        admin=_parse_admin(_section(raw, "admin")),
        tls=parse_tls(_no_nul(_section(raw, "tls"), "tls")),
        auth=parse_auth(_section(raw, "auth")),
        state=_parse_state(_section(raw, "state")),
        logging=_parse_logging(_section(raw, "logging")),
        listen=listen,
        shutdown_grace_ms=service.get("shutdown_grace_ms", 5_000),
        expiry_interval_ms=service.get("expiry_interval_ms", 100),
        seed=seed,
        limits=limits,
        pools=tuple(pools),
    )


def _parse_monitor(raw: Mapping[str, Any]) -> MonitorSettings:
    valid = set(MonitorSettings.__dataclass_fields__)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in valid:
            raise ConfigError(f"monitor.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
        if key == "enabled":
            if not isinstance(value, bool):
                raise ConfigError("monitor.enabled", f"must be true or false, got {shown(value)}")
        elif key.endswith("_ms"):
            low = 0 if key == "stale_after_ms" else 10
            check_count(value, f"monitor.{key}", low, 3_600_000)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1_000:
            raise ConfigError(f"monitor.{key}", f"must be a number in [0, 1000], got {shown(value)}")
        values[key] = value
    settings = MonitorSettings(**values)
    if settings.cpu_weight + settings.memory_weight + settings.load_average_weight <= 0:
        raise ConfigError("monitor.cpu_weight", "at least one of the three weights must be > 0")
    return settings


def _parse_logging(raw: Mapping[str, Any]) -> LoggingSettings:
    for key in raw:
        if key != "format":
            raise ConfigError(f"logging.{key}", "unknown key; valid keys: format")
    return LoggingSettings(**raw)


def _parse_admin(raw: Mapping[str, Any]) -> AdminSettings:
    valid = set(AdminSettings.__dataclass_fields__)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in valid:
            raise ConfigError(f"admin.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
        if key in ("listen", "token", "history_path") and not isinstance(value, str):
            got = "a non-string value" if key == "token" else shown(value)
            raise ConfigError(f"admin.{key}", f"must be a string, got {got}")
        if key == "history_path" and "\0" in value:
            raise ConfigError("admin.history_path", "must not contain a NUL character")
        values[key] = value
    return AdminSettings(**values)


def _parse_state(raw: Mapping[str, Any]) -> StateSettings:
    store = raw.get("store", "memory")
    if not isinstance(store, str) or store not in STORE_NAMES:
        raise ConfigError(
            "state.store", f"unknown store {shown(store)}; valid stores: {', '.join(sorted(STORE_NAMES))}"
        )
    valid = {"store", "path", "save_interval_ms"} | (REDIS_KEYS if store == "redis" else set())
    for key in raw:
        if key not in valid:
            hint = ' (a redis store key: set store = "redis")' if key in REDIS_KEYS else ""
            raise ConfigError(f"state.{key}", f"unknown key{hint}; valid keys: {', '.join(sorted(valid))}")
    path = raw.get("path", "")
    if not isinstance(path, str) or "\0" in path:
        raise ConfigError("state.path", f"must be a directory path, got {shown(path)}")
    if store == "file" and not path:
        raise ConfigError("state.path", 'is required with store = "file"')
    interval = raw.get("save_interval_ms", 10_000)
    try:
        check_count(interval, "state.save_interval_ms", 10, 3_600_000)
    except InvalidArgument as exc:
        raise ConfigError(exc.field, exc.problem) from None
    redis = parse_redis({k: v for k, v in raw.items() if k in REDIS_KEYS}) if store == "redis" else None
    return StateSettings(store=store, path=path, save_interval_ms=interval, redis=redis)


def _no_nul(section: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``section`` if no string value holds a NUL (file paths with one fail deep in the OS layer)."""
    for key, value in section.items():
        if isinstance(value, str) and "\0" in value:
            raise ConfigError(f"{name}.{key}", "must not contain a NUL character")
    return section


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(name, "must be a table")
    return value
