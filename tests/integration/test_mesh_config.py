"""[xds] and [rls] in the config: ADS on the service's own port (with reflection) or on a
port of its own, RLS on the service's port, started and stopped with the service, and
checked like every section."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from envoy.config.listener.v3 import listener_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # type: ignore[import-untyped]  # no stubs
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # type: ignore[import-untyped]  # no stubs
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # type: ignore[import-untyped]  # no stubs
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # type: ignore[import-untyped]  # no stubs

from loadwarden.server import ConfigError, ManualClock, PoolSettings, PoolSpec, ServerSpec
from loadwarden.server.app._config import parse_config
from loadwarden.server.mesh import ADS_SERVICE, RLS_SERVICE, XdsSettings
from loadwarden.server.mesh._xds_resources import LISTENER

POOL = PoolSpec(PoolSettings(name="api"), (ServerSpec("s1", "127.0.0.1:9401"), ServerSpec("s2", "127.0.0.1:9402")))


async def listeners(target: str) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        response = await asyncio.wait_for(call.read(), 10)
        call.cancel()
    return sorted(listener_pb2.Listener.FromString(r.value).name for r in response.resources)


async def services_listed(target: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for answer in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            return {s.name for s in answer.list_services_response.service}
    return set()


async def test_ads_on_the_service_port_is_listed_and_serves_the_pools(start: Any) -> None:
    running = await start(POOL, xds=XdsSettings(enabled=True))
    assert running.xds_port is None
    assert await listeners(running.target) == ["api"]
    assert ADS_SERVICE in await services_listed(running.target)


async def test_ads_on_its_own_port(start: Any) -> None:
    running = await start(POOL, xds=XdsSettings(enabled=True, listen="127.0.0.1:0"))
    assert running.xds_port
    assert await listeners(f"127.0.0.1:{running.xds_port}") == ["api"]
    assert ADS_SERVICE not in await services_listed(running.target)
    port = running.xds_port
    await running.stop(0)
    with pytest.raises(grpc.aio.AioRpcError):  # stopped with the service
        await asyncio.wait_for(listeners(f"127.0.0.1:{port}"), 5)


async def test_ads_is_off_by_default(start: Any) -> None:
    running = await start(POOL)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listeners(running.target)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("xds", "key"),
    [
        ({"enabled": "yes"}, "xds.enabled"),
        ({"listen": "nowhere"}, "xds.listen"),
        ({"push_interval_ms": 5}, "xds.push_interval_ms"),
        ({"max_streams": 0}, "xds.max_streams"),
        ({"push": 1}, "xds.push"),
    ],
)
def test_bad_xds_values_name_the_key(xds: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"xds": xds})
    assert err.value.key == key, str(err.value)


RLS = {
    "enabled": True,
    "domains": [
        {
            "domain": "edge",
            "descriptors": [{"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": 2}}],
        }
    ],
}


async def test_rls_from_the_config_file_answers_ok_then_over_limit_and_is_listed(start: Any) -> None:
    rls = parse_config({"rls": RLS}).rls
    running = await start(POOL, rls=rls, clock=ManualClock())
    assert RLS_SERVICE in await services_listed(running.target)
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="10.0.0.7")
    message = rls_pb2.RateLimitRequest(domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])])
    async with grpc.aio.insecure_channel(running.target) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        codes = [(await stub.ShouldRateLimit(message)).overall_code for _ in range(3)]
    ok, over = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
    assert codes == [ok, ok, over]


def test_bad_rls_values_name_the_key() -> None:
    bad = {
        "enabled": True,
        "domains": [
            {
                "domain": "edge",
                "descriptors": [{"key": "k", "rate_limit": {"unit": "fortnight", "requests_per_unit": 1}}],
            }
        ],
    }
    with pytest.raises(ConfigError) as err:
        parse_config({"rls": bad})
    assert err.value.key == "rls.domains[0].descriptors[0].rate_limit.unit", str(err.value)
