"""The SDK's types for AdminService: what `client.admin` takes and what it answers.

Field names and units are the contract's (`PoolConfig`, `OperationConfig`, ... in
common.proto), which are also the keys of the service's TOML config: an operator
and a client see one vocabulary, and an INVALID_ARGUMENT from the service names
the field as it is spelled here (e.g. "pool.load_report_ttl_ms"). Zero values mean
"the service default", as in the contract.

Each type checks what the contract could not carry (the wrong kind of value, a
negative count, parameters that are not JSON) when it is built, raising ValueError
naming the field; ranges and names are the service's to check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from loadwarden.sdk._types import BatchMode, LoadSource

T = TypeVar("T")

# Largest value a uint32 field carries.
_MAX_UINT32 = 2**32 - 1
# Deepest nesting of lists and tables in strategy or limit parameters.
_MAX_PARAM_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Configured(Generic[T]):
    """What a configuring admin call left behind.

    Attributes:
        status: The pool, server or operation as it now stands.
        created: True when it did not exist before the call.
    """

    status: T
    created: bool


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A backend server as registered in a pool (`PoolConfig.servers`).

    Attributes:
        id: Server id, unique within its pool; 1-128 characters of [A-Za-z0-9._:@/-].
        address: Where clients reach it, e.g. "10.0.0.7:8080"; 1-255 printable
            ASCII characters, no spaces.
        weight: Relative weight for weighted strategies, 1-1000; 0 means the default, 1.

    Raises:
        ValueError: A field is of the wrong kind; the message names it.
    """

    id: str
    address: str
    weight: int = 0

    def __post_init__(self) -> None:
        _check_text("id", self.id, empty_ok=False)
        _check_text("address", self.address, empty_ok=False)
        _check_count("weight", self.weight)


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Envoy-style outlier ejection of a pool's servers; zero values mean the defaults.

    Attributes:
        consecutive_failures: Failed outcomes in a row that eject a server, count,
            0-1,000; 0 means the default, 5.
        base_ejection_time_ms: First ejection time (the n-th lasts n times this),
            milliseconds, 0 or 100-3,600,000; 0 means the default, 30,000.
        max_ejection_time_ms: Cap on one ejection, milliseconds, 0 or
            100-86,400,000; 0 means the default, 300,000.
        max_ejection_percent: Most of the pool's servers ejected at once, percent,
            0-100; 0 means the default, 50.
        panic_threshold_percent: Below this share of un-ejected routable servers,
            ejection is ignored (panic), percent, 0-100; 0 means the default, 50.
        disabled: True turns ejection off for the pool.
        overdue_factor: A server with `consecutive_failures` requests in flight, none
            answered for this many times its usual latency, is ejected at once, count,
            0-1,000; 0 means the default, 10.
        overdue_disabled: True ejects only on failed outcomes, never on overdue requests.

    Raises:
        ValueError: A field is of the wrong kind; the message names it.
    """

    consecutive_failures: int = 0
    base_ejection_time_ms: int = 0
    max_ejection_time_ms: int = 0
    max_ejection_percent: int = 0
    panic_threshold_percent: int = 0
    disabled: bool = False
    overdue_factor: int = 0
    overdue_disabled: bool = False

    def __post_init__(self) -> None:
        for name in (
            "consecutive_failures",
            "base_ejection_time_ms",
            "max_ejection_time_ms",
            "max_ejection_percent",
            "panic_threshold_percent",
            "overdue_factor",
        ):
            _check_count(f"outlier_detection.{name}", getattr(self, name))
        _check_flag("outlier_detection.disabled", self.disabled)
        _check_flag("outlier_detection.overdue_disabled", self.overdue_disabled)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """A pool's routing and admission settings, for `Admin.configure_pool`.

    Attributes:
        name: Pool name; 1-128 characters of [A-Za-z0-9._:@/-].
        strategy: Routing strategy: "round_robin", "least_connections", "p2c",
            "peak_ewma", "q_learning" or "q_linear"; empty means "round_robin".
        strategy_params: The strategy's parameters by name, as plain values
            (numbers, strings, booleans, None, lists and dicts of them), e.g.
            {"epsilon": 0.1}; unknown names or out-of-range values are refused by
            the service (InvalidArgumentError).
        load_report_ttl_ms: A load report older than this makes the server STALE,
            milliseconds, 0 or 100-86,400,000; 0 means the default, 10,000.
        require_load_report: When True, a server that never reported its load is STALE.
        max_concurrency: Slots (AcquireSlot) granted at once, count, 0-1,000,000;
            0 means unlimited.
        max_queue_length: Requests that may wait for a slot at once, count,
            0-100,000; 0 means the default, 1,000.
        max_wait_ms: Longest a request may wait for a slot, milliseconds,
            0-3,600,000; 0 means the default, 30,000.
        lease_ttl_ms: Lease TTL when a request names none, milliseconds, 0 or
            100-86,400,000; 0 means the default, 30,000.
        limit_algorithm: Admission limit algorithm: "fixed", "aimd" or
            "gradient2"; empty means "fixed".
        limit_params: The limit algorithm's parameters by name, as `strategy_params`.
        rate_limit: Rate limit per client key, e.g. "30/minute"; empty means none.
        rate_burst: Tokens a client key may spend at once, count, 0-1,000,000;
            0 means the rate's own count.
        servers: The pool's servers; a non-empty list replaces the pool's server
            list, an empty one keeps the servers it has.
        outlier_detection: Outlier ejection; None means the defaults.
        slow_start_ms: A server that joins or returns ramps its weight from 10 % to
            100 % over this window, milliseconds, 0-3,600,000; 0 means no ramp.
        rate_limit_keys: Client keys whose rate buckets are tracked at once, count,
            0-1,000,000; 0 means the default, 10,000.
        max_lease_ttl_ms: Longest TTL a lease may ask for or be renewed with,
            milliseconds, 0 or 100-86,400,000, at least `lease_ttl_ms`; 0 means the
            larger of 600,000 and `lease_ttl_ms`.
        identity_rate_limit: With caller identities configured: one caller's rate
            over all its client keys, e.g. "600/minute"; empty means `rate_limit`.
        identity_rate_burst: Tokens one caller may spend at once under
            `identity_rate_limit`, count, 0-1,000,000; 0 means that rate's own count.
        rate_limit_keys_per_identity: Client keys tracked per caller identity,
            count, 0-1,000,000; 0 means the default, 1,000.

    Raises:
        ValueError: A field is of the wrong kind (a negative count, parameters
            that are not plain values, a server that is not a `ServerSpec`); the
            message names it.
    """

    name: str
    strategy: str = ""
    strategy_params: Mapping[str, object] | None = field(default=None, hash=False)  # a dict: not hashable
    load_report_ttl_ms: int = 0
    require_load_report: bool = False
    max_concurrency: int = 0
    max_queue_length: int = 0
    max_wait_ms: int = 0
    lease_ttl_ms: int = 0
    limit_algorithm: str = ""
    limit_params: Mapping[str, object] | None = field(default=None, hash=False)
    rate_limit: str = ""
    rate_burst: int = 0
    servers: Iterable[ServerSpec] = ()
    outlier_detection: OutlierDetection | None = None
    slow_start_ms: int = 0
    rate_limit_keys: int = 0
    max_lease_ttl_ms: int = 0
    identity_rate_limit: str = ""
    identity_rate_burst: int = 0
    rate_limit_keys_per_identity: int = 0

    def __post_init__(self) -> None:
        _check_text("name", self.name, empty_ok=False)
        for name in ("strategy", "limit_algorithm", "rate_limit", "identity_rate_limit"):
            _check_text(name, getattr(self, name), empty_ok=True)
        for name in ("strategy_params", "limit_params"):
            params = getattr(self, name)
            if params is not None:
                # A plain-dict copy: the caller's mapping may change later, this may not.
                object.__setattr__(self, name, _params(params, name))
        _check_flag("require_load_report", self.require_load_report)
        for name in _POOL_COUNTS:
            _check_count(name, getattr(self, name))
        if isinstance(self.servers, str | bytes | ServerSpec) or not isinstance(self.servers, Iterable):
            raise ValueError(f"servers must be an iterable of ServerSpec, got {self.servers!r}")
        servers = tuple(self.servers)
        for index, server in enumerate(servers):
            if not isinstance(server, ServerSpec):
                raise ValueError(f"servers[{index}] must be a ServerSpec, got {server!r}")
        object.__setattr__(self, "servers", servers)
        if self.outlier_detection is not None and not isinstance(self.outlier_detection, OutlierDetection):
            raise ValueError(f"outlier_detection must be an OutlierDetection or None, got {self.outlier_detection!r}")


_POOL_COUNTS = (
    "load_report_ttl_ms",
    "max_concurrency",
    "max_queue_length",
    "max_wait_ms",
    "lease_ttl_ms",
    "rate_burst",
    "slow_start_ms",
    "rate_limit_keys",
    "max_lease_ttl_ms",
    "identity_rate_burst",
    "rate_limit_keys_per_identity",
)


@dataclass(frozen=True, slots=True)
class OperationConfig:
    """A batch operation's sizing settings, for `Admin.configure_operation`.

    Attributes:
        name: Operation name; 1-128 characters of [A-Za-z0-9._:@/-].
        min_batch_size: Smallest batch size answered, count, 1-1,000,000.
        max_batch_size: Largest batch size answered, count, min_batch_size-1,000,000.
        default_batch_size: Size answered before any decision and whenever the load
            is unknown, count, in [min_batch_size, max_batch_size].
        mode: How the size is decided; `BatchMode.UNSPECIFIED` means THRESHOLD.
        low_threshold_percent: Load score at or below which the max size is
            answered, percent, 0-100; 0 means the default, 50.
        high_threshold_percent: Load score at or above which the min size is
            answered, percent, above the low one, 0-100; 0 means the default, 80.
        cooldown_ms: Shortest time between two size changes, milliseconds, 0-86,400,000.
        min_step: Size changes smaller than this are suppressed, count, 0-1,000,000.
        target_latency_ms: `BatchMode.LATENCY_TARGET`: target batch duration,
            milliseconds, > 0 in that mode.
        additive_step: `BatchMode.LATENCY_TARGET`: size added after a batch under
            target, count; 0 means 1.
        backoff_ratio: `BatchMode.LATENCY_TARGET`: factor applied on a breach,
            0-1 exclusive; 0 means 0.9.
        load_source: Where the load score comes from; `LoadSource.UNSPECIFIED`
            means HOST (the service host's own load).
        pool: With `LoadSource.POOL`: the pool whose reported load drives the size.

    Raises:
        ValueError: A field is of the wrong kind; the message names it.
    """

    name: str
    min_batch_size: int
    max_batch_size: int
    default_batch_size: int
    mode: BatchMode = BatchMode.UNSPECIFIED
    low_threshold_percent: float = 0.0
    high_threshold_percent: float = 0.0
    cooldown_ms: int = 0
    min_step: int = 0
    target_latency_ms: float = 0.0
    additive_step: int = 0
    backoff_ratio: float = 0.0
    load_source: LoadSource = LoadSource.UNSPECIFIED
    pool: str = ""

    def __post_init__(self) -> None:
        _check_text("name", self.name, empty_ok=False)
        _check_text("pool", self.pool, empty_ok=True)
        for name in (
            "min_batch_size",
            "max_batch_size",
            "default_batch_size",
            "cooldown_ms",
            "min_step",
            "additive_step",
        ):
            _check_count(name, getattr(self, name))
        for name in ("low_threshold_percent", "high_threshold_percent", "target_latency_ms", "backoff_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.mode, BatchMode):
            raise ValueError(f"mode must be a BatchMode, got {self.mode!r}")
        if not isinstance(self.load_source, LoadSource):
            raise ValueError(f"load_source must be a LoadSource, got {self.load_source!r}")


def _check_text(name: str, value: object, *, empty_ok: bool) -> None:
    if not isinstance(value, str) or not (empty_ok or value):
        kind = "a string" if empty_ok else "a non-empty string"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UINT32:
        raise ValueError(f"{name} must be an integer >= 0 (0 means the service default), got {value!r}")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _params(params: object, name: str) -> dict[str, object]:
    """A plain copy of a parameter table, checked to be what a protobuf Struct holds."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{name} must be a dict of parameters by name, got {params!r}")
    copy = _plain(params, name, 0)
    assert isinstance(copy, dict)
    return copy


def _plain(value: object, where: str, depth: int) -> object:
    # JSON's values: a Struct carries nothing else (its numbers are doubles, so finite only).
    if depth > _MAX_PARAM_DEPTH:
        raise ValueError(f"{where}: nested more than {_MAX_PARAM_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return value
    if isinstance(value, Mapping):
        table: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            table[key] = _plain(item, f"{where}[{key!r}]", depth + 1)
        return table
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    raise ValueError(
        f"{where} must hold only numbers, strings, booleans, None, lists and dicts, got {type(value).__name__}"
    )
