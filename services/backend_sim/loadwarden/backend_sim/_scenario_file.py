"""Scenario files: one TOML file describes a comparison for ``simulate`` and ``evaluate``.

``load_scenario(path)`` reads and validates the whole file before anything
runs; every problem raises ``ScenarioError`` whose message reads
``"<file>: <key>: <problem>"``, the key being the dotted TOML path
(``traffic.rate_per_s``, ``backends[2].speed``, ``params.q_linear.epsilon``).
The format is documented key by key in ``scenarios/README.md``; its keys, types
and ranges are the pydantic tables of ``_scenario_tables``, which also give the
file's JSON Schema (``scenario_schema()``). This module checks what one value
alone cannot say, and builds the spec.

Decision modes: ``decisions = ["central", "local"]`` runs every strategy once
per mode (central: the service decides, ``SelectServer``; local: the clients
decide from pushed routing tables), and ``clients`` says how many clients there
are (client processes in ``evaluate``, simulated clients in ``simulate``; 3 by
default when ``"local"`` is listed, and only then). Default: central only.
``route_push_interval_ms`` sets how often tables are pushed (the service's
limit of that name; its default when absent).

Override sections: ``[simulate]`` and ``[evaluate]`` hold keys applied over
the rest of the file by ``ScenarioSpec.for_simulate()`` / ``for_evaluate()``,
so one file serves both commands. An override table takes the top-level keys
(``seed``, ``strategies``, ``decisions``, ``clients``, ``route_push_interval_ms``, ``warmup_s``, ``timeout_ms``,
``load_report_interval_ms``, ``backends``, which replaces the list), the
tables ``traffic``, ``params``, ``pool`` and ``batch`` (merged key by key), the
traffic keys written directly (``[evaluate] duration_s = 10`` is
``[evaluate.traffic] duration_s = 10``), and the command's own options
(``COMMAND_OPTIONS``, read from ``ScenarioSpec.options``). Both sections are
validated, applied, when the file is loaded.

Surges: open traffic may repeat surges (``traffic.surge_load`` or ``surge_rate_per_s``,
``surge_every_s``, ``surge_duration_s``, ``surge_start_s``): the spec's ``Traffic.surges``,
their rate resolved against the capacity, which ``Arrivals`` draws by thinning.

Variants (``loadwarden evaluate`` only): ``[variants.<name>]`` names a run of one of the
mode's strategies (``strategy``) with sections of ``loadwarden.toml`` merged over the
run's generated config (``service_config``; never ``pools`` or ``operations``);
``strategies`` may list it, ``ScenarioSpec.strategy_of`` gives the strategy it runs.
The sections are checked here as tables; ``evaluate`` checks the whole config with the
service's parser before it starts anything. ``simulate`` refuses a listed variant.

Traces and provisioning (``loadwarden simulate`` only): ``traffic.kind = "trace"`` plays
the CSV file ``traffic.trace`` (relative to the scenario file; read and checked when the
file is loaded, every bad line named) compressed by ``traffic.time_scale``; the spec's
traffic is then a ``TraceTraffic``. ``[provisioning]`` (``ProvisioningSettings``) needs a
trace, one strategy, central decisions and one ``[[backends]]`` table without ``count``
(the template of every server); its evaluation window sets ``warmup_s``, which the file
may then not set. ``loadwarden evaluate`` refuses both, naming the key.

Extension hook for ``evaluate``: if the module
``loadwarden.backend_sim._evaluate_options`` exists, its ``OPTIONS`` mapping
(option name -> ``check(value, key) -> value`` raising ``ValueError(problem)``)
adds ``[evaluate]`` options, its ``check_batch(table, key) -> Mapping``
(raising ``ValueError("<key>: <problem>")`` or ``ScenarioError``) validates the
``[batch]`` table, and its ``BATCH_TABLE`` describes that table in the schema;
without it ``[batch]`` is passed through as read.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from loadwarden.policy import InvalidArgument, check_name, parse_operation, parse_pool, shown
from loadwarden.policy.batching import MODES
from loadwarden.policy.limits import LIMITS, check_limit
from loadwarden.policy.strategies import STRATEGIES, check_strategy, strategy_class
from loadwarden.server.fields import Table, first_problem

from ._config import (
    DECISION_MODES,
    MAX_REQUESTS,
    Arrivals,
    ClosedLoop,
    Phase,
    Scenario,
    SimServer,
    Surges,
)
from ._config import capacity_per_s as _capacity_per_s
from ._provision_trace import Trace, TraceCurve, TraceError, load_trace
from ._provisioning import ProvisioningSettings
from ._scenario_tables import (
    COMMAND_OPTIONS,
    DEFAULT_CLIENTS,
    EVALUATE_ONLY,
    MAX_SERVERS,
    MERGED_TABLES,
    MODES_BY_NAME,
    NAME_PATTERN,
    OVERRIDES,
    POOL_RESERVED,
    SECTIONS,
    SERVICE_CONFIG_RESERVED,
    SURGE_KEYS,
    TRACE_KEYS,
    TRAFFIC_KINDS,
    ProvisioningTable,
    ScenarioFile,
    TrafficTable,
    VariantTable,
    evaluate_hook,
    hook_options,
    options_table,
    required,
    section_keys,
)


class ScenarioError(ValueError):
    """A scenario file is invalid.

    Attributes:
        key: Dotted path of the offending key, e.g. ``traffic.rate_per_s``.
        problem: What is wrong with it.
        source: The file (or other origin) the scenario came from; may be empty.
    """

    def __init__(self, key: str, problem: str, source: str = "") -> None:
        super().__init__(f"{source}: {key}: {problem}" if source else f"{key}: {problem}")
        self.key = key
        self.problem = problem
        self.source = source


def _validated(table: type[Table], value: Mapping[str, Any], prefix: str = "") -> Any:
    """``value`` checked by ``table``; the first problem raises ScenarioError (key under ``prefix``)."""
    try:
        return table.model_validate(value)
    except ValidationError as exc:
        key, problem = first_problem(exc, table)
        raise ScenarioError(f"{prefix}{key}", required(f"{prefix}{key}", problem)) from None


def _options_for(section: str) -> dict[str, Callable[[Any, str], Any]]:
    """name -> check(value, key) of every option ``section`` takes: its own, then the hook's."""
    options: dict[str, Callable[[Any, str], Any]] = {
        name: _typed_option(section, name) for name in COMMAND_OPTIONS[section]
    }
    for name, check in hook_options(section).items():
        options[name] = _wrap_option(check)
    return options


def _typed_option(section: str, name: str) -> Callable[[Any, str], Any]:
    def check(value: Any, key: str) -> Any:
        try:
            checked: BaseModel = options_table(section).model_validate({name: value})
        except ValidationError as exc:
            inner, problem = first_problem(exc, options_table(section))  # inner: "faults[0].at_s"
            raise ScenarioError(key + inner.removeprefix(name), problem) from None
        return getattr(checked, name)

    return check


def _wrap_option(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def wrapped(value: Any, key: str) -> Any:
        try:
            return check(value, key)
        except ScenarioError:
            raise
        except ValueError as exc:
            raise ScenarioError(key, str(exc)) from None

    return wrapped


# --- the spec -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Traffic:
    """The traffic of a scenario, resolved (``load`` turned into a rate).

    Attributes:
        kind: ``"open"`` (Poisson arrivals) or ``"closed"`` (``users`` users).
        rate_per_s: Open loop: arrivals per second (at the start when ramping);
            None for closed loop.
        rate_end_per_s: Open loop: the rate at ``duration_s`` when it ramps
            linearly from ``rate_per_s``; None when constant.
        duration_s: Seconds during which requests start, or None.
        requests: Requests started, or None; the run stops at whichever of the
            two comes first.
        max_in_flight: Open loop: an arrival finding this many requests in
            flight is dropped (a failure that reached no backend); None for
            closed loop.
        users: Closed loop: concurrent users; None for open loop.
        think_ms: Closed loop: mean think time between a user's answer and its
            next request, ms (exponential; 0 means none).
        load: The ``load`` the file gave (fraction of capacity), or None.
        load_end: The ``load_end`` the file gave, or None.
        surges: Open loop: surges that repeat (``traffic.surge_*``), their rate resolved; None
            without.
    """

    kind: str
    rate_per_s: float | None = None
    rate_end_per_s: float | None = None
    duration_s: float | None = None
    requests: int | None = None
    max_in_flight: int | None = None
    users: int | None = None
    think_ms: float = 0.0
    load: float | None = None
    load_end: float | None = None
    surges: Surges | None = None

    def rate_at(self, t_s: float) -> float:
        """Open loop: the arrival rate at ``t_s`` seconds from the start, per second."""
        if self.rate_per_s is None:
            raise ValueError("rate_at: closed-loop traffic has no arrival rate")
        if self.surges is not None and self.surges.covers(t_s):
            return self.surges.rate_per_s
        if self.rate_end_per_s is None or self.duration_s is None:
            return self.rate_per_s
        fraction = min(1.0, max(0.0, t_s / self.duration_s))
        return self.rate_per_s + (self.rate_end_per_s - self.rate_per_s) * fraction

    def arrivals(self) -> Arrivals | ClosedLoop:
        """The simulator's description of this traffic (a trace: its mean rate over ``duration_s``)."""
        if self.kind == "closed":
            assert self.users is not None
            return ClosedLoop(self.users, self.think_ms, self.requests, self.duration_s)
        assert self.rate_per_s is not None
        return Arrivals(
            self.rate_per_s, self.requests, self.duration_s, self.rate_end_per_s, self.max_in_flight, self.surges
        )


@dataclass(frozen=True, slots=True)
class TraceTraffic(Traffic):
    """Traffic ``kind = "trace"``: Poisson arrivals at a trace's rate, played compressed.

    ``rate_per_s`` is the mean simulated rate over ``duration_s`` (the simulated seconds played:
    the whole trace, or the file's ``duration_s`` when shorter), so ``arrivals()`` expects the
    trace's number of requests; the simulator draws them from ``curve()``.

    Attributes:
        trace: The trace, read and checked.
        trace_path: The file as the scenario wrote it.
        time_scale: Trace seconds per simulated second.
        rate_scale: Simulated arrivals per second per offered request/s of the trace.
        interpolation: ``"linear"`` or ``"step"``.
    """

    trace: Trace | None = None
    trace_path: str = ""
    time_scale: float = 1.0
    rate_scale: float = 1.0
    interpolation: str = "linear"

    def curve(self) -> TraceCurve:
        """The trace as the simulator plays it."""
        assert self.trace is not None
        return TraceCurve(self.trace, self.time_scale, self.rate_scale)

    @property
    def played_s(self) -> float:
        """Trace seconds played."""
        assert self.duration_s is not None
        return self.duration_s * self.time_scale


@dataclass(frozen=True, slots=True)
class Variant:
    """A ``[variants.<name>]`` run: a strategy of the mode with its own service settings.

    Attributes:
        strategy: The strategy it runs (in the mode's registry), with ``[params.<strategy>]``.
        service_config: Sections of ``loadwarden.toml`` merged over the run's generated config
            (never ``pools`` or ``operations``); ``loadwarden evaluate`` checks the result
            with the service's parser before it starts a process.
    """

    strategy: str
    service_config: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-writable: ``{"strategy": ..., "service_config": {...}}``."""
        return {"strategy": self.strategy, "service_config": _plain(self.service_config)}


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """A validated scenario file.

    Attributes:
        name: Scenario name (default: the file's stem); letters, digits, ``._-``.
        description: Free text for the report.
        source: Where it came from (the file path as given), for messages.
        seed: Seeds arrivals, request sizes, failures and routing.
        mode: ``"route"`` (SelectServer + ReportOutcome), ``"slot"``
            (AcquireSlot) or ``"batch"`` (GetBatchSize).
        strategies: Names compared, in order: routing strategies (route),
            limit algorithms (slot) or batch controller modes (batch).
        decisions: Decision modes each strategy runs in, in order
            (``DECISION_MODES``); ``("central",)`` unless the file lists others.
        clients: Clients sending the traffic when ``"local"`` is listed (client
            processes in ``evaluate``, for both modes; simulated clients in
            ``simulate``); None with central decisions only.
        route_push_interval_ms: How often the service pushes routing tables
            (its ``limits.route_push_interval_ms``), ms; None keeps the service's
            default (10).
        params: Parameters per strategy name (only names in the mode's registry).
        warmup_s: Requests arriving earlier are left out of the statistics, s.
        timeout_ms: Client deadline per backend call, ms, or None.
        load_report_interval_ms: How often each backend reports its load, ms.
        pool: Extra pool settings as written in ``[pool]`` (validated with the
            service's own ``parse_pool``); never ``strategy``, ``limit_algorithm``,
            their params or ``servers``.
        traffic: The traffic, resolved.
        servers: The backends, ``count`` expanded (ids ``<id>-0``, ``<id>-1``, ...).
        batch: Mode batch: the ``[batch]`` table (see ``evaluate``).
        options: The command options of the section applied last (e.g.
            ``max_backends_per_process`` after ``for_evaluate()``); empty before.
        section: ``"simulate"`` or ``"evaluate"`` once that section was
            applied, else None.
        raw: The file's mapping as read, to re-apply sections.
        overrides: Overrides given to ``load_scenario`` (e.g. from the command
            line); applied over the file and again over any section.
        provisioning: ``[provisioning]``, or None; with it ``traffic`` is a ``TraceTraffic``
            and ``warmup_s`` the start of the evaluation window in simulated seconds.
        variants: ``[variants.<name>]``, by name: runs ``strategies`` may list beside the
            mode's strategies (``loadwarden evaluate`` only).
    """

    name: str
    description: str
    source: str
    seed: int
    mode: str
    strategies: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    warmup_s: float
    timeout_ms: float | None
    load_report_interval_ms: float
    pool: Mapping[str, Any]
    traffic: Traffic
    servers: tuple[SimServer, ...]
    decisions: tuple[str, ...] = ("central",)
    clients: int | None = None
    route_push_interval_ms: int | None = None
    batch: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    section: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    overrides: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    provisioning: ProvisioningSettings | None = None
    variants: Mapping[str, Variant] = field(default_factory=dict)

    @property
    def evaluation_window(self) -> tuple[float, float]:
        """With provisioning: the trace seconds ``(start, end)`` the report covers."""
        traffic = self.traffic
        assert self.provisioning is not None and isinstance(traffic, TraceTraffic)
        end = traffic.played_s
        return max(0.0, end - self.provisioning.evaluate_last_s), end

    @property
    def capacity_per_s(self) -> float:
        """Requests per second all backends complete when always busy (no slowdowns)."""
        return _capacity_per_s(self.servers)

    def runs(self) -> list[tuple[str, str]]:
        """(strategy, decision mode) of every run: strategy by strategy, modes in ``decisions`` order."""
        return [(strategy, mode) for strategy in self.strategies for mode in self.decisions]

    def strategy_of(self, name: str) -> str:
        """The strategy run ``name`` uses: a variant's, else ``name`` itself."""
        variant = self.variants.get(name)
        return variant.strategy if variant is not None else name

    def strategy_params(self, strategy: str) -> dict[str, Any]:
        """The parameters of ``strategy`` (a copy; empty when the file gives none); a variant's
        are those of the strategy it runs."""
        return dict(self.params.get(self.strategy_of(strategy), {}))

    def for_simulate(self) -> ScenarioSpec:
        """This scenario with ``[simulate]`` applied (then the load-time overrides again)."""
        return self._for("simulate")

    def for_evaluate(self) -> ScenarioSpec:
        """This scenario with ``[evaluate]`` applied (then the load-time overrides again)."""
        return self._for("evaluate")

    def _for(self, section: str) -> ScenarioSpec:
        merged = _merge(self.raw, _section_overrides(self.raw, section))
        return _parse(_merge(merged, self.overrides), self.source, section, self.overrides, self.raw)

    def with_overrides(self, **overrides: Any) -> ScenarioSpec:
        """This scenario with more overrides (same keys as ``load_scenario``'s), re-validated.

        The section applied before (if any) stays applied; the new overrides
        win over it and over earlier overrides.
        """
        nested = _overrides(overrides, self.source)
        combined = _merge(self.overrides, nested, keep_none=True)
        base = _merge(self.raw, _section_overrides(self.raw, self.section)) if self.section else self.raw
        return _parse(_merge(base, combined), self.source, self.section, combined, self.raw)

    def scenario(self, strategy: str | None = None) -> Scenario:
        """The discrete-event simulator's ``Scenario`` (the strategy is chosen per run).

        Args:
            strategy: Accepted for symmetry with ``pool_config``; the DES
                scenario is the same for every strategy.
        """
        del strategy
        return Scenario(
            servers=self.servers,
            arrivals=self.traffic.arrivals(),
            seed=self.seed,
            load_report_interval_ms=self.load_report_interval_ms,
            timeout_ms=self.timeout_ms,
            pool_settings=_plain(self.pool),
        )

    def pool_config(self, strategy: str) -> dict[str, Any]:
        """Pool settings for the service's config (``[pools.X]`` keys) running ``strategy``.

        Mode route sets ``strategy``/``strategy_params``, mode slot
        ``limit_algorithm``/``limit_params``; mode batch the ``[pool]`` table
        only. ``servers`` is left to the caller, who knows the addresses.
        """
        config = _plain(self.pool)
        if self.mode == "route":
            config["strategy"] = self.strategy_of(strategy)
            config["strategy_params"] = self.strategy_params(strategy)
        elif self.mode == "slot":
            config["limit_algorithm"] = self.strategy_of(strategy)
            config["limit_params"] = self.strategy_params(strategy)
        return config


def _plain(value: Any) -> Any:
    """A deep copy with mappings as dicts and tuples as lists (TOML-writable)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], *, keep_none: bool = False) -> dict[str, Any]:
    """``base`` with ``over`` applied: tables in ``MERGED_TABLES`` merge (``params`` one
    level deeper), other keys replace; a value of None removes the key, or, with
    ``keep_none`` (combining overrides), is kept so it removes the key later."""
    merged = dict(base)
    for key, value in over.items():
        if key in SECTIONS:
            continue
        if value is None and not keep_none:
            merged.pop(key, None)
        elif key in MERGED_TABLES and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            inner = dict(merged[key])
            for name, item in value.items():
                if item is None and not keep_none:
                    inner.pop(name, None)
                elif key == "params" and isinstance(item, Mapping) and isinstance(inner.get(name), Mapping):
                    inner[name] = {**inner[name], **item}
                else:
                    inner[name] = item
            merged[key] = inner
        else:
            merged[key] = value
    return merged


def _section_overrides(raw: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The ``[section]`` table as overrides: its options left out, traffic keys nested."""
    table = raw.get(section)
    if not isinstance(table, Mapping):
        return {}
    options = _options_for(section)
    return _nest({k: v for k, v in table.items() if k not in options})


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Moves traffic keys given at the top (``requests=...``) into ``traffic``."""
    nested: dict[str, Any] = {}
    given = overrides.get("traffic")
    traffic: dict[str, Any] = dict(given) if isinstance(given, Mapping) else {}
    for key, value in overrides.items():
        if key == "traffic":
            continue
        if key in TrafficTable.model_fields:
            traffic[key] = value
        else:
            nested[key] = value
    if traffic:
        nested["traffic"] = traffic
    if given is not None and not isinstance(given, Mapping):
        nested["traffic"] = given  # not a table: validation says so
    return nested


# --- loading --------------------------------------------------------------------


def load_scenario(path: str | Path, **overrides: Any) -> ScenarioSpec:
    """Reads, validates and returns the scenario file at ``path``.

    Args:
        path: The TOML file.
        **overrides: Values applied over the file (and over any section later
            applied): top-level keys (``seed=2``, ``strategies=["p2c"]``),
            tables merged key by key (``traffic={"requests": 1000}``), or
            traffic keys directly (``requests=1000``). None removes a key.

    Raises:
        ScenarioError: the file cannot be read, is not TOML, or any key is
            invalid; the message is ``"<path>: <key>: <problem>"``.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError("file", f"cannot read: {exc.strerror or exc}", source) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("file", f"invalid TOML: {exc}", source) from None
    if "name" not in raw:
        raw["name"] = Path(path).stem
    return parse_scenario(raw, source, **overrides)


def parse_scenario(mapping: Mapping[str, Any], source: str, **overrides: Any) -> ScenarioSpec:
    """Validates a scenario mapping shaped like the TOML file; see ``load_scenario``.

    The ``[simulate]`` and ``[evaluate]`` sections are validated too (applied
    over the rest), so a later ``for_simulate()`` / ``for_evaluate()`` cannot fail.

    Raises:
        ScenarioError: naming the offending key, with ``source`` in the message.
    """
    raw = _plain(mapping)
    nested = _overrides(overrides, source)
    spec = _parse(_merge(raw, nested), source, None, nested, raw)
    for section in SECTIONS:
        if section in raw:  # a table: _parse checked it
            _parse(_merge(_merge(raw, _section_overrides(raw, section)), nested), source, section, nested, raw)
    return spec


def _overrides(overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Load-time overrides, traffic keys moved into ``traffic``; an unknown key raises."""
    nested = _nest(_plain(overrides))
    try:
        _validated(OVERRIDES, nested)
    except ScenarioError as exc:
        raise ScenarioError(exc.key, exc.problem, source) from None
    return nested


def _parse(
    merged: Mapping[str, Any],
    source: str,
    section: str | None,
    overrides: Mapping[str, Any],
    raw: Mapping[str, Any],
) -> ScenarioSpec:
    """Builds the spec from ``merged`` (file, section and overrides applied), remembering
    ``raw`` (the file) and ``overrides`` so other sections can be applied later."""
    merged = _plain(merged)
    try:
        spec = _build(merged, section, source)
    except ScenarioError as exc:
        key = exc.key
        if section is not None:
            key = _section_key(_section_of(merged, section), section, key)
        raise ScenarioError(key, exc.problem, source) from None
    return replace(spec, source=source, overrides=_freeze(_plain(overrides)), raw=_freeze(_plain(raw)))


def _section_of(raw: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    table = raw.get(section)
    return table if isinstance(table, Mapping) else {}


def _section_key(table: Mapping[str, Any], section: str, key: str) -> str:
    """``key`` as the override ``table`` of ``section`` wrote it, when it wrote it; else ``key``."""
    head = re.split(r"[.\[]", key, maxsplit=1)[0]
    if head == "traffic" and "." in key:
        sub = key.split(".", 2)[1]
        if sub in table:
            return f"{section}.{sub}"
        return f"{section}.{key}" if sub in _section_of(table, "traffic") else key
    return f"{section}.{key}" if head in table else key


def _build(raw: Mapping[str, Any], section: str | None, source: str = "") -> ScenarioSpec:
    _check_applicable(raw, section)
    file: ScenarioFile = _validated(ScenarioFile, raw)
    servers = _servers(file.backends)
    traffic = _traffic(file.traffic, servers, source)
    params = _params(file.params, file.mode)
    variants = _variants(file.variants, file.mode)
    strategies = _strategies(file.strategies, file.mode, params, file.pool, len(servers), variants)
    if section == "simulate":
        for i, name in enumerate(strategies):
            if name in variants:
                raise ScenarioError(
                    f"strategies[{i}]",
                    f"{name!r} is a variant ([variants.{name}]): it changes the service's config, and "
                    "loadwarden simulate runs the decision core in process; list it in [evaluate] strategies",
                )
    for i, name in enumerate(file.decisions):
        if name in file.decisions[:i]:
            raise ScenarioError(f"decisions[{i}]", f"{name!r} is listed twice")
    local = "local" in file.decisions
    if local and file.mode != "route":
        raise ScenarioError(
            "decisions",
            f'"local" decides routing, so it applies to mode "route" only; this scenario is mode {file.mode!r}',
        )
    clients = (file.clients or DEFAULT_CLIENTS) if local else None
    batch = _batch(file.batch)
    for sec in SECTIONS:
        if sec in raw:
            _validated(section_keys(sec, tuple(hook_options(sec))), raw[sec], f"{sec}.")
    options: dict[str, Any] = {}
    if section is not None:
        checks = _options_for(section)
        for key, value in _section_of(raw, section).items():
            if key in checks:
                options[key] = checks[key](value, f"{section}.{key}")
    _check_faults(options.get("faults", ()), traffic)
    warmup_s = file.warmup_s
    provisioning = None
    if file.provisioning is not None:
        provisioning = _provisioning(file.provisioning, raw, file, traffic, section)
        assert isinstance(traffic, TraceTraffic)
        warmup_s = max(0.0, traffic.played_s - provisioning.evaluate_last_s) / traffic.time_scale
    elif traffic.kind == "trace" and section == "evaluate":
        raise ScenarioError(
            "traffic.kind",
            "a trace plays in loadwarden simulate only (real processes would take its whole length); "
            "run it with loadwarden simulate",
        )
    return ScenarioSpec(
        name=file.name,
        description=file.description,
        source="",
        seed=file.seed,
        mode=file.mode,
        strategies=strategies,
        params=_freeze(params),
        warmup_s=warmup_s,
        timeout_ms=file.timeout_ms,
        load_report_interval_ms=file.load_report_interval_ms,
        pool=_freeze(_plain(file.pool)),
        traffic=traffic,
        servers=servers,
        decisions=tuple(file.decisions),
        clients=clients,
        route_push_interval_ms=file.route_push_interval_ms,
        batch=_freeze(batch),
        options=MappingProxyType(options),
        section=section,
        provisioning=provisioning,
        variants=MappingProxyType(variants),
    )


def _provisioning(
    table: ProvisioningTable, raw: Mapping[str, Any], file: ScenarioFile, traffic: Traffic, section: str | None
) -> ProvisioningSettings:
    """``[provisioning]`` checked against the rest of the file, with the kernel's own checks."""
    if section == "evaluate":
        raise ScenarioError(
            "provisioning",
            "servers that come and go run in loadwarden simulate only; run this scenario with loadwarden simulate",
        )
    if traffic.kind != "trace":
        raise ScenarioError(
            "provisioning",
            f'needs traffic.kind = "trace" (the modes follow a trace of offered load), got {traffic.kind!r}',
        )
    for i, mode in enumerate(table.modes):
        if mode in table.modes[:i]:
            raise ScenarioError(f"provisioning.modes[{i}]", f"{mode!r} is listed twice")
    if len(file.strategies) != 1:
        raise ScenarioError(
            "strategies",
            f"a provisioning scenario routes with one strategy (its runs are the provisioning modes), "
            f"got {len(file.strategies)}",
        )
    if tuple(file.decisions) != ("central",):
        raise ScenarioError("decisions", 'servers come and go with central decisions only: use ["central"]')
    if "warmup_s" in raw:
        raise ScenarioError(
            "warmup_s", "is set by provisioning.evaluate_last_s (the report covers the window); remove it"
        )
    backends = raw.get("backends") or []
    if len(backends) != 1:
        raise ScenarioError(
            "backends",
            f"a provisioning scenario has one [[backends]] table, the template of every server, got {len(backends)}",
        )
    if "count" in backends[0]:
        raise ScenarioError("backends[0].count", "is set by the provisioning modes; remove it")
    if backends[0].get("schedule"):
        raise ScenarioError("backends[0].schedule", "applies to fixed backends only; remove it")
    try:
        settings = ProvisioningSettings(**table.model_dump())
    except ValueError as exc:
        name, _, problem = str(exc).partition(": ")
        raise ScenarioError(f"provisioning.{name}", problem) from None
    try:
        for predictive in (False, True):
            settings.scaling(predictive)
        settings.forecasting()
    except InvalidArgument as exc:
        name = _KERNEL_FIELDS.get(exc.field, exc.field)
        raise ScenarioError(f"provisioning.{name}", exc.problem) from None
    return settings


# Fields of the kernel's ForecastSettings, by the [provisioning] key that sets them.
_KERNEL_FIELDS = {
    "step_s": "forecast_step_s",
    "horizon_s": "forecast_every_s",
    "max_points": "forecast_history_s",
    "seasons_s": "forecast_step_s",
}


def _check_applicable(raw: Mapping[str, Any], section: str | None) -> None:
    """Keys that do not apply to the rest of the file, named as such whatever their values.

    Each check reads keys the tables check too: when one of those is wrong, the
    check leaves it to them.
    """
    traffic = raw.get("traffic")
    if isinstance(traffic, Mapping):
        _check_traffic_keys(traffic)
    decisions = raw.get("decisions", ["central"])
    listed = (
        isinstance(decisions, list)
        and bool(decisions)
        and all(name in DECISION_MODES for name in decisions)
        and len(set(decisions)) == len(decisions)
    )
    # Outside a section, clients with central decisions only is left to the sections when one
    # of them lists "local" (e.g. --clients 2 over [evaluate] decisions).
    left_to_a_section = section is None and any(
        isinstance(modes := _section_of(raw, sec).get("decisions"), list) and "local" in modes for sec in SECTIONS
    )
    if listed and "local" not in decisions and raw.get("clients") is not None and not left_to_a_section:
        raise ScenarioError(
            "clients",
            'applies when decisions lists "local" (the central runs then use the same clients); '
            "with central decisions only the traffic comes from one client",
        )
    for key, written in EVALUATE_ONLY.items():
        if key in raw:
            raise ScenarioError(key, f"is read by loadwarden evaluate only; write it as {written}")
        if key in _section_of(raw, "simulate"):
            raise ScenarioError(
                f"simulate.{key}",
                "loadwarden simulate runs the decision core in process: no service to kill, no SDK client; "
                f"write it as {written}",
            )
    mode = raw.get("mode", "route")
    if "batch" in raw and mode in MODES_BY_NAME and mode != "batch":
        raise ScenarioError("batch", f"is read in mode batch only; this scenario's mode is {mode!r}")


def _check_faults(faults: Sequence[Any], traffic: Traffic) -> None:
    """``[[evaluate.faults]]`` in time order, each after the service is back from the one before,
    and within the traffic's duration (when it has one)."""
    for i, fault in enumerate(faults):
        key = f"evaluate.faults[{i}]"
        if traffic.duration_s is not None and fault.at_s >= traffic.duration_s:
            raise ScenarioError(
                f"{key}.at_s", f"is past the traffic's end ({traffic.duration_s:g} s): the fault would never happen"
            )
        if i == 0:
            continue
        before = faults[i - 1]
        if before.restart_after_s is None:
            raise ScenarioError(
                f"evaluate.faults[{i - 1}].restart_after_s", f"is required: faults[{i}] needs the service back first"
            )
        back = before.at_s + before.restart_after_s
        if fault.at_s < back:
            raise ScenarioError(
                f"{key}.at_s",
                f"must be >= {back:g}: faults are listed in time order, and faults[{i - 1}] has the service "
                f"down until {back:g} s",
            )


def _check_traffic_keys(table: Mapping[str, Any]) -> None:
    kind = table.get("kind", "open")
    if kind not in TRAFFIC_KINDS:
        return
    if kind == "trace":
        for key in ("load", "rate_per_s", "load_end", "rate_end_per_s", "users", "think_ms", *SURGE_KEYS):
            if key in table:
                raise ScenarioError(f"traffic.{key}", 'does not apply to kind = "trace": the trace gives the rate')
        if "requests" in table:
            raise ScenarioError(
                "traffic.requests", 'does not apply to kind = "trace": it plays to its end, or for duration_s'
            )
        return
    for key in TRACE_KEYS:
        if key in table:
            raise ScenarioError(f"traffic.{key}", f'applies to kind = "trace" only; this traffic is {kind}')
    if kind == "closed":
        for key in ("load", "rate_per_s", "load_end", "rate_end_per_s", "max_in_flight", *SURGE_KEYS):
            if key in table:
                raise ScenarioError(f"traffic.{key}", 'applies to kind = "open" only; this traffic is closed')
        return
    for key in ("users", "think_ms"):
        if key in table:
            raise ScenarioError(f"traffic.{key}", 'applies to kind = "closed" only; this traffic is open')
    if "load" in table and "rate_per_s" in table:
        raise ScenarioError(
            "traffic.load", "set exactly one of traffic.load (fraction of capacity) and traffic.rate_per_s"
        )
    if "load" in table and "rate_end_per_s" in table:
        raise ScenarioError("traffic.rate_end_per_s", "goes with traffic.rate_per_s; with traffic.load use load_end")
    if "rate_per_s" in table and "load_end" in table:
        raise ScenarioError("traffic.load_end", "goes with traffic.load; with traffic.rate_per_s use rate_end_per_s")
    if "surge_load" in table and "surge_rate_per_s" in table:
        raise ScenarioError(
            "traffic.surge_load", "set one of traffic.surge_load (fraction of capacity) and traffic.surge_rate_per_s"
        )
    if "load" in table and "surge_rate_per_s" in table:
        raise ScenarioError(
            "traffic.surge_rate_per_s", "goes with traffic.rate_per_s; with traffic.load use surge_load"
        )
    if "rate_per_s" in table and "surge_load" in table:
        raise ScenarioError(
            "traffic.surge_load", "goes with traffic.load; with traffic.rate_per_s use surge_rate_per_s"
        )


def _servers(backends: list[Any]) -> tuple[SimServer, ...]:
    servers: list[SimServer] = []
    seen: dict[str, str] = {}
    for i, backend in enumerate(backends):
        key = f"backends[{i}]"
        schedule = _schedule(backend.schedule, f"{key}.schedule")
        ids = [backend.id] if backend.count == 1 else [f"{backend.id}-{k}" for k in range(backend.count)]
        if len(servers) + len(ids) > MAX_SERVERS:
            raise ScenarioError(f"{key}.count", f"the scenario would have more than {MAX_SERVERS} backends")
        for server_id in ids:
            try:
                check_name(server_id, f"{key}.id")
            except InvalidArgument as exc:
                raise ScenarioError(exc.field, exc.problem) from None
            if server_id in seen:
                raise ScenarioError(f"{key}.id", f"duplicate backend id {server_id!r} (also from {seen[server_id]})")
            seen[server_id] = key
            try:
                server = SimServer(
                    server_id,
                    speed=backend.speed,
                    workers=backend.workers,
                    base_ms=backend.base_ms,
                    service=backend.service,
                    failure_probability=backend.failure_rate,
                    weight=backend.weight,
                    schedule=schedule,
                )
            except ValueError as exc:  # cross-field checks
                name, _, problem = str(exc).partition(": ")
                raise ScenarioError(f"{key}.{name.replace('failure_probability', 'failure_rate')}", problem) from None
            servers.append(server)
    return tuple(servers)


def _schedule(phases: list[Any], key: str) -> tuple[Phase, ...]:
    schedule = tuple(
        Phase(p.start_s, p.duration_s, service_ms=p.service_ms, slowdown=p.slowdown, outage=p.outage) for p in phases
    )
    ordered = sorted(range(len(schedule)), key=lambda j: schedule[j].start_s)
    for before, after in itertools.pairwise(ordered):
        if schedule[after].start_s < schedule[before].end_s:
            raise ScenarioError(f"{key}[{after}].start_s", f"overlaps {key}[{before}]")
    return schedule


def _traffic(table: TrafficTable, servers: tuple[SimServer, ...], source: str = "") -> Traffic:
    if table.kind == "trace":
        return _trace_traffic(table, source)
    if table.duration_s is None and table.requests is None:
        raise ScenarioError("traffic.duration_s", "set traffic.duration_s, traffic.requests or both")
    if table.kind == "closed":
        if table.users is None:
            raise ScenarioError("traffic.users", 'is required with kind = "closed"')
        return Traffic(
            kind="closed",
            duration_s=table.duration_s,
            requests=table.requests,
            users=table.users,
            think_ms=table.think_ms,
        )
    if table.load is None and table.rate_per_s is None:
        raise ScenarioError(
            "traffic.rate_per_s", "set exactly one of traffic.load (fraction of capacity) and traffic.rate_per_s"
        )
    capacity = _capacity_per_s(servers)
    rate = table.load * capacity if table.load is not None else table.rate_per_s
    rate_end = table.load_end * capacity if table.load_end is not None else table.rate_end_per_s
    if rate_end is not None and table.duration_s is None:
        end_key = "traffic.load_end" if table.load_end is not None else "traffic.rate_end_per_s"
        raise ScenarioError(end_key, "a ramp spans traffic.duration_s; set it")
    traffic = Traffic(
        kind="open",
        rate_per_s=rate,
        rate_end_per_s=rate_end,
        duration_s=table.duration_s,
        requests=table.requests,
        max_in_flight=table.max_in_flight,
        load=table.load,
        load_end=table.load_end,
        surges=_surges(table, capacity),
    )
    try:
        traffic.arrivals()
    except ValueError as exc:
        name, _, problem = str(exc).partition(": ")
        raise ScenarioError(f"traffic.{name}", problem) from None
    return traffic


def _surges(table: TrafficTable, capacity: float) -> Surges | None:
    """The surges of open traffic (``traffic.surge_*``), or None when it has none."""
    if all(getattr(table, key) is None for key in SURGE_KEYS):
        return None
    by_load = table.surge_load is not None or (table.surge_rate_per_s is None and table.load is not None)
    rate_key = "traffic.surge_load" if by_load else "traffic.surge_rate_per_s"
    rate = table.surge_load * capacity if table.surge_load is not None else table.surge_rate_per_s
    if rate is None:
        raise ScenarioError(rate_key, "is required with surges: the arrival rate during each surge")
    if table.surge_every_s is None:
        raise ScenarioError(
            "traffic.surge_every_s", "is required with surges: seconds from one surge's start to the next's"
        )
    if table.surge_duration_s is None:
        raise ScenarioError("traffic.surge_duration_s", "is required with surges: how long each surge lasts, s")
    if table.surge_duration_s >= table.surge_every_s:
        raise ScenarioError(
            "traffic.surge_duration_s",
            f"must be less than traffic.surge_every_s ({table.surge_every_s:g}): surges with no time between "
            f"them are a constant rate, got {table.surge_duration_s:g}",
        )
    try:
        return Surges(rate, table.surge_every_s, table.surge_duration_s, table.surge_start_s or 0.0)
    except ValueError as exc:
        name, _, problem = str(exc).partition(": ")
        raise ScenarioError(rate_key if name == "rate_per_s" else f"traffic.surge_{name}", problem) from None


def _trace_traffic(table: TrafficTable, source: str) -> TraceTraffic:
    if table.trace is None:
        raise ScenarioError("traffic.trace", 'is required with kind = "trace": the CSV file of offered rates')
    if table.time_scale is None:
        raise ScenarioError(
            "traffic.time_scale", 'is required with kind = "trace": trace seconds per simulated second, e.g. 360'
        )
    path = Path(table.trace)
    if not path.is_absolute():
        path = (Path(source).parent if source else Path()) / path
    try:
        trace = load_trace(path, table.interpolation)
    except TraceError as exc:
        raise ScenarioError("traffic.trace", f"{path}: {exc}") from None
    rate_scale = table.rate_scale if table.rate_scale is not None else 1.0
    curve = TraceCurve(trace, table.time_scale, rate_scale)
    duration = curve.duration_s
    if table.duration_s is not None:
        if table.duration_s > duration * (1 + 1e-9):
            raise ScenarioError(
                "traffic.duration_s",
                f"must be at most the trace's {duration:g} simulated s ({trace.length_s:g} trace s at time_scale "
                f"{table.time_scale:g}), got {table.duration_s:g}",
            )
        duration = min(duration, table.duration_s)
    expected = curve.expected(duration)
    if expected > MAX_REQUESTS:
        raise ScenarioError(
            "traffic.rate_scale",
            f"the trace would start {expected:,.0f} requests, more than {MAX_REQUESTS:,}; lower rate_scale or "
            "raise time_scale",
        )
    if expected <= 0:
        raise ScenarioError("traffic.duration_s", "no request would arrive: the trace's rate is 0 until then")
    return TraceTraffic(
        kind="trace",
        rate_per_s=expected / duration,
        duration_s=duration,
        max_in_flight=table.max_in_flight,
        trace=trace,
        trace_path=table.trace,
        time_scale=table.time_scale,
        rate_scale=rate_scale,
        interpolation=table.interpolation,
    )


# Every strategy name of every mode: a variant may not take one.
_ALL_NAMES = frozenset({*STRATEGIES, *LIMITS, *MODES})


def _registry(mode: str) -> tuple[Mapping[str, Any], str]:
    if mode == "route":
        return STRATEGIES, "routing strategy"
    if mode == "slot":
        return LIMITS, "limit algorithm"
    return dict.fromkeys(MODES), "batch controller"


def _params(table: Mapping[str, Any], mode: str) -> dict[str, dict[str, Any]]:
    registry, kind = _registry(mode)
    params: dict[str, dict[str, Any]] = {}
    for name, values in table.items():
        if name not in registry:
            raise ScenarioError(
                f"params.{name}", f"unknown {kind} {name!r} (mode {mode}); valid: {', '.join(sorted(registry))}"
            )
        if not isinstance(values, Mapping):
            raise ScenarioError(f"params.{name}", f"must be a table, got {shown(values)}")
        params[name] = dict(values)
    return params


def _strategies(
    listed: list[Any],
    mode: str,
    params: Mapping[str, Mapping[str, Any]],
    pool: Mapping[str, Any],
    servers: int,
    variants: Mapping[str, Variant],
) -> tuple[str, ...]:
    registry, kind = _registry(mode)
    for i, name in enumerate(listed):
        if not isinstance(name, str) or (name not in registry and name not in variants):
            more = f"; variants: {', '.join(sorted(variants))}" if variants else ""
            raise ScenarioError(
                f"strategies[{i}]",
                f"unknown {kind} {shown(name)} for mode {mode!r}; valid: {', '.join(sorted(registry))}{more}",
            )
        if name in listed[:i]:
            raise ScenarioError(f"strategies[{i}]", f"{name!r} is listed twice")
    # A variant is checked as the strategy it runs, named where the file lists the variant.
    names = [variants[name].strategy if name in variants else name for name in listed]
    for key, problem_key in POOL_RESERVED.items():
        if key in pool:
            raise ScenarioError(f"pool.{key}", f"is set by the scenario's {problem_key}; remove it from [pool]")
    try:
        parse_pool("scenario", "name", pool, "pool", MAX_SERVERS)
    except InvalidArgument as exc:
        raise ScenarioError(exc.field, exc.problem) from None
    max_concurrency = pool.get("max_concurrency", 0)
    # Every listed name, and every name with params, is checked with the service's own parsers.
    for name in dict.fromkeys([*names, *params]):
        values = params.get(name, {})
        key = f"strategies[{names.index(name)}]" if name in names else f"params.{name}"
        try:
            if mode == "route":
                check_strategy(name, values, "scenario")
            elif mode == "slot":
                check_limit(name, values, max_concurrency, "scenario")
            else:
                parse_operation("scenario", "name", {**values, "mode": name}, "scenario")
        except InvalidArgument as exc:
            field_name = exc.field.removeprefix("scenario.")
            for prefix in ("strategy_params.", "limit_params."):
                if field_name.startswith(prefix):
                    field_name = f"params.{name}.{field_name.removeprefix(prefix)}"
            if field_name == "max_concurrency":
                field_name = "pool.max_concurrency"
            elif field_name in ("strategy", "limit_algorithm", "mode"):
                field_name = key
            elif not field_name.startswith(("params.", "pool.")):
                field_name = f"params.{name}.{field_name}"
            raise ScenarioError(field_name, exc.problem) from None
        if mode == "route":
            cls = strategy_class(name, "scenario")
            limit = cls.max_servers
            if limit is not None and servers > limit and name in names:
                hint = getattr(cls, "too_large_hint", "") or f"strategy {name!r} serves at most {limit} servers"
                raise ScenarioError(key, f"{servers} backends: {hint}")
    return tuple(listed)


def _variants(tables: Mapping[str, VariantTable], mode: str) -> dict[str, Variant]:
    """``[variants.<name>]``: names of their own, a strategy of the mode, a service_config of sections."""
    registry, kind = _registry(mode)
    variants: dict[str, Variant] = {}
    for name, table in tables.items():
        where = f"variants.{name}"
        if not re.fullmatch(NAME_PATTERN, name):
            raise ScenarioError(where, "a variant's name must be 1-64 letters, digits, '.', '_' or '-'")
        if name in _ALL_NAMES:
            raise ScenarioError(where, f"{name!r} names a strategy; give the variant a name of its own")
        if table.strategy not in registry:
            raise ScenarioError(
                f"{where}.strategy",
                f"unknown {kind} {shown(table.strategy)} for mode {mode!r}; valid: {', '.join(sorted(registry))}",
            )
        for key, section in table.service_config.items():
            if key in SERVICE_CONFIG_RESERVED:
                raise ScenarioError(
                    f"{where}.service_config.{key}",
                    f"is written by the run from {SERVICE_CONFIG_RESERVED[key]}; set it there",
                )
            if not isinstance(section, Mapping):
                raise ScenarioError(
                    f"{where}.service_config.{key}",
                    f"must be a table (a section of loadwarden.toml), got {shown(section)}",
                )
        variants[name] = Variant(table.strategy, _freeze(_plain(table.service_config)))
    return variants


def decision_overrides(decisions: str | None, clients: int | None) -> dict[str, Any]:
    """The command-line options ``--decisions a,b`` and ``--clients N`` as overrides of
    ``load_scenario`` (checked with the rest of the file).

    ``--decisions`` without ``local`` drops the file's ``clients``, which only local decisions use.
    """
    overrides: dict[str, Any] = {}
    if decisions is not None:
        modes = [m.strip() for m in decisions.split(",") if m.strip()]
        overrides["decisions"] = modes or decisions  # not a list: refused naming the key
        if "local" not in modes and clients is None:
            overrides["clients"] = None
    if clients is not None:
        overrides["clients"] = clients
    return overrides


def _batch(table: dict[str, Any]) -> dict[str, Any]:
    hook = evaluate_hook()
    check = getattr(hook, "check_batch", None) if hook is not None else None
    if check is None:
        return _plain(table)
    try:
        return _plain(check(table, "batch"))
    except ScenarioError:
        raise
    except ValueError as exc:
        name, sep, problem = str(exc).partition(": ")
        raise ScenarioError(name if sep else "batch", problem if sep else str(exc)) from None
