"""A pool: its settings, its servers and its strategy, and which of its servers may be
chosen now (stale, drained, ejected, slow start, panic) and when one is ejected."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection
from typing import Generic, TypeVar

from ._model import Backend, Health, LoadSample, ServerSpec
from ._probes import Answer, Probed, ProbeRecord, ProbeRules
from ._settings import PoolSettings
from .strategies import Strategy

log = logging.getLogger("loadwarden.policy")

# Slow start never sends less than this share of a server's weight.
SLOW_START_MIN_FRACTION = 0.1


def _share(probed: Probed, degraded_share: float) -> float:
    return degraded_share if probed is Probed.DEGRADED else 1.0


def _ramped(server: Backend, now: float, window_s: float) -> float:
    """``weight`` scaled linearly from 10 % to 100 % over ``window_s`` after the ramp started,
    and by ``degraded_share`` while health checks find the server degraded."""
    weight = server.weight * _share(server.probed, server.degraded_share)
    if window_s <= 0 or server.ramp_start is None:
        return weight
    fraction = (now - server.ramp_start) / window_s
    return weight * (1.0 if fraction >= 1.0 else max(SLOW_START_MIN_FRACTION, fraction))


SlotsT = TypeVar("SlotsT")


class Pool(Generic[SlotsT]):
    """Servers by id (insertion order kept for stable rotation) and the strategy over them.

    ``slots`` is the admission state the shell keeps with the pool (limit, leases,
    wait queue); the kernel never looks inside it.

    ``eligible`` keeps its last answer while nothing it depends on can have
    changed: the answer is recomputed after ``invalidate`` (a server added,
    removed, re-weighted, drained or undrained, ejected, or reporting load
    while not routable) and once ``now`` passes ``_valid_until``, the earliest
    time a load report goes stale or an ejection ends. While a server ramps up
    (slow start) its weight changes with time, so nothing is kept.
    """

    __slots__ = (
        "_cached",
        "_load_ttl_s",
        "_valid_until",
        "panic",
        "peer_requests_total",
        "requests_total",
        "servers",
        "settings",
        "slots",
        "strategy",
    )

    def __init__(self, settings: PoolSettings, strategy: Strategy, servers: dict[str, Backend], slots: SlotsT) -> None:
        self.settings = settings
        self.strategy = strategy
        self.slots = slots  # admission state: limit, leases, wait queue
        self.servers = servers  # shared with the strategy's context: mutate in place only
        self.panic = False
        self.requests_total = 0  # requests to route or admit since the pool was made, count
        self.peer_requests_total = 0  # the same of the other replicas (shared state), as last exchanged
        self._load_ttl_s = settings.load_report_ttl_ms / 1000.0
        self._cached: list[Backend] | None = None
        self._valid_until = -math.inf

    def invalidate(self) -> None:
        """Drops the kept ``eligible`` answer; call after any change to who may be chosen."""
        self._cached = None

    @property
    def name(self) -> str:
        return self.settings.name

    def reconfigure(self, settings: PoolSettings, strategy: Strategy | None) -> None:
        """Takes new settings, and a new strategy when the old one no longer applies."""
        self.settings = settings
        self._load_ttl_s = settings.load_report_ttl_ms / 1000.0
        self._cached = None
        if strategy is not None:
            self.strategy = strategy

    def upsert(self, spec: ServerSpec) -> tuple[Backend, bool]:
        """Adds a server or updates its address and weight; returns it and whether it is new."""
        self._cached = None
        server = self.servers.get(spec.id)
        if server is not None:
            server.update_spec(spec)
            return server, False
        server = self.servers[spec.id] = Backend.from_spec(spec)
        return server, True

    def remove(self, server_id: str) -> Backend | None:
        server = self.servers.pop(server_id, None)
        if server is not None:
            self._cached = None
            self.strategy.forget(server_id)
        return server

    def set_draining(self, server: Backend, drain: bool) -> None:
        """Drains (no new selections) or undrains ``server``."""
        server.draining = drain
        self._cached = None

    def record_probe(
        self, server: Backend, answer: Answer, latency_ms: float, problem: str, wall: float, rules: ProbeRules
    ) -> Probed | None:
        """Counts an active health check's answer on ``server`` (see ``loadwarden.policy._probes``);
        returns the server's new verdict when it changed, else None."""
        record = server.probe
        if record is None:
            record = server.probe = ProbeRecord()
        before = record.state
        state = record.record(answer, latency_ms, problem, wall, rules)
        if (server.probed, server.degraded_share) != (state, rules.degraded_share):
            # Statuses show the weight before the next ``eligible`` refreshes it: scale it now.
            server.effective_weight *= _share(state, rules.degraded_share) / _share(
                server.probed, server.degraded_share
            )
            server.probed, server.degraded_share = state, rules.degraded_share
            self._cached = None
        if state is before:
            return None
        level = logging.WARNING if state in (Probed.UNHEALTHY, Probed.DEGRADED) else logging.INFO
        why = f": {record.problem}" if record.problem else ""
        log.log(level, "server %s/%s health check: %s -> %s%s", self.name, server.id, before.value, state.value, why)
        return state

    def forget_probe(self, server: Backend) -> None:
        """Drops what health checks found about ``server``: no check covers it any more."""
        if server.probe is not None or server.probed is not Probed.UNCHECKED:
            server.effective_weight /= _share(server.probed, server.degraded_share)
            server.probe, server.probed, server.degraded_share = None, Probed.UNCHECKED, 1.0
            self._cached = None

    def record_load(self, server: Backend, sample: LoadSample, now: float, wall: float) -> None:
        """Stores a load report.

        A server that was not routable may become so, and a first report starts a
        TTL the kept answer's expiry does not know of yet: both drop the kept answer.
        """
        first = server.load_at is None
        server.load, server.load_at, server.load_wall = sample, now, wall
        if first or not server.routable:
            self._cached = None

    def replace_servers(self, specs: Collection[ServerSpec]) -> None:
        """Makes the server list equal ``specs``; servers that stay keep their state."""
        keep = {spec.id for spec in specs}
        for server_id in [sid for sid in self.servers if sid not in keep]:
            self.remove(server_id)
        for spec in specs:
            self.upsert(spec)

    def health(self, server: Backend, now: float) -> Health:
        return server.health(now, self._load_ttl_s, self.settings.require_load_report)

    def eligible(self, now: float, exclude: Collection[str] = ()) -> list[Backend]:
        """Servers that may be chosen at monotonic time ``now``, in registration order.

        Drained and stale servers are never eligible, nor are those the request
        excludes. Ejected servers, and those health checks found unhealthy, are
        left out unless fewer than the panic threshold of the routable servers
        would remain; then both are ignored (``self.panic`` tells). Degraded
        servers weigh ``degraded_share`` of their weight. Along the way this advances each server's routing
        state: an ejection whose time is up ends, and a server that becomes
        routable starts its slow-start ramp.
        """
        if not exclude and self._cached is not None and now <= self._valid_until:
            return self._cached
        ttl = self._load_ttl_s
        require = self.settings.require_load_report
        window = self.settings.slow_start_ms / 1000.0
        routable: list[Backend] = []
        healthy: list[Backend] = []
        # Earliest time the answer can change without a call to invalidate().
        valid_until = math.inf
        for server in self.servers.values():
            if server.draining or server.is_stale(now, ttl, require):
                server.routable = False
                continue
            if not server.routable:
                server.routable = True
                server.ramp_start = now
            if server.load_at is not None and server.load_at + ttl < valid_until:
                # A hair early, so rounding can never keep a stale server.
                valid_until = math.nextafter(server.load_at + ttl, -math.inf)
            if server.ejected_until:
                if server.ejected_until > now:
                    # Strictly before the end: at ejected_until the ejection is over.
                    valid_until = min(valid_until, math.nextafter(server.ejected_until, -math.inf))
                    if not (exclude and server.id in exclude):
                        routable.append(server)
                    continue
                server.ejected_until = 0.0
                server.returned_at = server.ramp_start = now
            if exclude and server.id in exclude:
                continue
            if window > 0 and server.ramp_start is not None and now - server.ramp_start < window:
                valid_until = -math.inf  # the weight moves with time
            server.effective_weight = _ramped(server, now, window)
            routable.append(server)
            if server.probed is not Probed.UNHEALTHY:
                healthy.append(server)
        threshold = self.settings.outlier.panic_threshold_percent
        self.panic = len(healthy) < len(routable) and len(healthy) * 100 < threshold * len(routable)
        if self.panic:
            for server in routable:
                server.effective_weight = _ramped(server, now, window)
            answer = routable
        else:
            answer = healthy
        if not exclude:
            self._cached, self._valid_until = answer, valid_until
        return answer

    def eject_for(self, server: Backend, duration_s: float, now: float) -> None:
        """Ejects ``server`` for ``duration_s`` from ``now`` (another replica ejected it), unless
        it is ejected for longer already; the ejection cap does not apply (that replica checked it)."""
        if server.id not in self.servers or server.ejected_until >= now + duration_s:
            return
        server.ejected_until = now + duration_s
        server.ejections_total += 1
        server.consecutive_failures = 0
        self._cached = None

    def maybe_eject(self, server: Backend, now: float) -> bool:
        """Ejects ``server`` if its consecutive failures reached the threshold and the cap allows.

        The n-th ejection in a row lasts n times the base time, capped; a server
        that stayed healthy for the cap since its last return starts again at 1x.
        """
        outlier = self.settings.outlier
        if outlier.disabled or server.ejected_until > now:
            return False
        if server.consecutive_failures < outlier.consecutive_failures:
            return False
        return self._eject(server, now, f"after {outlier.consecutive_failures} consecutive failures")

    def maybe_eject_overdue(self, server: Backend, now: float) -> bool:
        """Ejects ``server`` if as many of this process's requests as the failures that eject a
        server are in flight on it and none answered for ``outlier.overdue_factor`` times its
        usual latency: they are failures already, only not timed out yet (and the cap allows)."""
        outlier = self.settings.outlier
        if outlier.disabled or outlier.overdue_disabled or server.ejected_until > now:
            return False
        if server.in_flight < outlier.consecutive_failures:
            return False
        overdue = server.overdue_ms(now, server.usual_latency_ms, outlier.overdue_factor)
        if not overdue:
            return False
        return self._eject(server, now, f"with {server.in_flight} requests unanswered for {overdue:.0f} ms")

    def _eject(self, server: Backend, now: float, why: str) -> bool:
        outlier = self.settings.outlier
        if server.id not in self.servers:
            return False
        ejected = sum(1 for s in self.servers.values() if s.ejected_until > now)
        if ejected >= max(1, len(self.servers) * outlier.max_ejection_percent // 100):
            return False
        max_s = outlier.max_ejection_time_ms / 1000.0
        if server.returned_at is not None and now - server.returned_at > max_s:
            server.ejection_level = 0
        server.ejection_level += 1
        server.ejections_total += 1
        duration_s = min(outlier.base_ejection_time_ms / 1000.0 * server.ejection_level, max_s)
        server.ejected_until = now + duration_s
        server.consecutive_failures = 0
        self._cached = None
        log.warning(
            "server %s/%s ejected for %.1f s %s (ejection #%d)",
            self.name,
            server.id,
            duration_s,
            why,
            server.ejections_total,
        )
        return True

    def why_none_eligible(self, now: float, exclude: Collection[str]) -> str:
        """Explains an empty ``eligible`` result for the UNAVAILABLE message."""
        if not self.servers:
            return f"pool {self.name!r} has no servers"
        excluded = sum(1 for s in self.servers.values() if s.id in exclude)
        states = Counter(self.health(s, now).value for s in self.servers.values() if s.id not in exclude)
        parts = [f"{n} {state}" for state, n in sorted(states.items())]
        if excluded:
            parts.append(f"{excluded} excluded by the request")
        detail = ", ".join(parts)
        hint = ""
        if states.get(Health.STALE.value):
            hint = f"; stale means no load report within {self.settings.load_report_ttl_ms} ms"
        return f"pool {self.name!r} has no eligible server ({len(self.servers)} servers: {detail}{hint})"
