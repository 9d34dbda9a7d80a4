"""loadwarden in the mesh: an xDS control plane (ADS) serving pools to proxyless gRPC and Envoy,
and Envoy's rate-limit service (RLS v3) over the buckets AcquireSlot's rate limits use.

A pool is a Listener, a RouteConfiguration, a Cluster and a ClusterLoadAssignment, all
named like the pool, so a gRPC channel to ``xds:///<pool>`` routes by loadwarden's
weights and server states. May import loadwarden.policy, server.engine, server.rpc's
public modules, grpc and xds-protos.
"""

from typing import TYPE_CHECKING, Any

# Settings need nothing of xds-protos; the servers are imported when first used, so that
# `loadwarden serve` without [xds] / [rls] neither needs the mesh extra nor loads it.
from ._rls_config import RlsDescriptor, RlsDomain, RlsRateLimit, RlsSettings, parse_rls
from ._settings import XdsSettings

if TYPE_CHECKING:
    from ._rls import SERVICE_NAME as RLS_SERVICE
    from ._rls import RateLimitService, protoset
    from ._xds import ADS_SERVICE, AdsServer, Refused, check_bearer, new_xds_token
    from ._xds_resources import EndpointView, PoolView, pool_view

_LAZY = {
    "RLS_SERVICE": ("._rls", "SERVICE_NAME"),
    "RateLimitService": ("._rls", "RateLimitService"),
    "protoset": ("._rls", "protoset"),
    "ADS_SERVICE": ("._xds", "ADS_SERVICE"),
    "AdsServer": ("._xds", "AdsServer"),
    "Refused": ("._xds", "Refused"),
    "check_bearer": ("._xds", "check_bearer"),
    "new_xds_token": ("._xds", "new_xds_token"),
    "EndpointView": ("._xds_resources", "EndpointView"),
    "PoolView": ("._xds_resources", "PoolView"),
    "pool_view": ("._xds_resources", "pool_view"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    try:
        value = getattr(importlib.import_module(module, __name__), attribute)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{name} needs xds-protos, which is not installed (missing: {exc.name}): pip install 'loadwarden[mesh]'",
            name=exc.name,
        ) from None
    globals()[name] = value
    return value


__all__ = [
    "ADS_SERVICE",
    "RLS_SERVICE",
    "AdsServer",
    "EndpointView",
    "PoolView",
    "RateLimitService",
    "Refused",
    "RlsDescriptor",
    "RlsDomain",
    "RlsRateLimit",
    "RlsSettings",
    "XdsSettings",
    "check_bearer",
    "new_xds_token",
    "parse_rls",
    "pool_view",
    "protoset",
]
