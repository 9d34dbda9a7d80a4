"""Scenario files: one TOML file describes a comparison for ``simulate`` and ``evaluate``.

``load_scenario(path)`` reads and validates the whole file before anything
runs; every problem raises ``ScenarioError`` whose message reads
``"<file>: <key>: <problem>"``, the key being the dotted TOML path
(``traffic.rate_per_s``, ``backends[2].speed``, ``params.q_linear.epsilon``).
The format is documented key by key in ``scenarios/README.md``.

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

Extension hook for ``evaluate``: if the module
``loadwarden.backend_sim._evaluate_options`` exists, its ``OPTIONS`` mapping
(option name -> ``check(value, key) -> value`` raising ``ValueError(problem)``)
adds ``[evaluate]`` options, and its ``check_batch(table, key) -> Mapping``
(raising ``ValueError("<key>: <problem>")`` or ``ScenarioError``) validates the
``[batch]`` table; without it ``[batch]`` is passed through as read.
"""

from __future__ import annotations

import importlib
import itertools
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from loadwarden.policy import InvalidArgument, check_name, parse_operation, parse_pool
from loadwarden.policy.batching import MODES
from loadwarden.policy.limits import LIMITS, check_limit
from loadwarden.policy.strategies import STRATEGIES, check_strategy, strategy_class
from loadwarden.server import ConfigError, CoreLimits

from ._config import (
    DECISION_MODES,
    MAX_REQUESTS,
    SERVICE_DISTRIBUTIONS,
    Arrivals,
    ClosedLoop,
    Phase,
    Scenario,
    SimServer,
)
from ._config import capacity_per_s as _capacity_per_s

MODES_BY_NAME = ("route", "slot", "batch")
# Clients deciding locally when the file lists "local" without saying how many.
DEFAULT_CLIENTS = 3
# The most clients (real processes in evaluate) one scenario may ask for.
MAX_CLIENTS = 64
TRAFFIC_KINDS = ("open", "closed")
SECTIONS = ("simulate", "evaluate")
MAX_SERVERS = 100_000
# Pool keys a scenario may not set in [pool]: the strategies list, [params] and [[backends]] set them.
_POOL_RESERVED = {
    "strategy": "strategies",
    "strategy_params": "params",
    "limit_algorithm": "strategies",
    "limit_params": "params",
    "servers": "backends",
}
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOP_KEYS = (
    "name",
    "description",
    "seed",
    "mode",
    "strategies",
    "decisions",
    "clients",
    "route_push_interval_ms",
    "warmup_s",
    "timeout_ms",
    "load_report_interval_ms",
    "params",
    "pool",
    "traffic",
    "backends",
    "batch",
    "simulate",
    "evaluate",
)
_TRAFFIC_KEYS = (
    "kind",
    "load",
    "rate_per_s",
    "load_end",
    "rate_end_per_s",
    "duration_s",
    "requests",
    "max_in_flight",
    "users",
    "think_ms",
)
_BACKEND_KEYS = ("id", "count", "speed", "workers", "base_ms", "service", "failure_rate", "weight", "schedule")
_PHASE_KEYS = ("start_s", "duration_s", "service_ms", "slowdown", "outage")
# Keys an override section may set besides the traffic keys and the command's options.
_OVERRIDE_KEYS = (
    "seed",
    "strategies",
    "decisions",
    "clients",
    "route_push_interval_ms",
    "warmup_s",
    "timeout_ms",
    "load_report_interval_ms",
    "params",
    "pool",
    "traffic",
    "backends",
    "batch",
)
_MERGED_TABLES = ("params", "pool", "traffic", "batch")
DEFAULT_MAX_IN_FLIGHT = 1_000
DEFAULT_LOAD_REPORT_INTERVAL_MS = 1_000.0


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


# --- value checks ---------------------------------------------------------------
# Each returns the checked value or raises ScenarioError(key, ...) without a source;
# parse_scenario adds the source.


def _number(value: Any, key: str, low: float = 0.0, *, strict: bool = True, high: float = math.inf) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and (value > low if strict else value >= low) and value <= high:
        return float(value)
    bound = f"> {low:g}" if strict else f">= {low:g}"
    if high < math.inf:
        bound += f" and <= {high:g}"
    raise ScenarioError(key, f"must be a finite number {bound}, got {value!r}")


def _integer(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    raise ScenarioError(key, f"must be an integer in [{low}, {high}], got {value!r}")


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ScenarioError(key, f"must be a string, got {value!r}")
    return value


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(key, f"must be true or false, got {value!r}")
    return value


def _table(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ScenarioError(key, f"must be a table, got {value!r}")
    return value


def _known(table: Mapping[str, Any], key: str, valid: tuple[str, ...] | list[str]) -> None:
    """Rejects the first key of ``table`` not in ``valid``, listing the valid ones."""
    for name in table:
        if name not in valid:
            where = f"{key}.{name}" if key else name
            raise ScenarioError(where, f"unknown key; valid keys: {', '.join(sorted(valid))}")


def _option_count(value: Any, key: str) -> int:
    return _integer(value, key, 1, MAX_SERVERS)


def _option_positive(value: Any, key: str) -> float:
    return _number(value, key)


# Options of each command, read from ``ScenarioSpec.options``; name -> check(value, key) -> value.
COMMAND_OPTIONS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "simulate": {},
    "evaluate": {
        # Simulated backends served by one ``backend-sim`` process.
        "max_backends_per_process": _option_count,
        # Longest wait for the service and backend processes to become ready, s.
        "startup_timeout_s": _option_positive,
    },
}


def _evaluate_hook() -> Any:
    try:
        return importlib.import_module("loadwarden.backend_sim._evaluate_options")
    except ModuleNotFoundError as exc:
        if exc.name != "loadwarden.backend_sim._evaluate_options":
            raise
        return None


def _options_for(section: str) -> dict[str, Callable[[Any, str], Any]]:
    options = dict(COMMAND_OPTIONS[section])
    if section == "evaluate":
        hook = _evaluate_hook()
        if hook is not None:
            for name, check in getattr(hook, "OPTIONS", {}).items():
                options[name] = _wrap_option(check)
    return options


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

    def rate_at(self, t_s: float) -> float:
        """Open loop: the arrival rate at ``t_s`` seconds from the start, per second."""
        if self.rate_per_s is None:
            raise ValueError("rate_at: closed-loop traffic has no arrival rate")
        if self.rate_end_per_s is None or self.duration_s is None:
            return self.rate_per_s
        fraction = min(1.0, max(0.0, t_s / self.duration_s))
        return self.rate_per_s + (self.rate_end_per_s - self.rate_per_s) * fraction

    def arrivals(self) -> Arrivals | ClosedLoop:
        """The simulator's description of this traffic."""
        if self.kind == "closed":
            assert self.users is not None
            return ClosedLoop(self.users, self.think_ms, self.requests, self.duration_s)
        assert self.rate_per_s is not None
        return Arrivals(self.rate_per_s, self.requests, self.duration_s, self.rate_end_per_s, self.max_in_flight)


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
            default (250).
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

    @property
    def capacity_per_s(self) -> float:
        """Requests per second all backends complete when always busy (no slowdowns)."""
        return _capacity_per_s(self.servers)

    def runs(self) -> list[tuple[str, str]]:
        """(strategy, decision mode) of every run: strategy by strategy, modes in ``decisions`` order."""
        return [(strategy, mode) for strategy in self.strategies for mode in self.decisions]

    def strategy_params(self, strategy: str) -> dict[str, Any]:
        """The parameters of ``strategy`` (a copy; empty when the file gives none)."""
        return dict(self.params.get(strategy, {}))

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
        nested = _nest(overrides)
        try:
            _known(nested, "", _OVERRIDE_KEYS)
        except ScenarioError as exc:
            raise ScenarioError(exc.key, exc.problem, self.source) from None
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
            config["strategy"] = strategy
            config["strategy_params"] = self.strategy_params(strategy)
        elif self.mode == "slot":
            config["limit_algorithm"] = strategy
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
    """``base`` with ``over`` applied: tables in ``_MERGED_TABLES`` merge (``params`` one
    level deeper), other keys replace; a value of None removes the key, or, with
    ``keep_none`` (combining overrides), is kept so it removes the key later."""
    merged = dict(base)
    for key, value in over.items():
        if key in SECTIONS:
            continue
        if value is None and not keep_none:
            merged.pop(key, None)
        elif key in _MERGED_TABLES and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
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
    traffic: dict[str, Any] = dict(overrides.get("traffic") or {})
    for key, value in overrides.items():
        if key == "traffic":
            continue
        if key in _TRAFFIC_KEYS:
            traffic[key] = value
        else:
            nested[key] = value
    if traffic:
        nested["traffic"] = traffic
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
    nested = _nest(_plain(overrides))
    try:
        _known(nested, "", _OVERRIDE_KEYS)
    except ScenarioError as exc:
        raise ScenarioError(exc.key, exc.problem, source) from None
    spec = _parse(_merge(raw, nested), source, None, nested, raw)
    for section in SECTIONS:
        if section in raw:  # a table: _parse checked it
            _parse(_merge(_merge(raw, _section_overrides(raw, section)), nested), source, section, nested, raw)
    return spec


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
        spec = _build(merged, section)
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


def _build(raw: Mapping[str, Any], section: str | None) -> ScenarioSpec:
    _known(raw, "", _TOP_KEYS)
    name = _string(raw.get("name", "scenario"), "name")
    if not _NAME.fullmatch(name):
        raise ScenarioError("name", f"must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    description = _string(raw.get("description", ""), "description")
    seed = _integer(raw.get("seed", 1), "seed", 0, 2**63 - 1)
    mode = raw.get("mode", "route")
    if mode not in MODES_BY_NAME:
        raise ScenarioError("mode", f"must be one of {', '.join(MODES_BY_NAME)}, got {mode!r}")
    warmup_s = _number(raw.get("warmup_s", 0.0), "warmup_s", strict=False)
    timeout_ms = None if raw.get("timeout_ms") is None else _number(raw["timeout_ms"], "timeout_ms")
    interval = _number(
        raw.get("load_report_interval_ms", DEFAULT_LOAD_REPORT_INTERVAL_MS),
        "load_report_interval_ms",
        1.0,
        strict=False,
        high=3_600_000.0,
    )
    servers = _servers(raw)
    traffic = _traffic(raw, servers)
    pool = _plain(_table(raw.get("pool", {}), "pool"))
    params = _params(raw, mode)
    strategies = _strategies(raw, mode, params, pool, len(servers))
    decisions, clients = _decisions(raw, mode, section)
    push_interval = _push_interval(raw.get("route_push_interval_ms"))
    if "batch" in raw and mode != "batch":
        raise ScenarioError("batch", f"is read in mode batch only; this scenario's mode is {mode!r}")
    batch = _batch(raw.get("batch", {}))
    for sec in SECTIONS:
        if sec in raw:
            _check_section(_table(raw[sec], sec), sec)
    options: dict[str, Any] = {}
    if section is not None:
        checks = _options_for(section)
        for key, value in _section_of(raw, section).items():
            if key in checks:
                options[key] = checks[key](value, f"{section}.{key}")
    return ScenarioSpec(
        name=name,
        description=description,
        source="",
        seed=seed,
        mode=mode,
        strategies=strategies,
        params=_freeze(params),
        warmup_s=warmup_s,
        timeout_ms=timeout_ms,
        load_report_interval_ms=interval,
        pool=_freeze(pool),
        traffic=traffic,
        servers=servers,
        decisions=decisions,
        clients=clients,
        route_push_interval_ms=push_interval,
        batch=_freeze(batch),
        options=MappingProxyType(options),
        section=section,
    )


def _check_section(table: Mapping[str, Any], section: str) -> None:
    valid = [*_OVERRIDE_KEYS, *_TRAFFIC_KEYS, *_options_for(section)]
    for key, value in table.items():
        if key not in valid:
            raise ScenarioError(f"{section}.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
        if key in _MERGED_TABLES and value is not None and not isinstance(value, Mapping):
            raise ScenarioError(f"{section}.{key}", f"must be a table, got {value!r}")


def _servers(raw: Mapping[str, Any]) -> tuple[SimServer, ...]:
    backends = raw.get("backends")
    if backends is None:
        raise ScenarioError("backends", "is required: add at least one [[backends]] table")
    if not isinstance(backends, list) or not backends:
        raise ScenarioError("backends", f"must be a non-empty list of [[backends]] tables, got {backends!r}")
    servers: list[SimServer] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(backends):
        key = f"backends[{i}]"
        table = _table(entry, key)
        _known(table, key, _BACKEND_KEYS)
        if "id" not in table:
            raise ScenarioError(f"{key}.id", "is required")
        base_id = _string(table["id"], f"{key}.id")
        count = _integer(table.get("count", 1), f"{key}.count", 1, MAX_SERVERS)
        service = table.get("service", "exponential")
        if service not in SERVICE_DISTRIBUTIONS:
            raise ScenarioError(f"{key}.service", f"must be one of {', '.join(SERVICE_DISTRIBUTIONS)}, got {service!r}")
        values = {
            "speed": _number(table.get("speed", 1.0), f"{key}.speed"),
            "workers": _integer(table.get("workers", 1), f"{key}.workers", 1, 100_000),
            "base_ms": _number(table.get("base_ms", 10.0), f"{key}.base_ms"),
            "service": service,
            "failure_probability": _number(
                table.get("failure_rate", 0.0), f"{key}.failure_rate", 0.0, strict=False, high=1.0
            ),
            "weight": _integer(table.get("weight", 1), f"{key}.weight", 1, 1000),
            "schedule": _schedule(table.get("schedule", []), f"{key}.schedule"),
        }
        ids = [base_id] if count == 1 else [f"{base_id}-{k}" for k in range(count)]
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
                servers.append(SimServer(server_id, **values))
            except ValueError as exc:  # cross-field checks, e.g. overlapping phases
                name, _, problem = str(exc).partition(": ")
                raise ScenarioError(f"{key}.{name.replace('failure_probability', 'failure_rate')}", problem) from None
    return tuple(servers)


def _schedule(value: Any, key: str) -> tuple[Phase, ...]:
    if not isinstance(value, list):
        raise ScenarioError(key, f"must be a list of [[...schedule]] tables, got {value!r}")
    phases = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        table = _table(entry, where)
        _known(table, where, _PHASE_KEYS)
        for required in ("start_s", "duration_s"):
            if required not in table:
                raise ScenarioError(f"{where}.{required}", "is required")
        service_ms = table.get("service_ms")
        phases.append(
            Phase(
                start_s=_number(table["start_s"], f"{where}.start_s", strict=False),
                duration_s=_number(table["duration_s"], f"{where}.duration_s"),
                service_ms=None if service_ms is None else _number(service_ms, f"{where}.service_ms"),
                slowdown=_number(table.get("slowdown", 1.0), f"{where}.slowdown"),
                outage=_boolean(table.get("outage", False), f"{where}.outage"),
            )
        )
    ordered = sorted(range(len(phases)), key=lambda j: phases[j].start_s)
    for before, after in itertools.pairwise(ordered):
        if phases[after].start_s < phases[before].end_s:
            raise ScenarioError(f"{key}[{after}].start_s", f"overlaps {key}[{before}]")
    return tuple(phases)


def _traffic(raw: Mapping[str, Any], servers: tuple[SimServer, ...]) -> Traffic:
    if "traffic" not in raw:
        raise ScenarioError("traffic", "is required: add a [traffic] table")
    table = _table(raw["traffic"], "traffic")
    _known(table, "traffic", _TRAFFIC_KEYS)
    kind = table.get("kind", "open")
    if kind not in TRAFFIC_KINDS:
        raise ScenarioError("traffic.kind", f"must be one of {', '.join(TRAFFIC_KINDS)}, got {kind!r}")
    duration_s = None if table.get("duration_s") is None else _number(table["duration_s"], "traffic.duration_s")
    requests = (
        None if table.get("requests") is None else _integer(table["requests"], "traffic.requests", 1, MAX_REQUESTS)
    )
    if duration_s is None and requests is None:
        raise ScenarioError("traffic.duration_s", "set traffic.duration_s, traffic.requests or both")
    if kind == "closed":
        for key in ("load", "rate_per_s", "load_end", "rate_end_per_s", "max_in_flight"):
            if key in table:
                raise ScenarioError(f"traffic.{key}", 'applies to kind = "open" only; this traffic is closed')
        if "users" not in table:
            raise ScenarioError("traffic.users", 'is required with kind = "closed"')
        return Traffic(
            kind="closed",
            duration_s=duration_s,
            requests=requests,
            users=_integer(table["users"], "traffic.users", 1, 1_000_000),
            think_ms=_number(table.get("think_ms", 0.0), "traffic.think_ms", strict=False),
        )
    for key in ("users", "think_ms"):
        if key in table:
            raise ScenarioError(f"traffic.{key}", 'applies to kind = "closed" only; this traffic is open')
    has_load, has_rate = "load" in table, "rate_per_s" in table
    if has_load == has_rate:
        raise ScenarioError(
            "traffic.load" if has_load else "traffic.rate_per_s",
            "set exactly one of traffic.load (fraction of capacity) and traffic.rate_per_s",
        )
    capacity = _capacity_per_s(servers)
    load = load_end = None
    if has_load:
        load = _number(table["load"], "traffic.load")
        rate = load * capacity
        if "rate_end_per_s" in table:
            raise ScenarioError(
                "traffic.rate_end_per_s", "goes with traffic.rate_per_s; with traffic.load use load_end"
            )
    else:
        rate = _number(table["rate_per_s"], "traffic.rate_per_s")
        if "load_end" in table:
            raise ScenarioError(
                "traffic.load_end", "goes with traffic.load; with traffic.rate_per_s use rate_end_per_s"
            )
    rate_end = None
    if "load_end" in table:
        load_end = _number(table["load_end"], "traffic.load_end")
        rate_end = load_end * capacity
    elif "rate_end_per_s" in table:
        rate_end = _number(table["rate_end_per_s"], "traffic.rate_end_per_s")
    if rate_end is not None and duration_s is None:
        end_key = "traffic.load_end" if "load_end" in table else "traffic.rate_end_per_s"
        raise ScenarioError(end_key, "a ramp spans traffic.duration_s; set it")
    max_in_flight = _integer(
        table.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT), "traffic.max_in_flight", 1, MAX_REQUESTS
    )
    traffic = Traffic(
        kind="open",
        rate_per_s=rate,
        rate_end_per_s=rate_end,
        duration_s=duration_s,
        requests=requests,
        max_in_flight=max_in_flight,
        load=load,
        load_end=load_end,
    )
    try:
        traffic.arrivals()
    except ValueError as exc:
        name, _, problem = str(exc).partition(": ")
        raise ScenarioError(f"traffic.{name}", problem) from None
    return traffic


def _registry(mode: str) -> tuple[Mapping[str, Any], str]:
    if mode == "route":
        return STRATEGIES, "routing strategy"
    if mode == "slot":
        return LIMITS, "limit algorithm"
    return dict.fromkeys(MODES), "batch controller"


def _params(raw: Mapping[str, Any], mode: str) -> dict[str, dict[str, Any]]:
    table = _table(raw.get("params", {}), "params")
    registry, kind = _registry(mode)
    params: dict[str, dict[str, Any]] = {}
    for name, values in table.items():
        if name not in registry:
            raise ScenarioError(
                f"params.{name}", f"unknown {kind} {name!r} (mode {mode}); valid: {', '.join(sorted(registry))}"
            )
        params[name] = dict(_table(values, f"params.{name}"))
    return params


def _strategies(
    raw: Mapping[str, Any],
    mode: str,
    params: Mapping[str, Mapping[str, Any]],
    pool: Mapping[str, Any],
    servers: int,
) -> tuple[str, ...]:
    if "strategies" not in raw:
        raise ScenarioError("strategies", 'is required: the names to compare, e.g. ["round_robin", "p2c"]')
    names = raw["strategies"]
    if not isinstance(names, list) or not names:
        raise ScenarioError("strategies", f"must be a non-empty list of names, got {names!r}")
    registry, kind = _registry(mode)
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in registry:
            raise ScenarioError(
                f"strategies[{i}]", f"unknown {kind} {name!r} for mode {mode!r}; valid: {', '.join(sorted(registry))}"
            )
        if name in names[:i]:
            raise ScenarioError(f"strategies[{i}]", f"{name!r} is listed twice")
    for key, problem_key in _POOL_RESERVED.items():
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
    return tuple(names)


def _decisions(raw: Mapping[str, Any], mode: str, section: str | None) -> tuple[tuple[str, ...], int | None]:
    """``decisions`` and ``clients``: the modes, and the clients when one of them is local.

    Outside a section, ``clients`` with central decisions only is left to the sections
    when one of them lists ``"local"`` (e.g. ``--clients 2`` over ``[evaluate] decisions``).
    """
    names = raw.get("decisions", ["central"])
    if not isinstance(names, list) or not names:
        raise ScenarioError("decisions", f'must be a non-empty list of modes, e.g. ["central", "local"], got {names!r}')
    for i, name in enumerate(names):
        if name not in DECISION_MODES:
            raise ScenarioError(f"decisions[{i}]", f"must be one of {', '.join(DECISION_MODES)}, got {name!r}")
        if name in names[:i]:
            raise ScenarioError(f"decisions[{i}]", f"{name!r} is listed twice")
    local = "local" in names
    if local and mode != "route":
        raise ScenarioError(
            "decisions", f'"local" decides routing, so it applies to mode "route" only; this scenario is mode {mode!r}'
        )
    clients = raw.get("clients")
    if clients is None:
        return tuple(names), DEFAULT_CLIENTS if local else None
    if not local:
        if section is None and any(
            isinstance(modes := _section_of(raw, sec).get("decisions"), list) and "local" in modes for sec in SECTIONS
        ):
            return tuple(names), None
        raise ScenarioError(
            "clients",
            'applies when decisions lists "local" (the central runs then use the same clients); '
            "with central decisions only the traffic comes from one client",
        )
    return tuple(names), _integer(clients, "clients", 1, MAX_CLIENTS)


def _push_interval(value: Any) -> int | None:
    """``route_push_interval_ms``, checked with the service's own limits."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        CoreLimits(route_push_interval_ms=value)
    except ConfigError as exc:
        raise ScenarioError("route_push_interval_ms", str(exc).partition(": ")[2]) from None
    return int(value)


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


def _batch(value: Any) -> dict[str, Any]:
    table = dict(_table(value, "batch"))
    hook = _evaluate_hook()
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
