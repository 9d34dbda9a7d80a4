"""Batch operations: settings, the sizing gate (cooldown, minimum step, bounds) and events.

The controller proposes a size; the operation decides whether to move to it:
never more often than ``cooldown_ms``, never by less than ``min_step``, always
within [min, max]. When a load-driven controller has no load, the answer is the
default size, marked as a fallback, and the current size is kept for later.

An operation told a ``LoadOutlook`` (``look_ahead``: the capacity planner's forecast of
its load score) sizes from the forecast peak ahead when that is above the measured load
and makes the batch smaller: the same gate applies, and the reason says "forecast".
A forecast never makes a batch bigger than the measured load would. How far ahead it
looks is the outlook's lead, or the duration of the operation's recent batches (an
exponential average of the durations ``observe`` is told).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidArgument
from ._load import LoadReading
from ._validation import check_count, check_name, check_range, shown
from .batching import MODES, BatchController, LoadOutlook, build_controller

log = logging.getLogger("loadwarden.policy")

MAX_BATCH_SIZE = 1_000_000
RECENT_ADJUSTMENTS = 20
DURATION_WEIGHT = 0.2  # of each reported batch in the average of recent batch durations
OPERATION_SOURCES = ("host", "pool")


@dataclass(frozen=True, slots=True)
class OperationSettings:
    """A batch operation's sizing settings (validated by ``parse_operation``).

    Attributes:
        name: Operation name.
        min_batch_size / max_batch_size: Bounds of every answer, 1-1,000,000.
        default_batch_size: First answer, and the answer whenever the load is unknown.
        low_threshold_percent / high_threshold_percent: Threshold mode's load bounds, 0-100, low < high.
        cooldown_ms: Shortest time between two size changes.
        min_step: Changes smaller than this are suppressed.
        mode: ``threshold`` or ``latency_target``.
        target_latency_ms / additive_step / backoff_ratio: Latency-target mode's AIMD.
        load_source: ``host`` (the service's own load) or ``pool`` (``pool``'s reported load).
        pool: The pool, with ``load_source = "pool"``.
    """

    name: str
    min_batch_size: int = 1
    max_batch_size: int = 100
    default_batch_size: int = 1
    low_threshold_percent: float = 50.0
    high_threshold_percent: float = 80.0
    cooldown_ms: int = 0
    min_step: int = 0
    mode: str = "threshold"
    target_latency_ms: float = 0.0
    additive_step: int = 1
    backoff_ratio: float = 0.9
    load_source: str = "host"
    pool: str = ""


def _enum(value: Any, key: str, prefix: str, valid: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(key, f"must be one of {', '.join(valid)}, got {shown(value)}")
    name = value.lower().removeprefix(prefix)
    if name == "unspecified":
        return valid[0]
    if name not in valid:
        raise InvalidArgument(key, f"must be one of {', '.join(valid)}, got {shown(value)}")
    return name


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(key, f"must be a number, got {shown(value)}")
    return check_range(float(value), key, low, high)


def _integer(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_count(value, key, low, high)


def parse_operation(name: str, name_field: str, values: Mapping[str, Any], where: str) -> OperationSettings:
    """Validates an operation's settings; zero or missing values mean the defaults.

    Raises:
        InvalidArgument: naming ``<where>.<key>``.
    """
    check_name(name, name_field)
    known = set(OperationSettings.__dataclass_fields__) - {"name"}
    for key in values:
        if key not in known:
            raise InvalidArgument(f"{where}.{key}", f"unknown key; valid keys: {', '.join(sorted(known))}")
    kw: dict[str, Any] = {"name": name}
    ints = {
        "min_batch_size": (1, MAX_BATCH_SIZE),
        "max_batch_size": (1, MAX_BATCH_SIZE),
        "default_batch_size": (1, MAX_BATCH_SIZE),
        "cooldown_ms": (0, 86_400_000),
        "min_step": (0, MAX_BATCH_SIZE),
        "additive_step": (1, MAX_BATCH_SIZE),
    }
    for key, (low, high) in ints.items():
        if values.get(key):
            kw[key] = _integer(values[key], f"{where}.{key}", low, high)
    floats = {
        "low_threshold_percent": (0.0, 100.0),
        "high_threshold_percent": (0.0, 100.0),
        "target_latency_ms": (0.0, 86_400_000.0),
        "backoff_ratio": (0.0, 1.0),
    }
    for key, (flow, fhigh) in floats.items():
        if values.get(key):
            kw[key] = _number(values[key], f"{where}.{key}", flow, fhigh)
    if values.get("mode"):
        kw["mode"] = _enum(values["mode"], f"{where}.mode", "batch_mode_", MODES)
    if values.get("load_source"):
        kw["load_source"] = _enum(values["load_source"], f"{where}.load_source", "load_source_", OPERATION_SOURCES)
    if values.get("pool"):
        pool = values["pool"]
        if not isinstance(pool, str):
            raise InvalidArgument(f"{where}.pool", f"must be a pool name, got {shown(pool)}")
        kw["pool"] = check_name(pool, f"{where}.pool")
    if "default_batch_size" not in kw:
        kw["default_batch_size"] = kw.get("min_batch_size", 1)
    s = OperationSettings(**kw)
    if s.min_batch_size > s.max_batch_size:
        raise InvalidArgument(
            f"{where}.min_batch_size", f"must be <= max_batch_size ({s.max_batch_size}), got {s.min_batch_size}"
        )
    if not s.min_batch_size <= s.default_batch_size <= s.max_batch_size:
        raise InvalidArgument(
            f"{where}.default_batch_size",
            f"must be in [min_batch_size, max_batch_size] = [{s.min_batch_size}, {s.max_batch_size}], "
            f"got {s.default_batch_size}",
        )
    if not s.low_threshold_percent < s.high_threshold_percent:
        raise InvalidArgument(
            f"{where}.high_threshold_percent",
            f"must be above low_threshold_percent ({s.low_threshold_percent:g}), got {s.high_threshold_percent:g}",
        )
    if s.mode == "latency_target" and s.target_latency_ms <= 0:
        raise InvalidArgument(f"{where}.target_latency_ms", "must be > 0 in latency_target mode")
    if not 0.0 < s.backoff_ratio < 1.0:
        raise InvalidArgument(f"{where}.backoff_ratio", f"must be in (0, 1), got {s.backoff_ratio:g}")
    if s.load_source == "pool" and not s.pool:
        raise InvalidArgument(f"{where}.pool", "is required with load_source = pool")
    return s


# Where each controller's Params fields come from in an operation's settings.
CONTROLLER_FIELDS: dict[str, dict[str, str]] = {
    "threshold": {
        "min_size": "min_batch_size",
        "max_size": "max_batch_size",
        "low_percent": "low_threshold_percent",
        "high_percent": "high_threshold_percent",
    },
    "latency_target": {
        "min_size": "min_batch_size",
        "max_size": "max_batch_size",
        "target_ms": "target_latency_ms",
        "step": "additive_step",
        "backoff_ratio": "backoff_ratio",
    },
}


def make_controller(s: OperationSettings, start: int) -> BatchController:
    """The operation's controller (registered as its ``mode``), starting from the size ``start``."""
    params = {param: getattr(s, key) for param, key in CONTROLLER_FIELDS[s.mode].items()}
    return build_controller(s.mode, params, start, f"operations.{s.name}")


@dataclass(frozen=True, slots=True)
class Adjustment:
    """One size change. ``at_wall`` is Unix seconds; ``load_score`` the score that drove it
    (the forecast peak when ``forecast``: the change was made ahead of a forecast load)."""

    at_wall: float
    previous_size: int
    new_size: int
    reason: str
    load_score: float
    forecast: bool = False


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    size: int
    load_score: float | None
    level: str  # "low", "medium", "high" or "unknown"
    reason: str
    fallback: bool


class Operation:
    """An operation's current size, its controller and its adjustment history."""

    def __init__(self, settings: OperationSettings) -> None:
        self.settings = settings
        self.size = settings.default_batch_size
        self.controller = make_controller(settings, self.size)
        self.last_change: float | None = None  # monotonic
        self.events: deque[Adjustment] = deque(maxlen=RECENT_ADJUSTMENTS)
        self.adjustments_total = 0
        self.decisions_total = 0
        self.last_load: float = 0.0
        self.last_reason = "not asked yet"
        self.fallback = False
        self.outlook: LoadOutlook | None = None
        self.forecast_adjustments_total = 0  # of adjustments_total, those made ahead of a forecast
        self.batch_duration_s: float | None = None  # recent batches' duration (average), None before one

    def reconfigure(self, settings: OperationSettings) -> None:
        """New settings; the current size is kept, clamped into the new bounds."""
        self.settings = settings
        self.size = min(settings.max_batch_size, max(settings.min_batch_size, self.size))
        self.controller = make_controller(settings, self.size)

    def level(self, load: float | None) -> str:
        if load is None:
            return "unknown"
        s = self.settings
        return "low" if load <= s.low_threshold_percent else "high" if load >= s.high_threshold_percent else "medium"

    def decide(self, now: float, wall: float, reading: LoadReading) -> BatchAnswer:
        """The size to use next, moving the current size if the gate allows."""
        self.decisions_total += 1
        s = self.settings
        if self.controller.needs_load and reading.score is None:
            self.fallback = True
            self.last_reason = f"load unknown ({reading.problem}): default size {s.default_batch_size}"
            return BatchAnswer(s.default_batch_size, None, "unknown", self.last_reason, True)
        load = reading.score
        self.fallback = False
        if load is not None:
            self.last_load = load
        target, why = self.controller.target(load)
        target = min(s.max_batch_size, max(s.min_batch_size, target))
        driver = load
        ahead = self._ahead(now, load, target) if load is not None and self.controller.needs_load else None
        if ahead is not None:
            target, why, driver = ahead
        reason = why
        if target != self.size:
            since = None if self.last_change is None else now - self.last_change
            if since is not None and since * 1000.0 < s.cooldown_ms:
                reason = f"{why}; cooldown: holding {self.size} for {s.cooldown_ms - since * 1000.0:.0f} ms more"
            elif abs(target - self.size) < s.min_step:
                reason = f"{why}; change to {target} is smaller than min_step {s.min_step}: holding {self.size}"
            else:
                self._adjust(now, wall, target, why, driver, forecast=ahead is not None)
        self.last_reason = reason
        return BatchAnswer(self.size, load, self.level(load), reason, False)

    def look_ahead(self, outlook: LoadOutlook | None) -> None:
        """Sizes ahead of ``outlook`` from now on; None sizes from the measured load alone."""
        self.outlook = outlook

    def _ahead(self, now: float, load: float, measured: int) -> tuple[int, str, float] | None:
        """The size, reason and score of the forecast peak ahead, when it makes the batch
        smaller than ``measured`` (the size for the measured ``load``); None otherwise."""
        outlook = self.outlook
        if outlook is None:
            return None
        if outlook.expired(now):
            self.outlook = None
            return None
        peak = outlook.rise(now, load, outlook.lead_s or self.batch_duration_s or outlook.step_s)
        if peak is None:  # every point it finds is forecast above the measured load
            return None
        score, at = peak
        size, why = self.controller.target(score, f"forecast load {score:.1f} in {_seconds(at - now)}")
        size = min(self.settings.max_batch_size, max(self.settings.min_batch_size, size))
        if size >= measured:
            return None
        return size, f"{why} (measured load {load:.1f})", score

    def _adjust(
        self, now: float, wall: float, size: int, reason: str, load: float | None, *, forecast: bool = False
    ) -> None:
        event = Adjustment(wall, self.size, size, reason, load if load is not None else 0.0, forecast)
        self.events.append(event)
        self.adjustments_total += 1
        self.forecast_adjustments_total += forecast
        log.info("batch size of %s: %d -> %d (%s)", self.settings.name, self.size, size, reason)
        self.size, self.last_change = size, now

    def observe(self, batch_size: int, duration_ms: float, success: bool) -> None:
        if duration_ms >= 0 and duration_ms < math.inf:
            seconds = duration_ms / 1000.0
            recent = self.batch_duration_s
            self.batch_duration_s = seconds if recent is None else recent + DURATION_WEIGHT * (seconds - recent)
        self.controller.observe(batch_size, duration_ms, success)


def _seconds(span: float) -> str:
    """A time ahead as a reason shows it: whole seconds from 10 s, tenths below."""
    return f"{span:.0f} s" if span >= 10 else f"{span:.1f} s"
