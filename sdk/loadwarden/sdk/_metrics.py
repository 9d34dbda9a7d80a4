"""SDK metrics through the OpenTelemetry API: breakers, routing tables, resource pools.

Only the API is used here; an application that configures a MeterProvider (for
instance with ``loadwarden.observability``) gets the numbers, one that does not
pays for a no-op.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Protocol

from opentelemetry import metrics

from loadwarden.sdk._breaker import BreakerEvent, BreakerRegistry, BreakerState
from loadwarden.sdk._local import RouteTables

log = logging.getLogger("loadwarden.sdk")

_meter = metrics.get_meter("loadwarden.sdk")
_transitions = _meter.create_counter(
    "loadwarden.sdk.breaker.transitions",
    unit="{transition}",
    description="Circuit breaker state changes, by breaker and new state",
)
_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# Every live client's breakers, read by one gauge (an instrument name may be registered once).
_registries: weakref.WeakSet[BreakerRegistry] = weakref.WeakSet()
_gauge_lock = threading.Lock()
_gauge_created = False


def _log_and_count(event: BreakerEvent) -> None:
    level = logging.WARNING if event.current is BreakerState.OPEN else logging.INFO
    log.log(
        level, "circuit breaker %s: %s -> %s (%s)", event.name, event.previous.name, event.current.name, event.reason
    )
    _transitions.add(1, {"breaker": event.name, "state": event.current.name})


def observe_breakers(registry: BreakerRegistry) -> None:
    """Logs and counts every transition of ``registry``'s breakers and exposes their
    states as the gauge ``loadwarden.sdk.breaker.state`` (0 closed, 1 half-open, 2 open)."""
    global _gauge_created
    registry.add_listener(_log_and_count)
    with _gauge_lock:
        _registries.add(registry)
        if not _gauge_created:
            _gauge_created = True
            _meter.create_observable_gauge(
                "loadwarden.sdk.breaker.state",
                callbacks=[_states],
                unit="1",
                description="Circuit breaker state: 0 closed, 1 half-open, 2 open",
            )


def _states(_options: object) -> Iterable[metrics.Observation]:
    return [
        metrics.Observation(_STATE_VALUE[state], {"breaker": name})
        for registry in list(_registries)
        for name, state in registry.snapshot().items()
    ]


# Every live client's routing tables (decisions="local"), read by observable instruments.
_tables: weakref.WeakSet[RouteTables] = weakref.WeakSet()
_tables_observed = False


def observe_route_tables(tables: RouteTables) -> None:
    """Exposes ``tables``' counters: ``loadwarden.sdk.local.decisions`` (attribute ``stale``),
    ``loadwarden.sdk.local.rejected_tables`` and the gauge ``loadwarden.sdk.local.stale``
    (1 while the tables are stale). Read when collected: nothing is paid per decision."""
    global _tables_observed
    with _gauge_lock:
        _tables.add(tables)
        if _tables_observed:
            return
        _tables_observed = True
        _meter.create_observable_counter(
            "loadwarden.sdk.local.decisions",
            callbacks=[_local_decisions],
            unit="{decision}",
            description="Decisions made from pushed routing tables, by whether the table was stale",
        )
        _meter.create_observable_counter(
            "loadwarden.sdk.local.rejected_tables",
            callbacks=[lambda _options: [metrics.Observation(sum(t.rejected for t in list(_tables)))]],
            unit="{table}",
            description="Routing tables refused as malformed (the last good table was kept)",
        )
        _meter.create_observable_gauge(
            "loadwarden.sdk.local.stale",
            callbacks=[lambda _options: [metrics.Observation(int(any(t.stale() for t in list(_tables))))]],
            unit="1",
            description="1 while a client's routing tables are stale (their stream broke too long ago)",
        )


def _local_decisions(_options: object) -> Iterable[metrics.Observation]:
    tables = list(_tables)
    stale = sum(t.stale_decisions for t in tables)
    fresh = sum(t.decisions for t in tables) - stale
    return [metrics.Observation(fresh, {"stale": False}), metrics.Observation(stale, {"stale": True})]


class ResidentCount(Protocol):
    """What the resident gauge reads of a resource pool: its name and its loaded resources' count."""

    @property
    def name(self) -> str: ...

    @property
    def resident_count(self) -> int: ...


class ResourcePoolMetrics:
    """The resource pools' instruments, each by pool name (attribute ``pool``): counters
    ``loadwarden.sdk.resource_pool.loads``, ``.load_failures``, ``.evictions`` and
    ``.unload_failures``, added as they happen (rarely: a load is a model's), and the gauge
    ``loadwarden.sdk.resource_pool.resident``, read from the live pools when collected."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.loads = meter.create_counter(
            "loadwarden.sdk.resource_pool.loads", unit="{load}", description="Resources loaded, by resource pool"
        )
        self.load_failures = meter.create_counter(
            "loadwarden.sdk.resource_pool.load_failures",
            unit="{load}",
            description="Loads whose loader raised, by resource pool",
        )
        self.evictions = meter.create_counter(
            "loadwarden.sdk.resource_pool.evictions",
            unit="{resource}",
            description="Least recently used resources unloaded to make room, by resource pool",
        )
        self.unload_failures = meter.create_counter(
            "loadwarden.sdk.resource_pool.unload_failures",
            unit="{resource}",
            description="Unloads whose unloader raised (the place was freed anyway), by resource pool",
        )
        self._pools: weakref.WeakSet[ResidentCount] = weakref.WeakSet()
        self._lock = threading.Lock()
        meter.create_observable_gauge(
            "loadwarden.sdk.resource_pool.resident",
            callbacks=[self._resident],
            unit="{resource}",
            description="Resources loaded right now, by resource pool",
        )

    def track(self, pool: ResidentCount) -> None:
        """Adds ``pool`` to the gauge while it lives."""
        with self._lock:
            self._pools.add(pool)

    def _resident(self, _options: object) -> Iterable[metrics.Observation]:
        with self._lock:
            pools = list(self._pools)
        by_name: dict[str, int] = {}
        for pool in pools:
            by_name[pool.name] = by_name.get(pool.name, 0) + pool.resident_count
        return [metrics.Observation(count, {"pool": name}) for name, count in by_name.items()]


_resource_pools: ResourcePoolMetrics | None = None


def resource_pool_metrics() -> ResourcePoolMetrics:
    """The instruments every resource pool shares (made on first use: an instrument name is registered once)."""
    global _resource_pools
    with _gauge_lock:
        if _resource_pools is None:
            _resource_pools = ResourcePoolMetrics(_meter)
        return _resource_pools
