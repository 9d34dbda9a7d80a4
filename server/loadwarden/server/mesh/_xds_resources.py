"""A pool as xDS resources for proxyless gRPC (and Envoy): Listener, RouteConfiguration,
Cluster and ClusterLoadAssignment, all named like the pool.

* **Listener** ``<pool>``: an ``api_listener`` whose HttpConnectionManager carries the
  RouteConfiguration inline (every path to the Cluster) and the router filter, so a
  gRPC channel to ``xds:///<pool>`` resolves with LDS, CDS and EDS alone.
* **Cluster** ``<pool>``: EDS over the same ADS stream, ``ROUND_ROBIN``.
* **ClusterLoadAssignment** ``<pool>``: one locality per server (``sub_zone`` = the
  server id) whose ``load_balancing_weight`` is the server's weight, and one endpoint in
  it with the same weight and the server's state as ``health_status``.

Why a locality per server: gRPC's ``round_robin`` ignores endpoint weights (only
``ring_hash`` reads them, through its ring's granularity). Under ``ROUND_ROBIN`` gRPC
runs ``xds_wrr_locality`` then ``weighted_target``, which picks a READY locality at
random in proportion to its weight, so one server per locality splits calls by weight
(grpcio 1.85, 3,000 calls at 1:2:3, nine runs: 15.4-18.1 / 32.7-33.7 / 49.0-51.7 %,
sampling noise only; one locality with endpoint weights splits 33 / 33 / 33). Envoy,
without ``locality_weighted_lb_config``, ignores locality weights and balances by the
endpoint weights: the same split.

Weights: ``load_balancing_weight`` = the server's effective weight (its configured
weight, scaled by slow start and by the DEGRADED share) × WEIGHT_SCALE, rounded, at
least 1, times a learned factor where the strategy has one (``peak_ewma``: the fastest
server's estimate over this server's, in LEARNED_STEP steps). States: a server the pool
would choose now (``Pool.eligible``, so panic mode included) is HEALTHY; a drained one
DRAINING; stale, ejected and unhealthy ones UNHEALTHY. gRPC and Envoy send nothing to
an endpoint that is neither HEALTHY nor UNKNOWN.

EDS carries IP addresses only (neither gRPC nor Envoy resolves names from it), and gRPC
rejects a whole assignment with a bad port or a duplicate address: such servers are left
out and named in ``PoolView.left_out``.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from envoy.config.cluster.v3 import cluster_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from envoy.config.core.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
)
from envoy.config.endpoint.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
    endpoint_components_pb2,
    endpoint_pb2,
)
from envoy.config.listener.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
    api_listener_pb2,
    listener_pb2,
)
from envoy.config.route.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
    route_components_pb2,
    route_pb2,
)
from envoy.extensions.filters.http.router.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs
    router_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs
    http_connection_manager_pb2 as _hcm,
)
from google.protobuf import any_pb2, wrappers_pb2

from loadwarden.policy import Health, Pool

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_URLS = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
# Types a request with no resource names subscribes to wholly (the protocol's wildcard).
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

WEIGHT_SCALE = 100  # load_balancing_weight units per unit of effective weight (slow start's 10 % of 1 is 10)
LEARNED_STEP = 0.05  # learned factors are rounded to this step, so noise in estimates pushes nothing
MAX_WEIGHT_SUM = 2**32 - 1  # Envoy's bound on a priority's locality weights; larger sums are scaled down
ROUTER_FILTER = "envoy.filters.http.router"

HEALTHY = health_check_pb2.HEALTHY
UNHEALTHY = health_check_pb2.UNHEALTHY
DRAINING = health_check_pb2.DRAINING


class EndpointView(NamedTuple):
    """One server as its pool's ClusterLoadAssignment shows it; equal views build equal bytes.

    Attributes:
        server_id: The server's id (its locality's ``sub_zone``).
        host: An IPv4 or IPv6 address, without brackets.
        port: 1-65535.
        weight: ``load_balancing_weight`` of its locality and endpoint, >= 1.
        health: ``envoy.config.core.v3.HealthStatus`` value (HEALTHY, UNHEALTHY, DRAINING).
    """

    server_id: str
    host: str
    port: int
    weight: int
    health: int


class PoolView(NamedTuple):
    """What a pool's resources are built from, and the servers that could not be included.

    Attributes:
        endpoints: One view per server that EDS can carry, by server id.
        left_out: ``(server id, why)`` for each server left out.
    """

    endpoints: tuple[EndpointView, ...]
    left_out: tuple[tuple[str, str], ...] = ()


class PoolResources(NamedTuple):
    """A pool's four resources (messages of the envoy v3 types)."""

    listener: Any
    route: Any
    cluster: Any
    endpoints: Any


@functools.lru_cache(maxsize=65_536)
def split_address(address: str) -> tuple[str, int] | str:
    """``(host, port)`` of ``host:port`` or ``[v6]:port`` when the host is an IP address and the
    port is 1-65535; otherwise why not (a string)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        return f"address {address!r} is not host:port"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"address {address!r} names a host, not an IP address (EDS carries IP addresses only)"
    port = int(port_text)
    if not 1 <= port <= 65_535:
        return f"address {address!r} has port {port}, outside 1-65535"
    return str(ip), port


def _peak_ewma_factors(pool: Pool) -> Mapping[str, float]:
    """Each estimated server's share of the fastest one's capacity: fastest estimate / its own."""
    published = pool.strategy.published() or {}
    estimates = published.get("estimates")
    if not isinstance(estimates, Mapping):
        return {}
    known = {
        sid: max(float(ms), 0.001)
        for sid, ms in estimates.items()
        if isinstance(ms, int | float) and not isinstance(ms, bool) and math.isfinite(ms)
    }
    if not known:
        return {}
    fastest = min(known.values())
    # A server without an estimate keeps factor 1: peak_ewma draws it as often as the heaviest.
    return {sid: max(LEARNED_STEP, round(fastest / ms / LEARNED_STEP) * LEARNED_STEP) for sid, ms in known.items()}


# Strategy name -> its learned per-server weight factors (absent: 1). Strategies whose
# learning is not a per-server weight (Q-values per state, in-flight counts) have none.
LEARNED_FACTORS: dict[str, Callable[[Pool], Mapping[str, float]]] = {"peak_ewma": _peak_ewma_factors}


def pool_view(pool: Pool, now: float) -> PoolView:
    """``pool``'s servers as EDS shows them at monotonic time ``now`` (advances the pool's routing
    state as a selection would: ejections that are over end, slow start ramps)."""
    eligible = {server.id: server for server in pool.eligible(now)}
    learned = LEARNED_FACTORS.get(pool.settings.strategy)
    factors = learned(pool) if learned is not None and eligible else {}
    views: list[EndpointView] = []
    left_out: list[tuple[str, str]] = []
    seen: dict[tuple[str, int], str] = {}
    for server_id in sorted(pool.servers):
        server = pool.servers[server_id]
        where = split_address(server.address)
        if isinstance(where, str):
            left_out.append((server_id, where))
            continue
        if where in seen:
            left_out.append((server_id, f"address {server.address!r} is server {seen[where]!r}'s too"))
            continue
        seen[where] = server_id
        if server_id in eligible:
            weight = server.effective_weight * factors.get(server_id, 1.0)
            health = HEALTHY
        else:
            weight = float(server.weight)  # not sent to; the configured weight keeps it steady
            health = DRAINING if pool.health(server, now) is Health.DRAINING else UNHEALTHY
        views.append(EndpointView(server_id, where[0], where[1], max(1, round(weight * WEIGHT_SCALE)), health))
    return PoolView(fit_weights(views), tuple(left_out))


def fit_weights(views: Sequence[EndpointView]) -> tuple[EndpointView, ...]:
    """``views`` with their weights scaled down in proportion (each at least 1) when their sum
    is over MAX_WEIGHT_SUM; as they are otherwise."""
    total = sum(view.weight for view in views)
    if total <= MAX_WEIGHT_SUM:
        return tuple(views)
    scale = MAX_WEIGHT_SUM / total
    return tuple(view._replace(weight=max(1, math.floor(view.weight * scale))) for view in views)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def route_configuration(name: str) -> Any:
    """Every request of any authority and path to the Cluster ``name``."""
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=name,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix=""),
                        route=route_components_pb2.RouteAction(cluster=name),
                    )
                ],
            )
        ],
    )


def listener(name: str) -> Any:
    """The api_listener a gRPC channel to ``xds:///<name>`` asks for, its routes inline."""
    manager = _hcm.HttpConnectionManager(
        stat_prefix="loadwarden",
        route_config=route_configuration(name),
        http_filters=[_hcm.HttpFilter(name=ROUTER_FILTER, typed_config=_pack(router_pb2.Router()))],
    )
    return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=_pack(manager)))


def cluster(name: str) -> Any:
    """An EDS cluster over the ADS stream, round robin over weighted localities."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            service_name=name,
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
    )


def load_assignment(name: str, endpoints: Sequence[EndpointView]) -> Any:
    """The ClusterLoadAssignment of ``name``: a locality per server, of the server's weight."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for view in endpoints:
        weight = wrappers_pb2.UInt32Value(value=view.weight)
        locality = assignment.endpoints.add(locality=base_pb2.Locality(sub_zone=view.server_id))
        locality.load_balancing_weight.CopyFrom(weight)
        locality.lb_endpoints.append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(address=view.host, port_value=view.port)
                    )
                ),
                health_status=view.health,
                load_balancing_weight=weight,
            )
        )
    return assignment


def pool_resources(name: str, view: PoolView) -> PoolResources:
    """The four resources of pool ``name``."""
    endpoints = load_assignment(name, view.endpoints)
    return PoolResources(listener(name), route_configuration(name), cluster(name), endpoints)
