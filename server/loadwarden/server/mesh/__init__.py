"""loadwarden in the mesh: an xDS control plane (ADS) serving pools to proxyless gRPC and Envoy,
and Envoy's rate-limit service (RLS v3) over the buckets AcquireSlot's rate limits use.

A pool is a Listener, a RouteConfiguration, a Cluster and a ClusterLoadAssignment, all
named like the pool, so a gRPC channel to ``xds:///<pool>`` routes by loadwarden's
weights and server states. May import loadwarden.policy, server.engine, server.rpc's
public modules, grpc and xds-protos.
"""

from ._rls import SERVICE_NAME as RLS_SERVICE
from ._rls import RateLimitService, protoset
from ._rls_config import RlsDescriptor, RlsDomain, RlsRateLimit, RlsSettings, parse_rls
from ._xds import ADS_SERVICE, AdsServer, Refused, XdsSettings, check_bearer, new_xds_token
from ._xds_resources import EndpointView, PoolView, pool_view

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
