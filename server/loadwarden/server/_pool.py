"""A pool: its settings, its servers and its strategy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from ._model import Backend, Health, ServerSpec
from ._settings import PoolSettings
from .strategies import Strategy


class Pool:
    """Servers by id (insertion order kept for stable rotation) and the strategy over them."""

    __slots__ = ("settings", "strategy", "servers", "_load_ttl_s")

    def __init__(self, settings: PoolSettings, strategy: Strategy, servers: dict[str, Backend]) -> None:
        self.settings = settings
        self.strategy = strategy
        self.servers = servers  # shared with the strategy's context: mutate in place only
        self._load_ttl_s = settings.load_report_ttl_ms / 1000.0

    @property
    def name(self) -> str:
        return self.settings.name

    def reconfigure(self, settings: PoolSettings, strategy: Strategy | None) -> None:
        """Takes new settings, and a new strategy when the old one no longer applies."""
        self.settings = settings
        self._load_ttl_s = settings.load_report_ttl_ms / 1000.0
        if strategy is not None:
            self.strategy = strategy

    def upsert(self, spec: ServerSpec) -> tuple[Backend, bool]:
        """Adds a server or updates its address and weight; returns it and whether it is new."""
        server = self.servers.get(spec.id)
        if server is not None:
            server.update_spec(spec)
            return server, False
        server = self.servers[spec.id] = Backend.from_spec(spec)
        return server, True

    def remove(self, server_id: str) -> Backend | None:
        server = self.servers.pop(server_id, None)
        if server is not None:
            self.strategy.forget(server_id)
        return server

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
        """Servers that may be chosen at monotonic time ``now``, in registration order."""
        ttl = self._load_ttl_s
        require = self.settings.require_load_report
        out = []
        for server in self.servers.values():
            if server.draining or (exclude and server.id in exclude):
                continue
            if server.load_at is None:
                if require:
                    continue
            elif now - server.load_at > ttl:
                continue
            out.append(server)
        return out

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
