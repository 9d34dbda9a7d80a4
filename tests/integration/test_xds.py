"""The ADS server against real parts: grpcio's own xDS client (in a process of its own, so its
bootstrap and global state stay there) routing to three real grpc.aio backends, and the
protocol driven by hand with the generated ADS stub."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import health_check_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.config.endpoint.v3 import endpoint_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.config.listener.v3 import listener_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # type: ignore[import-untyped]  # no stubs
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # type: ignore[import-untyped]  # no stubs

from loadwarden.server import (
    AuthSettings,
    MonitorSettings,
    PoolSettings,
    PoolSpec,
    RunningService,
    ServerSpec,
    ServiceConfig,
    TlsSettings,
    start_service,
)
from loadwarden.server.mesh import ADS_SERVICE, AdsServer, PoolView, XdsSettings, new_xds_token
from loadwarden.server.mesh._xds_resources import CLUSTER, ENDPOINT, LISTENER, PoolResources, pool_resources

from .._certs import make_certs

CLIENT = Path(__file__).with_name("_xds_client.py")
METHOD = "StreamAggregatedResources"
DRAINING = health_check_pb2.DRAINING


# --- real backends and a real grpcio xDS client ---------------------------------------------


@dataclass
class Backends:
    """grpc.aio servers answering /loadwarden.test.Echo/Ping, each counting its calls."""

    servers: list[grpc.aio.Server] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    last_at: list[float] = field(default_factory=list)  # monotonic time of each one's latest call

    async def start(self, n: int) -> None:
        for index in range(n):
            server = grpc.aio.server()

            async def ping(request: bytes, context: Any, index: int = index) -> bytes:
                self.counts[index] += 1
                self.last_at[index] = time.monotonic()
                return b"pong"

            handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(ping)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("loadwarden.test.Echo", {"Ping": handler}),)
            )
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.servers.append(server)
            self.addresses.append(f"127.0.0.1:{port}")
            self.counts.append(0)
            self.last_at.append(0.0)

    def reset(self) -> None:
        self.counts[:] = [0] * len(self.counts)

    def specs(self, *weights: int) -> tuple[ServerSpec, ...]:
        return tuple(
            ServerSpec(f"s{i + 1}", a, w) for i, (a, w) in enumerate(zip(self.addresses, weights, strict=True))
        )


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    group = Backends()
    await group.start(3)
    yield group
    for server in group.servers:
        await server.stop(0)


class XdsClient:
    """tests/integration/_xds_client.py in a process of its own."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def command(self, line: str, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        answer = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        assert answer, f"the xDS client process ended (exit {self.process.returncode})"
        return dict(json.loads(answer))

    async def close(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.write(b"exit\n")
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def bootstrap(server_uri: str, *, ca: Path | None = None, token_file: Path | None = None) -> dict[str, Any]:
    """A grpc xDS bootstrap naming one ADS server (README "From Envoy and proxyless gRPC")."""
    creds = {"type": "tls", "config": {"ca_certificate_file": str(ca)}} if ca else {"type": "insecure"}
    server: dict[str, Any] = {"server_uri": server_uri, "channel_creds": [creds], "server_features": ["xds_v3"]}
    if token_file is not None:
        server["call_creds"] = [{"type": "jwt_token_file", "config": {"jwt_token_file": str(token_file)}}]
    return {"xds_servers": [server], "node": {"id": "loadwarden-test", "locality": {"zone": "test"}}}


@pytest.fixture
async def xds_client() -> AsyncIterator[Callable[..., Awaitable[XdsClient]]]:
    clients: list[XdsClient] = []

    async def _start(target: str, config: dict[str, Any], **env: str) -> XdsClient:
        environment = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(config), "GRPC_VERBOSITY": "ERROR", **env}
        environment.pop("GRPC_XDS_BOOTSTRAP", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT),
            target,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=environment,
        )
        clients.append(XdsClient(process))
        return clients[-1]

    yield _start
    for client in clients:
        await client.close()


@pytest.fixture
async def services() -> AsyncIterator[Callable[..., Awaitable[tuple[RunningService, AdsServer]]]]:
    """Starts services with ADS on their gRPC port, as the ``[xds]`` wiring will."""
    started: list[RunningService] = []

    async def _start(
        *pools: PoolSpec, listen: str = "127.0.0.1:0", tokens: bool = False, **config: Any
    ) -> tuple[RunningService, AdsServer]:
        settings = config.pop("xds", XdsSettings(enabled=True))
        build = config.pop("build", pool_resources)
        cfg = ServiceConfig(listen=listen, pools=pools, monitor=MonitorSettings(enabled=False), **config)
        ads = AdsServer(settings, tokens=cfg.auth.tokens() if tokens else None, build=build)
        running = await start_service(cfg, extra_handlers=ads.handlers())
        ads.attach(running.core)
        started.append(running)
        return running, ads

    yield _start
    for running in started:
        await running.stop(0)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.02)


async def warm_up(client: XdsClient, group: Backends) -> None:
    """Calls until every backend took calls: each locality's subchannel is READY."""
    deadline = time.monotonic() + 20.0
    while min(group.counts) == 0:
        assert time.monotonic() < deadline, f"not every backend got calls: {group.counts}"
        answer = await client.command("calls 100")
        assert not answer["errors"], answer
    group.reset()


def pool(group: Backends, *weights: int, **settings: Any) -> PoolSpec:
    return PoolSpec(PoolSettings(name="api", **settings), group.specs(*weights))


# --- a real grpcio client -------------------------------------------------------------------


async def test_calls_split_by_the_pushed_weights(backends: Backends, services: Any, xds_client: Any) -> None:
    running, _ = await services(pool(backends, 1, 2, 3))
    client = await xds_client("api", bootstrap(running.target))
    await warm_up(client, backends)
    answer = await client.command("calls 3000")
    assert answer == {"ok": 3000, "errors": {}, "last": ""}
    shares = [100.0 * n / 3000 for n in backends.counts]
    print(f"split of 3,000 calls at weights 1:2:3: {[f'{s:.1f} %' for s in shares]}")
    for share, expected in zip(shares, (100 / 6, 200 / 6, 300 / 6), strict=True):
        assert abs(share - expected) < 3.5, shares  # 3.5 points: more than 5 standard deviations of sampling


async def test_a_drained_backend_stops_getting_calls_within_2_s(
    backends: Backends, services: Any, xds_client: Any
) -> None:
    running, _ = await services(pool(backends, 1, 1, 1))
    client = await xds_client("api", bootstrap(running.target))
    await warm_up(client, backends)
    await client.command("start")
    drained_at = time.monotonic()
    running.core.drain_server("api", "s2", True)

    def quiet() -> bool:  # s2's last call is 0.5 s old while the others take calls
        now = time.monotonic()
        return now - backends.last_at[1] > 0.5 and min(now - backends.last_at[0], now - backends.last_at[2]) < 0.1

    await until(quiet, "s2 stops getting calls")
    answer = await client.command("stop")
    took_s = max(0.0, backends.last_at[1] - drained_at)
    print(f"the drained backend's last call came {took_s * 1000:.0f} ms after the drain")
    assert took_s < 2.0
    assert answer["errors"] == {} and answer["ok"] > 0


async def test_routing_survives_a_restart_and_takes_the_new_state(
    backends: Backends, services: Any, xds_client: Any
) -> None:
    running, _ = await services(pool(backends, 1, 1, 1))
    port = running.port
    client = await xds_client("api", bootstrap(running.target))
    await warm_up(client, backends)
    await client.command("start")
    await running.stop(0)  # loadwarden is gone: the client keeps its last config
    stopped_at, before = time.monotonic(), list(backends.counts)

    def flowing() -> bool:  # for a second, to all three
        grown = all(n > b + 20 for n, b in zip(backends.counts, before, strict=True))
        return grown and time.monotonic() - stopped_at > 1.0

    await until(flowing, "calls flow while loadwarden is down")
    # Back on the same port, with s3 gone from the pool: the client reconnects and follows.
    restarted, _ = await services(pool(backends, 1, 1, 1), listen=f"127.0.0.1:{port}")
    restarted.core.deregister_server("api", "s3")
    await until(lambda: time.monotonic() - backends.last_at[2] > 0.5, "s3 stops getting calls", timeout_s=30.0)
    answer = await client.command("stop")
    assert answer["errors"] == {}, answer  # not one call failed throughout


async def test_a_rejected_update_is_logged_and_the_client_keeps_the_previous_version(
    backends: Backends, services: Any, xds_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    broken = {"on": False}

    def build(name: str, view: PoolView) -> PoolResources:
        resources = pool_resources(name, view)
        if broken["on"]:  # gRPC rejects a zero endpoint weight: the whole assignment is NACKed
            resources.endpoints.endpoints[0].lb_endpoints[0].load_balancing_weight.value = 0
        return resources

    running, ads = await services(pool(backends, 1, 1, 1), build=build)
    client = await xds_client("api", bootstrap(running.target))
    await warm_up(client, backends)
    await client.command("start")
    caplog.set_level(logging.WARNING, logger="loadwarden.server")
    broken["on"] = True
    running.core.drain_server("api", "s3", True)  # pushed broken: rejected, so s3 keeps its calls
    await until(lambda: ads.counts["nacks"] >= 1, "the client rejects the update")
    (line,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert "ClusterLoadAssignment" in line and "must be greater than 0" in line and "keeps version" in line
    taken = backends.counts[2]
    await until(lambda: backends.counts[2] > taken + 50, "s3 still gets calls on the previous version")
    assert ads.counts["nacks"] == 1  # nothing was pushed again
    broken["on"] = False
    running.core.register_server("api", ServerSpec("s1", backends.addresses[0], 2))  # a change: pushed valid
    await until(lambda: time.monotonic() - backends.last_at[2] > 0.5, "s3 stops getting calls")
    answer = await client.command("stop")
    assert answer["errors"] == {}, answer


async def test_grpcio_presents_a_token_from_its_bootstrap(
    backends: Backends, services: Any, xds_client: Any, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    token = new_xds_token()
    running, _ = await services(
        pool(backends, 1, 1, 1),
        tls=TlsSettings(cert_file=str(certs.server_cert), key_file=str(certs.server_key)),
        auth=AuthSettings(clients={"mesh": token}),
        tokens=True,
    )
    good, wrong = tmp_path / "good.jwt", tmp_path / "wrong.jwt"
    good.write_text(token + "\n")
    wrong.write_text(new_xds_token())
    env = {"GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS": "true"}
    with_token = await xds_client("api", bootstrap(running.target, ca=certs.ca, token_file=good), **env)
    assert (await with_token.command("calls 30"))["ok"] == 30
    for token_file, code in ((wrong, "PERMISSION_DENIED"), (None, "UNAUTHENTICATED")):
        refused = await xds_client("api", bootstrap(running.target, ca=certs.ca, token_file=token_file), **env)
        answer = await refused.command("calls 1")
        assert answer["ok"] == 0 and code in answer["last"], answer


# --- the protocol, driven by hand -----------------------------------------------------------


class Stream:
    """One ADS stream through the generated stub."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(metadata=metadata)

    async def send(self, type_url: str, names: tuple[str, ...] = (), response: Any = None, error: str = "") -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
        if response is not None:
            request.response_nonce = response.nonce
            request.version_info = response.version_info
        if error:
            request.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            request.error_detail.message = error
            request.version_info = ""
        await self.call.write(request)

    async def receive(self) -> Any:
        return await asyncio.wait_for(self.call.read(), 10)


def names_in(response: Any) -> list[str]:
    kinds = {LISTENER: listener_pb2.Listener, ENDPOINT: endpoint_pb2.ClusterLoadAssignment}
    out = []
    for packed in response.resources:
        message = kinds.get(response.type_url)
        if message is None:
            out.append(packed.type_url)  # only counted
            continue
        parsed = message.FromString(packed.value)
        out.append(getattr(parsed, "name", "") or parsed.cluster_name)
    return out


@dataclass
class Opened:
    ads: AdsServer
    channel: grpc.aio.Channel
    running: RunningService


@pytest.fixture
async def own_port(backends: Backends) -> AsyncIterator[Callable[..., Awaitable[Opened]]]:
    """ADS on a port of its own over a service's core (pools api and batch), and a channel to it."""
    opened: list[Opened] = []

    async def _open(settings: XdsSettings | None = None, **kwargs: Any) -> Opened:
        pools = (pool(backends, 1, 2, 3), PoolSpec(PoolSettings(name="batch"), backends.specs(1, 1, 1)))
        running = await start_service(
            ServiceConfig(listen="127.0.0.1:0", pools=pools, monitor=MonitorSettings(enabled=False))
        )
        ads = AdsServer(settings or XdsSettings(enabled=True, listen="127.0.0.1:0", push_interval_ms=20), **kwargs)
        if kwargs.get("core", True) is not None:
            ads.attach(running.core)
        port = await ads.serve()
        opened.append(Opened(ads, grpc.aio.insecure_channel(f"127.0.0.1:{port}"), running))
        return opened[-1]

    yield _open
    for each in opened:
        await each.channel.close()
        await each.ads.stop(0)
        await each.running.stop(0)


async def test_first_requests_get_the_state_acks_get_nothing_and_changes_are_pushed(own_port: Any) -> None:
    opened = await own_port()
    stream = Stream(opened.channel)
    await stream.send(LISTENER)  # no names: every Listener
    listeners = await stream.receive()
    assert sorted(names_in(listeners)) == ["api", "batch"]
    await stream.send(LISTENER, response=listeners)  # ACK
    await stream.send(CLUSTER, ("api", "unknown"))
    clusters = await stream.receive()
    assert len(clusters.resources) == 1  # the unknown name is absent
    await stream.send(CLUSTER, ("api", "unknown"), response=clusters)
    await stream.send(ENDPOINT, ("api",))
    first = await stream.receive()
    assert names_in(first) == ["api"]
    await stream.send(ENDPOINT, ("api",), response=first)
    opened.running.core.drain_server("api", "s1", True)
    pushed = await stream.receive()  # the next message is the change, nothing re-sent before it
    assert pushed.type_url == ENDPOINT
    assert (pushed.nonce, pushed.version_info) != (first.nonce, first.version_info)
    assignment = endpoint_pb2.ClusterLoadAssignment.FromString(pushed.resources[0].value)
    assert assignment.endpoints[0].lb_endpoints[0].health_status == DRAINING
    assert opened.ads.counts["acks"] == 3


async def test_a_nack_is_logged_and_nothing_is_sent_until_the_state_changes(
    own_port: Any, caplog: pytest.LogCaptureFixture
) -> None:
    opened = await own_port()
    caplog.set_level(logging.WARNING, logger="loadwarden.server")
    stream = Stream(opened.channel)
    await stream.send(ENDPOINT, ("api",))
    first = await stream.receive()
    await stream.send(ENDPOINT, ("api",), response=first, error="endpoints[0]: invalid port")
    await until(lambda: opened.ads.counts["nacks"] == 1, "the NACK is counted")
    (line,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert f"version {first.version_info}" in line and "invalid port" in line and "keeps version ''" in line
    opened.running.core.drain_server("api", "s2", True)
    pushed = await stream.receive()
    assert pushed.type_url == ENDPOINT and pushed.version_info != first.version_info


async def test_a_stale_nonce_is_ignored(own_port: Any) -> None:
    opened = await own_port()
    stream = Stream(opened.channel)
    await stream.send(LISTENER, ("api",))
    first = await stream.receive()
    await stream.send(LISTENER, ("api",), response=first)
    await stream.send(ENDPOINT, ("api",))
    endpoints = await stream.receive()
    stale = discovery_pb2.DiscoveryResponse(nonce="stale", version_info=first.version_info)
    await stream.send(LISTENER, ("batch",), response=stale)  # ignored: would answer with batch
    await stream.send(ENDPOINT, ("api",), response=endpoints)
    opened.running.core.drain_server("api", "s3", True)
    pushed = await stream.receive()
    assert pushed.type_url == ENDPOINT  # no Listener response in between


async def test_wildcards_legacy_and_explicit(own_port: Any) -> None:
    stream = Stream((await own_port()).channel)
    await stream.send(CLUSTER)
    response = await stream.receive()
    assert len(response.resources) == 2  # no names on the first request: every Cluster
    await stream.send(CLUSTER, ("batch",), response=response)
    response = await stream.receive()
    assert len(response.resources) == 1
    await stream.send(CLUSTER, (), response=response)  # no names after names: none
    response = await stream.receive()
    assert len(response.resources) == 0
    await stream.send(CLUSTER, ("*",), response=response)
    response = await stream.receive()
    assert len(response.resources) == 2
    await stream.send(ENDPOINT)  # no legacy wildcard for endpoints
    response = await stream.receive()
    assert response.type_url == ENDPOINT and len(response.resources) == 0


async def test_malformed_requests_end_the_stream_with_invalid_argument(own_port: Any) -> None:
    channel = (await own_port()).channel
    raw = channel.stream_stream(f"/{ADS_SERVICE}/{METHOD}")
    call = raw()
    await call.write(b"\xff\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    stream = Stream(channel)
    await stream.send("")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.receive()
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "type_url" in (caught.value.details() or "")


async def test_streams_are_capped_and_wait_for_a_core(own_port: Any) -> None:
    channel = (await own_port(XdsSettings(enabled=True, listen="127.0.0.1:0", max_streams=1))).channel
    first = Stream(channel)
    await first.send(LISTENER)
    await first.receive()
    second = Stream(channel)
    await second.send(LISTENER)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.receive()
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "xds.max_streams" in (caught.value.details() or "")
    unattached = (await own_port(core=None)).channel
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await Stream(unattached).receive()
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_tokens_guard_the_stream(own_port: Any) -> None:
    token = new_xds_token()
    channel = (await own_port(tokens={token: "mesh"})).channel
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {new_xds_token()}"),), grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await Stream(channel, metadata).receive()
        assert caught.value.code() is code
    stream = Stream(channel, (("authorization", f"Bearer {token}"),))
    await stream.send(LISTENER)
    assert len((await stream.receive()).resources) == 2


async def test_its_own_port_lists_and_describes_ads_by_reflection(own_port: Any) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub((await own_port()).channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=ADS_SERVICE),
    ]
    listed, described = [answer async for answer in stub.ServerReflectionInfo(iter(requests))]
    assert ADS_SERVICE in [s.name for s in listed.list_services_response.service]
    assert described.file_descriptor_response.file_descriptor_proto  # grpcurl describe works
