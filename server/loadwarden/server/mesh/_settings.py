"""The ``[xds]`` section's settings, importable without xds-protos (the ``mesh`` extra):
the config is read before anything of the mesh is imported."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import ConfigError


@dataclass(frozen=True, slots=True)
class XdsSettings:
    """The ``[xds]`` section: the ADS server for proxyless gRPC and Envoy.

    Attributes:
        enabled: Serve ADS (off by default).
        listen: Empty serves ADS on the service's gRPC port (its TLS, connection limits and
            interceptors); ``host:port`` (``[v6]:port``) on a port of its own.
        push_interval_ms: How often each pool's state is compared with what was pushed, ms
            (10-1000): a drain, ejection, weight or server change reaches connected clients
            within about this plus a round trip (measured: 50-160 ms at 100). Comparing costs
            3-5 µs per server and rebuilding a changed pool 12 µs per server, and the feed
            waits 20 times what a round took: past about 2,000 servers in all the interval
            grows by itself (10,000 servers: about 1 s between comparisons).
        max_streams: ADS streams open at once (1-100,000); one more is RESOURCE_EXHAUSTED.
            A gRPC process opens one per ``xds:///`` target.
        max_streams_per_caller: Streams one caller (token name) may hold (1-100,000); the
            anonymous caller (no tokens configured) is held to ``max_streams`` only.
    """

    enabled: bool = False
    listen: str = ""
    push_interval_ms: int = 100
    max_streams: int = 1_000
    max_streams_per_caller: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("xds.enabled", f"must be true or false, got {self.enabled!r}")
        if not isinstance(self.listen, str):
            raise ConfigError("xds.listen", f"must be a host:port string, got {self.listen!r}")
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65_535:
                raise ConfigError("xds.listen", f"must be empty or host:port, port 0-65535, got {self.listen!r}")
        for key, low, high in (
            ("push_interval_ms", 10, 1_000),
            ("max_streams", 1, 100_000),
            ("max_streams_per_caller", 1, 100_000),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"xds.{key}", f"must be an integer in [{low}, {high}], got {value!r}")
