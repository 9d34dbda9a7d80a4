"""loadwarden in the mesh: an xDS control plane (ADS) serving pools to proxyless gRPC and Envoy.

A pool is a Listener, a RouteConfiguration, a Cluster and a ClusterLoadAssignment, all
named like the pool, so a gRPC channel to ``xds:///<pool>`` routes by loadwarden's
weights and server states. May import loadwarden.policy, server.engine, server.rpc's
public modules, grpc and xds-protos.
"""

from ._xds import ADS_SERVICE, AdsServer, Refused, XdsSettings, check_bearer, new_xds_token
from ._xds_resources import EndpointView, PoolView, pool_view

__all__ = [
    "ADS_SERVICE",
    "AdsServer",
    "EndpointView",
    "PoolView",
    "Refused",
    "XdsSettings",
    "check_bearer",
    "new_xds_token",
    "pool_view",
]
