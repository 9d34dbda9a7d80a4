"""TLS and mutual TLS on a real service: the SDK and BackendReporter end to end, refused clients, HTTPS on
the admin port, the plaintext warning off loopback, and unusable files stopping the start by key."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from loadwarden.sdk import AsyncClient, BackendReporter, Client, TlsConfig, UnavailableError
from loadwarden.server import (
    AdminSettings,
    AuthSettings,
    ConfigError,
    MonitorSettings,
    RunningService,
    ServiceConfig,
    TlsSettings,
    start_service,
)
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from .._certs import Certs, make_certs
from ..conftest import StartService, three_server_pool, wait_for

ADMIN_TOKEN = "tls-test-admin-token-7c2e91"
CLIENT_TOKEN = "tls-test-client-token-4a8d03"
WAIT_S = 5.0
poll = functools.partial(wait_for, timeout_s=WAIT_S)  # every wait in this file is bounded by WAIT_S
# A refused handshake must fail fast, not wait out the SDK's retries or breaker.
STRICT: dict[str, Any] = {"retry": None, "breaker": None, "timeout_s": 2.0}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_settings(certs: Certs, *, mutual: bool = False) -> TlsSettings:
    if not mutual:
        return TlsSettings(cert_file=str(certs.server_cert), key_file=str(certs.server_key))
    return TlsSettings(
        cert_file=str(certs.server_cert),
        key_file=str(certs.server_key),
        client_ca_file=str(certs.ca),
        require_client_cert=True,
    )


@pytest.fixture
async def tls_service(start: StartService, certs: Certs) -> RunningService:
    return await start(
        three_server_pool("api"),
        tls=tls_settings(certs),
        monitor=MonitorSettings(enabled=False),
        admin=AdminSettings(listen="127.0.0.1:0", token=ADMIN_TOKEN),
    )


@pytest.fixture
async def mtls_service(start: StartService, certs: Certs) -> RunningService:
    return await start(
        three_server_pool("api"),
        tls=tls_settings(certs, mutual=True),
        auth=AuthSettings(client_token=CLIENT_TOKEN),
        monitor=MonitorSettings(enabled=False),
    )


def client_tls(certs: Certs) -> TlsConfig:
    return TlsConfig(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)


async def select_code(target: str, credentials: grpc.ChannelCredentials | None, **metadata: str) -> grpc.StatusCode:
    """The status of one SelectServer over a raw channel (plaintext when no credentials)."""
    channel = grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(target, credentials)
    async with channel:
        try:
            await pb_grpc.DecisionServiceStub(channel).SelectServer(
                pb.SelectServerRequest(pool="api"), timeout=WAIT_S, metadata=tuple(metadata.items()) or None
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


# --- server authentication -----------------------------------------------------------------


async def test_sdk_clients_over_tls(tls_service: RunningService, certs: Certs) -> None:
    def sync_calls() -> str:
        with Client(tls_service.target, tls=TlsConfig(ca=str(certs.ca)), **STRICT) as client:
            return client.select("api").server_id

    assert await asyncio.to_thread(sync_calls) in {"s1", "s2", "s3"}
    async with AsyncClient(tls_service.target, tls=TlsConfig(ca=certs.ca_pem), **STRICT) as client:
        selection = await client.select("api")
        async with client.slot("api") as lease:
            assert not lease.fallback
    assert not selection.fallback


async def test_plaintext_and_untrusting_clients_get_no_answer_from_a_tls_port(
    tls_service: RunningService, certs: Certs
) -> None:
    assert await select_code(tls_service.target, None) is grpc.StatusCode.UNAVAILABLE
    rogue = grpc.ssl_channel_credentials(certs.rogue_ca.read_bytes())
    assert await select_code(tls_service.target, rogue) is grpc.StatusCode.UNAVAILABLE
    async with AsyncClient(tls_service.target, **STRICT) as plaintext:
        with pytest.raises(UnavailableError):
            await plaintext.select("api")
    assert await select_code(tls_service.target, grpc.ssl_channel_credentials(certs.ca_pem)) is grpc.StatusCode.OK


async def test_server_name_override(start: StartService, certs: Certs) -> None:
    # A certificate for loadwarden.test only, served on 127.0.0.1: the name must be given.
    running = await start(
        three_server_pool("api"),
        monitor=MonitorSettings(enabled=False),
        tls=TlsSettings(cert_file=str(certs.named_cert), key_file=str(certs.named_key)),
    )
    async with AsyncClient(
        running.target, tls=TlsConfig(ca=certs.ca, server_name="loadwarden.test"), **STRICT
    ) as named:
        assert not (await named.select("api")).fallback
    async with AsyncClient(running.target, tls=TlsConfig(ca=certs.ca), **STRICT) as unnamed:
        with pytest.raises(UnavailableError):
            await unnamed.select("api")


async def test_the_admin_port_serves_https(tls_service: RunningService, certs: Certs) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{tls_service.admin_port}/api/load-status"
        async with session.get(url, headers=headers, ssl=context) as response:
            assert response.status == 200 and (await response.json())["pools"][0]["name"] == "api"
        async with session.get(url, ssl=context) as response:
            assert response.status == 401  # TLS does not replace the token
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{tls_service.admin_port}/api/load-status", headers=headers)


# --- mutual TLS ------------------------------------------------------------------------------


async def test_sdk_clients_over_mutual_tls(mtls_service: RunningService, certs: Certs) -> None:
    tls = TlsConfig(ca=certs.ca_pem, cert=certs.client_cert.read_bytes(), key=certs.client_key.read_bytes())

    def sync_calls() -> int:
        with Client(mtls_service.target, tls=tls, token=CLIENT_TOKEN, **STRICT) as client:
            return len(client.load_status("api").pools)

    assert await asyncio.to_thread(sync_calls) == 1
    async with AsyncClient(mtls_service.target, tls=client_tls(certs), token=CLIENT_TOKEN, **STRICT) as client:
        assert not (await client.select("api")).fallback


async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    mtls_service: RunningService, certs: Certs
) -> None:
    ca = certs.ca_pem
    token = {"authorization": f"Bearer {CLIENT_TOKEN}"}
    no_cert = grpc.ssl_channel_credentials(ca)
    rogue_cert = grpc.ssl_channel_credentials(
        ca, certs.rogue_client_key.read_bytes(), certs.rogue_client_cert.read_bytes()
    )
    good = grpc.ssl_channel_credentials(ca, certs.client_key.read_bytes(), certs.client_cert.read_bytes())
    assert await select_code(mtls_service.target, no_cert, **token) is grpc.StatusCode.UNAVAILABLE
    assert await select_code(mtls_service.target, rogue_cert, **token) is grpc.StatusCode.UNAVAILABLE
    assert await select_code(mtls_service.target, None, **token) is grpc.StatusCode.UNAVAILABLE
    assert await select_code(mtls_service.target, good, **token) is grpc.StatusCode.OK
    assert await select_code(mtls_service.target, good) is grpc.StatusCode.UNAUTHENTICATED  # the cert is not a token
    async with AsyncClient(mtls_service.target, tls=TlsConfig(ca=certs.ca), token=CLIENT_TOKEN, **STRICT) as anon:
        with pytest.raises(UnavailableError):
            await anon.select("api")


@pytest.fixture(params=["sync", "async"])
async def reporter_client(
    request: pytest.FixtureRequest, mtls_service: RunningService, certs: Certs
) -> AsyncIterator[Client | AsyncClient]:
    if request.param == "sync":
        client: Client | AsyncClient = Client(mtls_service.target, tls=client_tls(certs), token=CLIENT_TOKEN)
        yield client
        await asyncio.to_thread(client.close)
    else:
        client = AsyncClient(mtls_service.target, tls=client_tls(certs), token=CLIENT_TOKEN)
        yield client
        await client.close()


async def test_backend_reporter_over_mutual_tls(
    mtls_service: RunningService, certs: Certs, reporter_client: Client | AsyncClient
) -> None:
    reporter = BackendReporter(reporter_client, "api", "s2", interval_s=0.1, sampler=lambda: (41.5, 23.0))
    reporter.start()
    try:
        async with AsyncClient(mtls_service.target, tls=client_tls(certs), token=CLIENT_TOKEN) as checker:

            async def s2() -> Any:
                [server] = [s for s in (await checker.load_status("api")).pools[0].servers if s.id == "s2"]
                return server

            server = await poll(s2, lambda s: s.load is not None, "s2's load report over mutual TLS")
        assert (server.load.cpu_percent, server.load.memory_percent) == (41.5, 23.0)
        assert reporter.stats().failed == 0
    finally:
        await reporter.stop_async()


# --- plaintext off loopback warns; unusable files stop the start -----------------------------------


def plaintext_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "without TLS" in r.getMessage()]


async def test_plaintext_off_loopback_logs_one_warning_per_port(caplog: pytest.LogCaptureFixture, certs: Certs) -> None:
    caplog.set_level(logging.INFO)
    monitor = MonitorSettings(enabled=False)
    admin = AdminSettings(listen="0.0.0.0:0", token=ADMIN_TOKEN)
    for config, expected in (
        (
            ServiceConfig(listen="0.0.0.0:0", admin=admin, monitor=monitor),
            ["gRPC listens on 0.0.0.0:0", "admin HTTP listens on 0.0.0.0:0"],
        ),
        (ServiceConfig(listen="0.0.0.0:0", admin=admin, tls=tls_settings(certs), monitor=monitor), []),
        (
            ServiceConfig(
                listen="127.0.0.1:0", admin=AdminSettings(listen="127.0.0.1:0", token=ADMIN_TOKEN), monitor=monitor
            ),
            [],
        ),
    ):
        caplog.clear()
        running = await start_service(config)
        try:
            if config.tls.enabled:  # reachable over TLS from another address than the bound one
                creds = grpc.ssl_channel_credentials(certs.ca_pem)
                assert await select_code(f"localhost:{running.port}", creds) is grpc.StatusCode.NOT_FOUND
        finally:
            await running.stop(0)
        warnings = plaintext_warnings(caplog)
        assert len(warnings) == len(expected), warnings
        assert all(w.startswith(e) for w, e in zip(warnings, expected, strict=True)), warnings
        assert all("set tls.cert_file and tls.key_file" in w for w in warnings)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unusable_tls_file_stops_the_start_before_anything_listens(tmp_path: Path, certs: Certs) -> None:
    port = free_port()
    missing = str(tmp_path / "missing.pem")
    for tls, key in (
        (TlsSettings(cert_file=missing, key_file=str(certs.server_key)), "tls.cert_file"),
        (TlsSettings(cert_file=str(certs.server_cert), key_file=str(certs.client_key)), "tls.key_file"),
        (
            TlsSettings(
                cert_file=str(certs.server_cert),
                key_file=str(certs.server_key),
                client_ca_file=missing,
                require_client_cert=True,
            ),
            "tls.client_ca_file",
        ),
    ):
        config = ServiceConfig(
            listen=f"127.0.0.1:{port}",
            tls=tls,
            monitor=MonitorSettings(enabled=False),
            admin=AdminSettings(listen="127.0.0.1:0", token=ADMIN_TOKEN),
        )
        with pytest.raises(ConfigError) as error:
            await start_service(config)
        assert error.value.key == key
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing was bound
