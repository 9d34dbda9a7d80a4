"""The scenario file's shape: a pydantic Table per section, and the file's JSON Schema.

``parse_scenario`` validates the file (sections and overrides applied) against
``ScenarioFile``: every key, type and range below, in the words scenario errors
have always used. What one value alone cannot say stays with the parser
(``_scenario_file``): keys that do not apply to the rest of the file (``users``
with open traffic, ``clients`` without local decisions, ``[batch]`` outside mode
batch), named before their values are read; then the backend ids and counts, the
traffic's rate, overlapping phases, and the strategies with their parameters.

The service validates what it takes itself: ``[pool]`` with ``parse_pool``,
``[params]`` with the strategies' own parsers, and ``loadwarden evaluate`` the
``[batch]`` table (its ``BATCH_TABLE``, through the ``_evaluate_options`` hook).
The schema describes those tables as far as this package knows them.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar

import annotated_types
from pydantic import ConfigDict, Field, create_model

from loadwarden.policy import shown
from loadwarden.policy.batching import MODES
from loadwarden.policy.limits import LIMITS
from loadwarden.policy.strategies import STRATEGIES
from loadwarden.server.fields import (
    SCHEMA_DIALECT,
    Checked,
    Choice,
    Count,
    Flag,
    Number,
    Table,
    Text,
    problem,
    table_of,
)

from ._config import DECISION_MODES, MAX_REQUESTS, SERVICE_DISTRIBUTIONS, Phase, SimServer
from ._provision_trace import INTERPOLATIONS
from ._provisioning import FORECAST_BOUNDS, METRICS, PROVISIONING_MODES, ProvisioningSettings

MODES_BY_NAME = ("route", "slot", "batch")
# Clients deciding locally when the file lists "local" without saying how many.
DEFAULT_CLIENTS = 3
# The most clients (real processes in evaluate) one scenario may ask for.
MAX_CLIENTS = 64
TRAFFIC_KINDS = ("open", "closed", "trace")
# Traffic keys of each kind (the others are refused with it); duration_s and max_in_flight as listed.
TRACE_KEYS = ("trace", "time_scale", "rate_scale", "interpolation")
# Open traffic's repeating surges (any of them: the rate, the period and the length are required).
SURGE_KEYS = ("surge_load", "surge_rate_per_s", "surge_every_s", "surge_duration_s", "surge_start_s")
SECTIONS = ("simulate", "evaluate")
MAX_SERVERS = 100_000
DEFAULT_MAX_IN_FLIGHT = 1_000
DEFAULT_LOAD_REPORT_INTERVAL_MS = 1_000.0
# The service's limits.route_push_interval_ms range; a test holds it to CoreLimits.
PUSH_INTERVAL_RANGE = (5, 60_000)
# Pool keys a scenario may not set in [pool], and what sets them instead.
POOL_RESERVED = {
    "strategy": "strategies",
    "strategy_params": "params",
    "limit_algorithm": "strategies",
    "limit_params": "params",
    "servers": "backends",
}
# Keys an override section may set besides the traffic keys and the command's options.
OVERRIDE_KEYS = (
    *("seed", "strategies", "decisions", "clients", "route_push_interval_ms", "warmup_s", "timeout_ms"),
    *("load_report_interval_ms", "params", "pool", "traffic", "backends", "batch"),
)
# Override tables merged key by key into the file's (params one level deeper); other keys replace.
MERGED_TABLES = ("params", "pool", "traffic", "batch")
NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"

Positive = Annotated[float, Number(above=True, wording="bounds")]
NotNegative = Annotated[float, Number(wording="bounds")]
# Absent by default, and never None when given (``Positive | None`` takes None as absent).
SomePositive = Annotated[float | None, Number(above=True, wording="bounds")]
SomeNotNegative = Annotated[float | None, Number(wording="bounds")]


def _count(low: int, high: int) -> Any:
    return Annotated[int, Count(low, high, whole_floats=True)]


def _table(value: Any) -> dict[str, Any]:
    """A table whose keys are checked elsewhere (by the service's parsers, or when a section applies)."""
    if not isinstance(value, Mapping):
        raise problem(f"must be a table, got {shown(value)}")
    return dict(value)


def _table_or_none(value: Any) -> dict[str, Any] | None:
    return None if value is None else _table(value)


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"must be a string, got {shown(value)}")
    if not re.fullmatch(NAME_PATTERN, value):
        raise problem(f"must be 1-64 letters, digits, '.', '_' or '-', got {shown(value)}")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise problem(f"must be a file path (a non-empty string), got {shown(value)}")
    return value


def _provisioning_modes(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise problem(
            f'must be a non-empty list of modes, e.g. ["fixed", "reactive", "predictive"], got {shown(value)}'
        )
    return value


def _phases(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise problem(f"must be a list of [[...schedule]] tables, got {shown(value)}")
    return value


def _backends(value: Any) -> list[Any]:
    if value is None:
        raise problem("is required: add at least one [[backends]] table")
    if not isinstance(value, list) or not value:
        raise problem(f"must be a non-empty list of [[backends]] tables, got {shown(value)}")
    return value


def _names(value: Any) -> list[Any]:
    """A non-empty list; its names are checked against the mode's registry, which the file picks."""
    if not isinstance(value, list) or not value:
        raise problem(f"must be a non-empty list of names, got {shown(value)}")
    return value


def _modes(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise problem(f'must be a non-empty list of modes, e.g. ["central", "local"], got {shown(value)}')
    return value


def _showing_got(table: type[Table]) -> type[Table]:
    """``table``, whose "must be a table" shows the value found instead."""
    table.not_a_table = "must be a table, got {got}"
    return table


PHASE_TABLE = _showing_got(
    table_of(
        "Phase",
        {
            Phase: {
                "start_s": NotNegative,
                "duration_s": Positive,
                "service_ms": Positive | None,
                "slowdown": Positive,
                "outage": Flag,
            }
        },
        "A [[backends.schedule]] phase: a stretch of time in which the backend is slower or down."
        " Phases of one backend may not overlap.",
    )
)
BACKEND_TABLE = _showing_got(
    table_of(
        "Backend",
        {
            SimServer: {
                "id": Text,
                "speed": Positive,
                "workers": _count(1, 100_000),
                "base_ms": Positive,
                "service": Annotated[str, Choice(SERVICE_DISTRIBUTIONS)],
                "weight": _count(1, 1_000),
                "schedule": Annotated[list[PHASE_TABLE], Checked(_phases)],  # type: ignore[valid-type]  # made at import
            }
        },
        "A [[backends]] table: one simulated backend, or `count` identical ones.",
        extra={
            "count": (
                _count(1, MAX_SERVERS),
                1,
                f"Identical backends from this table, ids `<id>-0`, `<id>-1`, ... (at most {MAX_SERVERS:,} in all).",
            ),
            "failure_rate": (
                Annotated[float, Number(0, 1, wording="bounds")],
                0.0,
                "Chance in [0, 1] that a served request fails; a failed request still takes its service time.",
            ),
        },
    )
)


class TrafficTable(Table):
    """[traffic]: open-loop Poisson arrivals at a rate, closed-loop users, or a trace of offered load.

    The run stops at `requests` started or after `duration_s`, whichever comes first (a trace:
    at its end or after `duration_s`).
    """

    model_config = ConfigDict(title="Traffic")
    not_a_table: ClassVar[str] = "must be a table, got {got}"

    kind: Annotated[str, Choice(TRAFFIC_KINDS)] = "open"
    """`open`: Poisson arrivals at a rate, whatever the answers; `closed`: `users` users, each sending
    its next request after the previous one's answer; `trace`: Poisson arrivals at the rate of a
    trace file, played compressed (`loadwarden simulate` only)."""
    duration_s: Positive | None = None
    """Requests start during this many seconds; at least one of `duration_s` and `requests` is required
    (a trace plays to its end without either)."""
    requests: Annotated[int, Count(1, MAX_REQUESTS, whole_floats=True)] | None = None
    """Requests started; the run stops at whichever of `duration_s` and `requests` comes first."""
    users: Annotated[int | None, Count(1, 1_000_000, whole_floats=True)] = None
    """Closed: concurrent users (required with `kind = "closed"`)."""
    think_ms: NotNegative = 0.0
    """Closed: mean think time between a user's answer and its next request, ms (exponential; 0: none)."""
    load: SomePositive = None
    """Open: the arrival rate as a fraction of the backends' total capacity (the sum of workers x speed x
    1000 / base_ms per second). Exactly one of `load` and `rate_per_s`."""
    rate_per_s: SomePositive = None
    """Open: the arrival rate, per second. Exactly one of `load` and `rate_per_s`."""
    load_end: SomePositive = None
    """Open, with `load`: the rate ramps linearly from `load` at the start to this at `duration_s`."""
    rate_end_per_s: SomePositive = None
    """Open, with `rate_per_s`: the rate ramps linearly from `rate_per_s` at the start to this at
    `duration_s`, per second."""
    surge_load: SomePositive = None
    """Open, with `load`: surges that repeat, the arrival rate during each as a fraction of the
    backends' total capacity (with `surge_every_s` and `surge_duration_s`). Between surges the rate
    is `load` (ramping to `load_end` when set)."""
    surge_rate_per_s: SomePositive = None
    """Open, with `rate_per_s`: surges that repeat, the arrival rate during each, per second (with
    `surge_every_s` and `surge_duration_s`)."""
    surge_every_s: SomePositive = None
    """Open, with surges (required): seconds from one surge's start to the next's."""
    surge_duration_s: SomePositive = None
    """Open, with surges (required): how long each surge lasts, s; less than `surge_every_s`."""
    surge_start_s: SomeNotNegative = None
    """Open, with surges: when the first surge starts, s from the start of the traffic (default 0)."""
    max_in_flight: Annotated[int, Count(1, MAX_REQUESTS, whole_floats=True)] = DEFAULT_MAX_IN_FLIGHT
    """Open and trace: an arrival finding this many requests in flight is dropped, counted as a failure
    that reached no backend."""
    trace: Annotated[str | None, Checked(_path, type="string", minLength=1)] = None
    """Trace (required with `kind = "trace"`): a CSV file with the header `t_s,rate`, one point a line
    (trace seconds, strictly increasing; offered requests/s, >= 0), relative to the scenario file."""
    time_scale: SomePositive = None
    """Trace (required): trace seconds played per simulated second (360: a trace hour in 10 s)."""
    rate_scale: SomePositive = None
    """Trace: simulated arrivals per second for each offered request/s of the trace (default 1)."""
    interpolation: Annotated[str, Choice(INTERPOLATIONS)] = "linear"
    """Trace: the rate between two points, `linear` (interpolated) or `step` (the earlier point's)."""


_PROVISIONING = ProvisioningSettings()  # the defaults


class ProvisioningTable(Table):
    """[provisioning]: servers come and go as a trace plays, once per mode (`loadwarden simulate` only).

    Needs `traffic.kind = "trace"`, one routing strategy and one [[backends]] table, the template of
    every server (without `count`). Times are trace seconds. See scenarios/README.md.
    """

    model_config = ConfigDict(title="Provisioning")
    not_a_table: ClassVar[str] = "must be a table, got {got}"

    modes: Annotated[
        list[Annotated[str, Choice(PROVISIONING_MODES)]], annotated_types.MinLen(1), Checked(_provisioning_modes)
    ] = Field(list(PROVISIONING_MODES), json_schema_extra={"uniqueItems": True})
    """Modes compared, in order: `fixed` (servers for the trace's peak at the target, all the time),
    `reactive` (the HPA rule) and `predictive` (the HPA rule and the forecast peak within the lead time)."""
    target: Annotated[float, Number(0, 1, above=True, wording="bounds")] = _PROVISIONING.target
    """Target utilisation of a ready server, in (0, 1]."""
    tolerance: Annotated[float, Number(0, 1, below=True, wording="bounds")] = _PROVISIONING.tolerance
    """No scaling while the utilisation over the target is within this of 1 (the HPA's 0.1)."""
    interval_s: Positive = _PROVISIONING.interval_s
    """Trace seconds between two scaling decisions (the HPA's sync period, 15 s)."""
    lead_time_s: Positive = _PROVISIONING.lead_time_s
    """Trace seconds from asking for a server to its being routable (a VM or pod boot)."""
    scale_up_window_s: NotNegative = _PROVISIONING.scale_up_window_s
    """Scale-up stabilisation window, trace seconds (the HPA's 0: at once)."""
    scale_down_window_s: NotNegative = _PROVISIONING.scale_down_window_s
    """Scale-down stabilisation window, trace seconds (the HPA's 300)."""
    min_servers: Annotated[int, Count(1, 100_000, whole_floats=True)] = _PROVISIONING.min_servers
    """Fewest servers of every mode."""
    max_servers: Annotated[int, Count(1, 100_000, whole_floats=True)] = _PROVISIONING.max_servers
    """Most servers of every mode."""
    evaluate_last_s: Positive = _PROVISIONING.evaluate_last_s
    """The report covers the last this many trace seconds played (default a week); the earlier ones
    are the history the forecaster learns from. Every mode plays the whole trace."""
    metric: Annotated[str, Choice(METRICS)] = _PROVISIONING.metric
    """What the rules read as the offered load over an interval: `rate` (the trace's rate) or
    `arrivals` (the simulated arrivals counted)."""
    forecast_step_s: Positive = _PROVISIONING.forecast_step_s
    """Predictive: the forecaster reads the load averaged over buckets of this many trace seconds
    (a whole multiple of `interval_s`; a day a whole multiple of it)."""
    forecast_history_s: Positive = _PROVISIONING.forecast_history_s
    """Predictive: the newest trace seconds of history the forecaster reads (default 15 days)."""
    forecast_every_s: Positive = _PROVISIONING.forecast_every_s
    """Predictive: trace seconds between two forecasts (a whole multiple of `forecast_step_s`)."""
    forecast_bound: Annotated[str, Choice(FORECAST_BOUNDS)] = _PROVISIONING.forecast_bound
    """Predictive: provision for the forecast peak's `value` (the point forecast) or its `upper`
    bound (the prediction interval's, 80 %)."""


_ALL_STRATEGIES = sorted({*STRATEGIES, *LIMITS, *MODES})
# Tables of a variant's service_config the run writes itself, and from what.
SERVICE_CONFIG_RESERVED = {
    "pools": "[pool], [[backends]] and the strategy",
    "operations": "[batch] and the strategy",
}


def _strategy_name(value: Any) -> str:
    """A string; the mode's registry, which the file picks, checks the name."""
    if not isinstance(value, str):
        raise problem(f"must be a strategy name (a string), got {shown(value)}")
    return value


class VariantTable(Table):
    """[variants.<name>]: a run of `loadwarden evaluate` with one of the mode's strategies and
    its own settings in the service's config; `strategies` lists it by its name.

    The run's `loadwarden.toml` is written as for the strategy, then `service_config` is
    merged over it (tables key by key, other values replaced) and checked with the service's
    own config parser before any process starts.
    """

    model_config = ConfigDict(title="Variant")
    not_a_table: ClassVar[str] = "must be a table, got {got}"

    strategy: Annotated[str, Checked(_strategy_name, type="string", enum=_ALL_STRATEGIES)]
    """The strategy the run uses (a routing strategy, limit algorithm or batch controller of the
    file's mode), with its [params.<strategy>]."""
    service_config: Annotated[
        dict[str, Any],
        Checked(
            _table,
            type="object",
            propertyNames={"not": {"enum": sorted(SERVICE_CONFIG_RESERVED)}},
            additionalProperties={"type": "object"},
        ),
    ] = Field(default_factory=dict)
    """Sections of loadwarden.toml merged over the run's generated config, e.g. [planning] and
    [admin]; not [pools] or [operations], which the scenario writes ([pool], [batch])."""


_TABLE = Annotated[dict[str, Any], Checked(_table, type="object")]
_POOL = Annotated[
    dict[str, Any], Checked(_table, type="object", propertyNames={"not": {"enum": sorted(POOL_RESERVED)}})
]
_PARAMS = Annotated[
    dict[str, Any],
    Checked(_table, type="object", propertyNames={"enum": _ALL_STRATEGIES}, additionalProperties={"type": "object"}),
]


class ScenarioFile(Table):
    """A scenario file: backends, traffic, and the strategies to compare on them (scenarios/README.md).

    What ``parse_scenario`` validates, fields in the order the parser has always checked
    them; ``[pool]``, ``[params]``, ``[batch]`` and the sections go on as tables.
    """

    model_config = ConfigDict(title="Scenario")

    name: Annotated[str, Checked(_name, type="string", pattern=f"^{NAME_PATTERN}$")] = "scenario"
    """1-64 letters, digits, `.`, `_`, `-`; names the output directory (default: the file's stem)."""
    description: Text = ""
    """Shown under the report's title."""
    seed: Annotated[int, Count(0, 2**63 - 1, whole_floats=True)] = 1
    """Seeds arrivals, request sizes, failures and routing; strategies see the same arrivals."""
    mode: Annotated[str, Choice(MODES_BY_NAME)] = "route"
    """What is compared: `route` (SelectServer + ReportOutcome), `slot` (AcquireSlot) or `batch`
    (GetBatchSize). `simulate` runs mode `route` only."""
    warmup_s: NotNegative = 0.0
    """Requests arriving earlier are left out of the statistics, s."""
    timeout_ms: Positive | None = None
    """Client deadline per backend call, ms: a request not answered by then fails with latency
    `timeout_ms`, and the backend drops it (default: none)."""
    load_report_interval_ms: Annotated[float, Number(1, 3_600_000, wording="bounds")] = DEFAULT_LOAD_REPORT_INTERVAL_MS
    """How often each backend reports its load to the Decision service, ms."""
    backends: Annotated[
        list[BACKEND_TABLE],  # type: ignore[valid-type]  # made at import
        annotated_types.MinLen(1),
        Checked(_backends),
    ]
    """The backends (at least one [[backends]] table)."""
    traffic: TrafficTable
    """The traffic (required)."""
    pool: _POOL = Field(default_factory=dict)
    """Extra settings of the pool the strategies route over: the keys of [pools.X] in loadwarden.toml
    (validated with the service's parse_pool), except `strategy`, `strategy_params`,
    `limit_algorithm`, `limit_params` and `servers`, which `strategies`, [params] and [[backends]] set."""
    params: _PARAMS = Field(default_factory=dict)
    """Parameters per strategy name, as the service takes them: `strategy_params` (mode route),
    `limit_params` (mode slot) or the operation settings of [operations.X] (mode batch); only names in
    the mode's registry."""
    strategies: Annotated[
        list[Any],
        Checked(
            _names,
            type="array",
            # A strategy of any mode, or a variant's name (the file's [variants]; without them
            # scenario_schema() holds the names to the strategies).
            items={"type": "string", "anyOf": [{"enum": _ALL_STRATEGIES}, {"pattern": f"^{NAME_PATTERN}$"}]},
            minItems=1,
            uniqueItems=True,
        ),
    ]
    """Names compared, in order: routing strategies (mode route), limit algorithms (slot) or batch
    controller modes (batch), and the names of [variants]. A strategy that cannot serve the backend
    count (`q_learning`: at most 10) is rejected."""
    decisions: Annotated[list[Annotated[str, Choice(DECISION_MODES)]], annotated_types.MinLen(1), Checked(_modes)] = (
        Field(["central"], json_schema_extra={"uniqueItems": True})
    )
    """Where each strategy's decisions are made, in this order: `central` (the service decides
    every request) and `local` (the clients decide from pushed routing tables; mode route only)."""
    clients: Annotated[int, Count(1, MAX_CLIENTS, whole_floats=True)] | None = None
    """Client processes (evaluate) or simulated clients (simulate) sending the traffic when
    `decisions` lists `local` (default 3); an error with central decisions only."""
    route_push_interval_ms: Annotated[int, Count(*PUSH_INTERVAL_RANGE, whole_floats=True)] | None = None
    """How often the service pushes a changed routing table, ms (the service's
    limits.route_push_interval_ms; default: the service's)."""
    batch: _TABLE = Field(default_factory=dict)
    """Mode batch: the batch operation and workers, read by `loadwarden evaluate`."""
    simulate: _TABLE = Field(default_factory=dict)
    """Overrides for `loadwarden simulate` only."""
    evaluate: _TABLE = Field(default_factory=dict)
    """Overrides and options for `loadwarden evaluate` only."""
    provisioning: ProvisioningTable | None = None
    """Servers that come and go as a trace plays, compared across provisioning modes
    (`loadwarden simulate` only)."""
    variants: Annotated[dict[str, VariantTable], Checked(_table)] = Field(default_factory=dict)
    """Runs of `loadwarden evaluate` that take one of the mode's strategies with their own
    settings in the service's config, by name; `strategies` lists them (`loadwarden evaluate` only)."""


_REQUIRED = {
    "backends": "is required: add at least one [[backends]] table",
    "traffic": "is required: add a [traffic] table",
    "strategies": 'is required: the names to compare, e.g. ["round_robin", "p2c"]',
}


def required(key: str, wording: str) -> str:
    """The problem of a missing key: the top-level tables say what to add."""
    return _REQUIRED.get(key, wording) if wording == "is required" else wording


# --- command options and the override sections -------------------------------------------

FAULT_KINDS = ("kill_service",)
# Keys only ``evaluate`` reads (there is a service process and an SDK client only there), and
# how a file writes them.
EVALUATE_ONLY = {"client": "[evaluate.client]", "faults": "[[evaluate.faults]]"}


class Client(Table):
    """[evaluate.client]: the SDK client (`AsyncClient`) every run's traffic goes through.

    Its circuit breakers, retries and local fallback are the SDK's defaults; each key turns
    one of them off, to see what an application without it would see.
    """

    model_config = ConfigDict(title="Client")
    not_a_table: ClassVar[str] = "must be a table, got {got}"

    breaker: Flag = True
    """The SDK's circuit breakers (its default `BreakerConfig`, one per RPC method); false: none."""
    retry: Flag = True
    """The SDK's retries (its default `RetryConfig`: 3 attempts, full jitter, a budget); false: none."""
    fallback: Flag = True
    """Use what the SDK answers locally when the service cannot be reached (round robin over the
    servers it last saw; a local slot in mode slot); false: such a request is not sent and fails
    (mode slot: the SDK's `slot_fallback = "fail_closed"`)."""


class Fault(Table):
    """A [[evaluate.faults]] entry: the Decision service killed (SIGKILL) during every run,
    and restarted on the same address with the same config after `restart_after_s`."""

    model_config = ConfigDict(title="Fault")
    not_a_table: ClassVar[str] = "must be a table, got {got}"

    kind: Annotated[str, Choice(FAULT_KINDS)]
    """What happens: `kill_service` (SIGKILL to the `loadwarden serve` process)."""
    at_s: NotNegative
    """When, s from the start of the run's traffic (the time axis of requests.csv)."""
    restart_after_s: SomePositive = None
    """Start the service again this long after the kill, s (default: it stays down for the rest
    of the run)."""


def _faults(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise problem(f"must be a list of [[evaluate.faults]] tables, got {shown(value)}")
    return value


# Options of each command, read from ``ScenarioSpec.options``: name -> (type, description).
COMMAND_OPTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "simulate": {},
    "evaluate": {
        "max_backends_per_process": (
            _count(1, MAX_SERVERS),
            "Simulated backends served by one `loadwarden backend-sim` process.",
        ),
        "startup_timeout_s": (Positive, "Longest wait for the service and backend processes to become ready, s."),
        "client": (Client, "The SDK client the traffic goes through: breaker, retries and fallback on or off."),
        "faults": (
            Annotated[list[Fault], Checked(_faults)],
            "Control-plane faults in every run, in time order: the service killed and restarted.",
        ),
    },
}


def evaluate_hook() -> Any:
    """``loadwarden.backend_sim._evaluate_options``, or None when it is not installed."""
    try:
        return importlib.import_module("loadwarden.backend_sim._evaluate_options")
    except ModuleNotFoundError as exc:
        if exc.name != "loadwarden.backend_sim._evaluate_options":
            raise
        return None


def hook_options(section: str) -> dict[str, Callable[[Any, str], Any]]:
    """Options the hook adds to ``section`` (evaluate only): name -> check(value, key)."""
    hook = evaluate_hook() if section == "evaluate" else None
    return dict(getattr(hook, "OPTIONS", {})) if hook is not None else {}


@functools.cache
def options_table(section: str) -> type[Table]:
    """The typed options of ``section`` (none given: absent)."""
    fields: dict[str, Any] = {
        name: (annotation, Field(default=None, description=doc))
        for name, (annotation, doc) in COMMAND_OPTIONS[section].items()
    }
    table: type[Table] = create_model(f"{section.title()}Options", __base__=Table, **fields)
    return table


@functools.cache
def section_keys(section: str, hooked: tuple[str, ...]) -> type[Table]:
    """The keys ``[section]`` takes (``hooked``: the hook's options), and its tables' shape.

    Their values are checked when the section is applied over the file, so a key that
    does not apply there is named as such whatever its value.
    """
    fields: dict[str, Any] = dict.fromkeys([*OVERRIDE_KEYS, *TrafficTable.model_fields, *hooked], (Any, None))
    fields.update(dict.fromkeys(COMMAND_OPTIONS[section], (Any, None)))
    for key in MERGED_TABLES:
        fields[key] = (Annotated[dict[str, Any] | None, Checked(_table_or_none)], None)
    table: type[Table] = create_model(f"{section.title()}Keys", __base__=Table, **fields)
    return table


_ANY_KEY: dict[str, Any] = dict.fromkeys(OVERRIDE_KEYS, (Any, None))
OVERRIDES: type[Table] = create_model("Overrides", __base__=Table, **_ANY_KEY)
"""The keys ``load_scenario``'s overrides take (traffic keys moved into ``traffic``)."""


# --- the schema ----------------------------------------------------------------------------


def _fields(
    model: type[Table],
    keys: tuple[str, ...] = (),
    *,
    optional: bool = False,
    docs: Mapping[str, str] | None = None,
    **types: Any,
) -> dict[str, Any]:
    """``model``'s fields (``keys`` of them) for another table: ``types`` and ``docs`` replace
    some types and descriptions; ``optional`` leaves every key out by default (a section's
    key applies over the file's)."""
    fields: dict[str, Any] = {}
    for name in keys or tuple(model.model_fields):
        info = model.model_fields[name]
        annotation = types.get(name) or (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        default = None if optional else (... if info.is_required() else info.get_default(call_default_factory=True))
        description = (docs or {}).get(name, info.description)
        fields[name] = (
            annotation,
            Field(default=default, description=description, json_schema_extra=info.json_schema_extra),
        )
    return fields


def _table_from(title: str, doc: str, fields: dict[str, Any]) -> type[Table]:
    table: type[Table] = create_model(title, __base__=Table, __doc__=doc, **fields)
    return table


_TRAFFIC = _table_from("Traffic", TrafficTable.__doc__ or "", _fields(TrafficTable))
_TRAFFIC_OVERRIDE = _table_from(
    "TrafficOverride", "Traffic keys applied over the file's [traffic].", _fields(TrafficTable, optional=True)
)
_OVERRIDE_DOCS = {
    "traffic": "Applied over the file's [traffic], key by key.",
    "backends": "Replaces the file's [[backends]] list.",
    "params": "Applied over the file's [params], strategy by strategy and key by key.",
    "pool": "Applied over the file's [pool], key by key.",
    "batch": "Applied over the file's [batch], key by key.",
}


def _section(section: str, batch: Any) -> type[Table]:
    fields = {
        **_fields(
            ScenarioFile, OVERRIDE_KEYS, optional=True, docs=_OVERRIDE_DOCS, traffic=_TRAFFIC_OVERRIDE, batch=batch
        ),
        **_fields(TrafficTable, optional=True),
        **{
            name: (annotation, Field(default=None, description=doc))
            for name, (annotation, doc) in COMMAND_OPTIONS[section].items()
        },
        **{
            name: (Any, Field(default=None, description=f"An option `loadwarden {section}` adds (see its --help)."))
            for name in hook_options(section)
        },
    }
    options = " Options of the command too." if COMMAND_OPTIONS[section] else ""
    return _table_from(
        section.title(),
        f"Keys applied over the rest of the file by `loadwarden {section}` only: top-level keys, the tables"
        " traffic, params, pool and batch (merged key by key), and the traffic keys written directly"
        f" (`duration_s = 10` is `traffic.duration_s = 10`).{options}",
        fields,
    )


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a scenario file, for editors and ``loadwarden config-schema scenario``."""
    hook = evaluate_hook()
    batch = getattr(hook, "BATCH_TABLE", None) or _TABLE
    described = _table_from(
        "LoadwardenScenario",
        "",
        _fields(
            ScenarioFile,
            traffic=_TRAFFIC,
            batch=batch,
            simulate=_section("simulate", batch),
            evaluate=_section("evaluate", batch),
        ),
    )
    schema = _toml(described.model_json_schema())
    # Without [variants], every name in `strategies` is a strategy's.
    schema["if"] = {"not": {"required": ["variants"]}}
    schema["then"] = {"properties": {"strategies": {"items": {"enum": _ALL_STRATEGIES}}}}
    schema["description"] = (
        "A scenario file of loadwarden simulate and loadwarden evaluate (TOML): the backends, the traffic"
        " and the strategies to compare on them. Format: scenarios/README.md."
    )
    return {"$schema": SCHEMA_DIALECT, **schema}


def _toml(schema: Any) -> Any:
    """``schema`` as TOML reads it: no null (a None default is a key left out); descriptions on one line."""
    if isinstance(schema, list):
        return [_toml(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _toml(value) for key, value in schema.items()}
    choices = out.get("anyOf")
    if isinstance(choices, list) and {"type": "null"} in choices:
        rest = [choice for choice in choices if choice != {"type": "null"}]
        if len(rest) == 1:
            del out["anyOf"]
            out = {**rest[0], **out}
    if "default" in out and out["default"] is None:
        del out["default"]
    if isinstance(out.get("description"), str):
        out["description"] = " ".join(out["description"].split())
    return out
