"""Where a client's channel connects: one address, or the replicas of the service.

A client's `target` is either one gRPC target string, dialled exactly as given
("host:port", "dns:///name:port", ...), or a list/tuple of replica addresses.
A list becomes one channel over gRPC's static resolver
("ipv4:10.0.0.1:50051,10.0.0.2:50051", "ipv6:[::1]:50051,[::1]:50052"), which
takes IP literals only. A host name in a list is refused rather than resolved
here: a lookup at construction would block, and its answer would never be looked
up again, whereas gRPC's own DNS resolver (``dns:///name:port``) re-resolves when
connections fail.

Calls are spread by the load-balancing policy in the channel's service config:
round robin over every ready replica for a list (or when asked for by name), so
a replica that stops answering is left out until it reconnects. Without it the
channel keeps gRPC's default (pick_first: one connection, the first address that
answers) and carries no service config at all.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

LOAD_BALANCING_POLICIES = ("pick_first", "round_robin")

# Most replica addresses one client takes; a list is read in full at construction.
MAX_REPLICAS = 1_000

_DNS_HINT = (
    "for a DNS name that resolves to several replicas, pass target='dns:///name:port' and load_balancing='round_robin'"
)


@dataclass(frozen=True, slots=True)
class ChannelTarget:
    """What a client's channel dials, and how it spreads calls over what it finds.

    Attributes:
        target: The gRPC target: the string given, or the static resolver form of a list.
        load_balancing: "round_robin" or "pick_first" (gRPC's default).
        authority: The ``:authority`` of the calls when the target names no single
            host (a list: its first address); None leaves it to gRPC.
    """

    target: str
    load_balancing: str
    authority: str | None = None

    @property
    def service_config(self) -> str | None:
        """The channel's service config (JSON), or None to keep gRPC's default policy."""
        if self.load_balancing == "pick_first":
            return None
        return json.dumps({"loadBalancingConfig": [{self.load_balancing: {}}]}, separators=(",", ":"))

    def channel_options(self, base: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
        """`base` plus what this target needs: its service config and authority, if any."""
        extra: list[tuple[str, Any]] = []
        service_config = self.service_config
        if service_config is not None:
            # Only the SDK's config applies: a resolver's (a DNS TXT record) is not looked up.
            extra += [("grpc.service_config", service_config), ("grpc.service_config_disable_resolution", 1)]
        if self.authority is not None:
            extra.append(("grpc.default_authority", self.authority))
        return (*base, *extra)


def channel_target(target: object, load_balancing: object = None) -> ChannelTarget:
    """Validates a client's `target` and `load_balancing` and builds its channel target.

    Args:
        target: One gRPC target string, or a non-empty list/tuple of "ip:port" /
            "[ipv6]:port" replica addresses (at most `MAX_REPLICAS`, no repeats,
            one address family).
        load_balancing: One of `LOAD_BALANCING_POLICIES`, or None: "round_robin"
            for a list, "pick_first" (gRPC's default) for a string.

    Returns:
        The target to dial with its policy.

    Raises:
        ValueError: An argument is malformed; the message names it (``target`` or
            ``target[i]`` for an entry, ``load_balancing``).
    """
    if load_balancing is not None and load_balancing not in LOAD_BALANCING_POLICIES:
        raise ValueError(
            f"load_balancing must be one of {', '.join(map(repr, LOAD_BALANCING_POLICIES))} or None, "
            f"got {load_balancing!r}"
        )
    if isinstance(target, str):
        if not target:
            raise ValueError(f"target must be a non-empty 'host:port' string, got {target!r}")
        return ChannelTarget(target, "pick_first" if load_balancing is None else str(load_balancing))
    if not isinstance(target, list | tuple):
        raise ValueError(f"target must be a 'host:port' string or a list/tuple of them, got {target!r}")
    if not target:
        raise ValueError("target must hold at least one 'host:port' address, got an empty list")
    if len(target) > MAX_REPLICAS:
        raise ValueError(f"target must hold at most {MAX_REPLICAS} addresses, got {len(target)}")
    addresses = [_replica_address(i, entry) for i, entry in enumerate(target)]
    families = {version for version, _ in addresses}
    if len(families) > 1:
        raise ValueError("target must not mix IPv4 and IPv6 addresses: gRPC's static resolver takes one family")
    seen: set[str] = set()
    for i, (_, address) in enumerate(addresses):
        if address in seen:
            raise ValueError(f"target[{i}] repeats the address {address!r}")
        seen.add(address)
    scheme = "ipv4" if families == {4} else "ipv6"
    joined = ",".join(address for _, address in addresses)
    return ChannelTarget(
        f"{scheme}:{joined}",
        "round_robin" if load_balancing is None else str(load_balancing),
        authority=addresses[0][1],
    )


def _replica_address(i: int, entry: object) -> tuple[int, str]:
    """(IP version, normalised "ip:port" / "[ip]:port") of list entry `i`."""
    name = f"target[{i}]"
    if not isinstance(entry, str):
        raise ValueError(f"{name} must be a 'host:port' string, got {entry!r}")
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65_535:
        raise ValueError(f"{name} must be 'host:port' with a port in 1-65535, got {entry!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    literal = host[1:-1] if bracketed else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        if ":" in host and not bracketed:
            raise ValueError(f"{name} must put an IPv6 address in brackets, '[addr]:port', got {entry!r}") from None
        raise ValueError(f"{name} must be an IP address and port, got {entry!r}; {_DNS_HINT}") from None
    if ip.version == 6 and not bracketed:
        raise ValueError(f"{name} must put an IPv6 address in brackets, '[addr]:port', got {entry!r}")
    if ip.version == 4 and bracketed:
        raise ValueError(f"{name} must not put an IPv4 address in brackets, got {entry!r}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise ValueError(f"{name} must not carry an IPv6 zone id, got {entry!r}")
    return (4, f"{ip}:{int(port)}") if ip.version == 4 else (6, f"[{ip}]:{int(port)}")
