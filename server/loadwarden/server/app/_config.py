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
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loadwarden.policy import (
    NAME_CHARS,
    NAME_MAX_LEN,
    NAME_PATTERN,
    InvalidArgument,
    OperationSettings,
    parse_operation,
    parse_pool,
)

from .._errors import ConfigError
from ..engine._core import CoreLimits
from ..engine._health_checks import HealthCheckSettings
from ..engine._orca_limits import OrcaSettings
from ..engine._planner import PlanningSettings, PoolScaling
from ..engine._predictive import OperationPlanning
from ..fields import first_problem
from ..mesh import XdsSettings, parse_rls
from ..rpc._auth import AuthSettings
from ..rpc._tls import TlsSettings
from ..shared import REDIS_KEYS, parse_redis
from ._config_file import CONFIG_FILE, HEALTH_CHECK_TABLE, SECTIONS, STATE_TABLE
from ._settings import (
    DEFAULT_LISTEN,
    AdminSettings,
    LoggingSettings,
    MonitorSettings,
    PoolSpec,
    ServiceConfig,
    StateSettings,
    check_listen,
)
from ._store import STORE_NAMES

__all__ = [
    "DEFAULT_LISTEN",
    "AdminSettings",
    "LoggingSettings",
    "MonitorSettings",
    "PoolSpec",
    "ServiceConfig",
    "StateSettings",
    "apply_env_overrides",
    "check_listen",
    "load_config",
    "parse_config",
]

ENV_PREFIX = "LOADWARDEN_"


_TOP_KEYS = SECTIONS
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config file larger than this is a mistake, not a config
_VERBATIM_ENV = (
    ["admin", "token"],
    ["auth", "client_token"],
    ["tls", "cert_file"],
    ["tls", "key_file"],
    ["tls", "client_ca_file"],
)


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
    """Validates a config mapping shaped like the TOML file.

    Raises:
        ConfigError: naming the first offending key, as ``loadwarden check-config`` prints it.
    """
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(key, f"unknown section; valid sections: {', '.join(sorted(_TOP_KEYS))}")
    _check_state_keys(raw.get("state"))
    try:
        file = CONFIG_FILE.model_validate(raw).model_dump()  # section -> key -> checked value
    except ValidationError as exc:
        raise ConfigError(*first_problem(exc, CONFIG_FILE)) from None
    service = file["service"]
    auto = service.pop("auto_register_operations")
    limits = CoreLimits(**file["limits"], auto_register_operations=auto)
    try:
        pools = _pools(file["pools"], limits)
        operations = _operations(file["operations"], limits)
    except InvalidArgument as exc:
        raise ConfigError(exc.field, exc.problem) from None
    monitor = MonitorSettings(**file["monitor"])
    if monitor.cpu_weight + monitor.memory_weight + monitor.load_average_weight <= 0:
        raise ConfigError("monitor.cpu_weight", "at least one of the three weights must be > 0")
    state = file["state"]
    store = state.pop("store")
    if store == "file" and not state["path"]:
        raise ConfigError("state.path", 'is required with store = "file"')
    redis = parse_redis(state) if store == "redis" else None
    return ServiceConfig(
        **service,
        limits=limits,
        pools=pools,
        operations=operations,
        monitor=monitor,
        admin=AdminSettings(**file["admin"]),
        tls=TlsSettings(**file["tls"]),
        auth=AuthSettings(**file["auth"]),
        state=StateSettings(store=store, path=state["path"], save_interval_ms=state["save_interval_ms"], redis=redis),
        logging=LoggingSettings(**file["logging"]),
        planning=_planning(file["planning"], file["admin"], limits),
        xds=XdsSettings(**file["xds"]),
        rls=parse_rls(file["rls"]),
    )


def _check_state_keys(state: Any) -> None:
    """Redis keys need ``store = "redis"``: without it, the keys the State table takes are fewer."""
    if not isinstance(state, Mapping) or state.get("store", "memory") not in STORE_NAMES:
        return  # the table says what is wrong
    if state.get("store") == "redis":
        return
    valid = sorted(key for key in STATE_TABLE.model_fields if key not in REDIS_KEYS)
    for key in state:
        if key not in valid:
            hint = ' (a redis store key: set store = "redis")' if key in REDIS_KEYS else ""
            raise ConfigError(f"state.{key}", f"unknown key{hint}; valid keys: {', '.join(valid)}")


def _pools(tables: Mapping[str, Any], limits: CoreLimits) -> tuple[PoolSpec, ...]:
    if len(tables) > limits.max_pools:
        raise ConfigError("pools", f"{len(tables)} pools configured; limits.max_pools is {limits.max_pools}")
    pools = []
    for name, values in tables.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"pools.{name}", "must be a table")
        values = dict(values)
        check = _health_check(values.pop("health_check", None), f"pools.{name}")
        orca = _orca(values.pop("orca", None), f"pools.{name}")
        try:
            settings, servers = parse_pool(name, f"pools.{name}", values, f"pools.{name}", limits.max_servers_per_pool)
        except InvalidArgument as exc:
            raise _with_file_keys(exc, f"pools.{name}") from None
        if check is not None and not servers:
            raise ConfigError(
                f"pools.{name}.health_check",
                f"checks only the servers listed in pools.{name}.servers, and it lists none",
            )
        if orca is not None and orca.enabled and not servers:
            raise ConfigError(
                f"pools.{name}.orca", f"streams only from the servers listed in pools.{name}.servers, and it lists none"
            )
        if orca is not None and orca.report_interval_ms >= settings.load_report_ttl_ms:
            raise ConfigError(
                f"pools.{name}.orca.report_interval_ms",
                f"must be below the pool's load_report_ttl_ms ({settings.load_report_ttl_ms}), or every server "
                f"turns stale between reports; got {orca.report_interval_ms}",
            )
        pools.append(PoolSpec(settings, servers or (), check, orca))
    return tuple(pools)


_UNKNOWN_KEY = "unknown key; valid keys: "
FILE_ONLY_POOL_KEYS = ("health_check", "orca")  # a pool's keys ConfigurePool does not take


def _with_file_keys(exc: InvalidArgument, where: str) -> InvalidArgument:
    """The kernel's error, its list of a pool's valid keys completed with the file-only ones."""
    if exc.field.count(".") != where.count(".") + 1 or not exc.problem.startswith(_UNKNOWN_KEY):
        return exc
    valid = sorted([*exc.problem.removeprefix(_UNKNOWN_KEY).split(", "), *FILE_ONLY_POOL_KEYS])
    return InvalidArgument(exc.field, _UNKNOWN_KEY + ", ".join(valid))


def _orca(values: Any, where: str) -> OrcaSettings | None:
    """A pool's ``orca`` table checked, or None when absent."""
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}.orca", "must be a table")
    valid = ("enabled", "report_interval_ms", "initial_backoff_ms", "max_backoff_ms", "max_streams")
    for key in values:
        if key not in valid:
            raise ConfigError(f"{where}.orca.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
    try:
        return OrcaSettings(**values)
    except InvalidArgument as exc:
        raise ConfigError(f"{where}.orca.{exc.field}", exc.problem) from None


def _health_check(values: Any, where: str) -> HealthCheckSettings | None:
    """A pool's ``health_check`` table checked, or None when absent."""
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}.health_check", "must be a table")
    try:
        table = HEALTH_CHECK_TABLE.model_validate(values)
    except ValidationError as exc:
        key, problem = first_problem(exc, HEALTH_CHECK_TABLE)
        raise ConfigError(f"{where}.health_check.{key}", problem) from None
    check = HealthCheckSettings(**table.model_dump())
    if check.timeout_ms > check.interval_ms:
        raise ConfigError(
            f"{where}.health_check.timeout_ms",
            f"must be at most interval_ms ({check.interval_ms}), got {check.timeout_ms}",
        )
    if check.service and check.protocol != "grpc":
        raise ConfigError(f"{where}.health_check.service", 'names a gRPC service: it needs protocol = "grpc"')
    return check


def _planning(values: Mapping[str, Any], admin: Mapping[str, Any], limits: CoreLimits) -> PlanningSettings:
    """The [planning] section, its pools and operations, and what ties it to the history and the horizon."""
    values = dict(values)
    tables, operation_tables = values.pop("pools"), values.pop("operations")
    if len(tables) > limits.max_pools:
        raise ConfigError("planning.pools", f"{len(tables)} tables; limits.max_pools is {limits.max_pools}")
    pools: dict[str, PoolScaling] = {}
    for name, table in tables.items():
        where = f"planning.pools.{name}"
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(where, f"a pool name must be 1-{NAME_MAX_LEN} characters of {NAME_CHARS}")
        scaling = PoolScaling(**table)
        if scaling.max_servers < scaling.min_servers:
            raise ConfigError(f"{where}.max_servers", f"must be at least min_servers ({scaling.min_servers})")
        for key in ("lead_time_s", "limit_lead_s"):
            if getattr(scaling, key) > values["horizon_s"]:
                raise ConfigError(
                    f"{where}.{key}",
                    f"must be at most planning.horizon_s ({values['horizon_s']:g}), got {getattr(scaling, key):g}",
                )
        try:
            scaling.settings()
        except InvalidArgument as exc:
            raise ConfigError(f"{where}.{exc.field}", exc.problem) from None
        pools[name] = scaling
    operations = _planned_operations(operation_tables, values["horizon_s"], limits)
    planning = PlanningSettings(**values, pools=pools, operations=operations)
    for period in planning.seasons_s:
        if period % planning.step_s:
            raise ConfigError(
                "planning.step_s",
                f"must divide every season in planning.seasons_s evenly ({period:g} s), got {planning.step_s:g}",
            )
    if planning.horizon_s < planning.step_s:
        raise ConfigError(
            "planning.horizon_s", f"must be at least step_s ({planning.step_s:g}), got {planning.horizon_s:g}"
        )
    if planning.enabled and planning.history_s > admin["history_retention_s"]:
        raise ConfigError(
            "planning.history_s",
            f"must be at most admin.history_retention_s ({admin['history_retention_s']}): "
            f"the history keeps no more, got {planning.history_s:g}",
        )
    try:
        planning.forecast_settings()
    except InvalidArgument as exc:
        raise ConfigError(f"planning.{exc.field}", exc.problem) from None
    return planning


def _planned_operations(
    tables: Mapping[str, Any], horizon_s: float, limits: CoreLimits
) -> dict[str, OperationPlanning]:
    """[planning.operations.<name>] tables: names, how many, and the lead within the horizon."""
    if len(tables) > limits.max_operations:
        raise ConfigError(
            "planning.operations", f"{len(tables)} tables; limits.max_operations is {limits.max_operations}"
        )
    operations: dict[str, OperationPlanning] = {}
    for name, table in tables.items():
        where = f"planning.operations.{name}"
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(where, f"an operation name must be 1-{NAME_MAX_LEN} characters of {NAME_CHARS}")
        planning = OperationPlanning(**table)
        if planning.lead_s > horizon_s:
            raise ConfigError(
                f"{where}.lead_s", f"must be at most planning.horizon_s ({horizon_s:g}), got {planning.lead_s:g}"
            )
        operations[name] = planning
    return operations


def _operations(tables: Mapping[str, Any], limits: CoreLimits) -> tuple[OperationSettings, ...]:
    if len(tables) > limits.max_operations:
        raise ConfigError(
            "operations", f"{len(tables)} operations configured; limits.max_operations is {limits.max_operations}"
        )
    operations = []
    for name, values in tables.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"operations.{name}", "must be a table")
        operations.append(parse_operation(name, f"operations.{name}", values, f"operations.{name}"))
    return tuple(operations)
