"""The admin HTTP port of a real service: config, on/off, auth, and /api/load-status equal to GetLoadStatus."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest
from google.protobuf import json_format

from loadwarden.policy._operations import OperationSettings
from loadwarden.server import (
    ConfigError,
    ManualClock,
    PoolSettings,
    PoolSpec,
    RunningService,
    ServerSpec,
    ServiceConfig,
    load_config,
    start_service,
)
from loadwarden.server.app._config import AdminSettings, MonitorSettings, parse_config
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

TOKEN = "admin-http-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


# --- config -------------------------------------------------------------------------


def test_admin_is_off_by_default() -> None:
    assert parse_config({}).admin == AdminSettings()
    assert ServiceConfig().admin.listen == ""


def test_listen_without_a_token_names_admin_token(tmp_path: Path) -> None:
    path = tmp_path / "loadwarden.toml"
    path.write_text('[admin]\nlisten = "127.0.0.1:50052"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as missing:
        load_config(path, {})
    assert missing.value.key == "admin.token"
    config = load_config(path, {"LOADWARDEN_ADMIN__TOKEN": TOKEN})
    assert config.admin.listen == "127.0.0.1:50052" and config.admin.token == TOKEN


def test_the_token_from_the_environment_is_taken_verbatim() -> None:
    for token in ("1234567890123456e5", '"quoted-token-0123456"', "true-true-true-true"):
        config = load_config(None, {"LOADWARDEN_ADMIN__LISTEN": "127.0.0.1:0", "LOADWARDEN_ADMIN__TOKEN": token})
        assert config.admin.token == token


@pytest.mark.parametrize(
    ("admin", "key", "fragment"),
    [
        ({"listen": "localhost"}, "admin.listen", "host:port"),
        ({"listen": "127.0.0.1:70000"}, "admin.listen", "0-65535"),
        ({"listen": "::1:50052", "token": TOKEN}, "admin.listen", "brackets"),
        ({"listen": 50052}, "admin.listen", "string"),
        ({"listen": "127.0.0.1:0", "token": "short"}, "admin.token", "at least 16"),
        ({"listen": "127.0.0.1:0", "token": "has spaces in the middle"}, "admin.token", "without spaces"),
        ({"history_interval_ms": 10}, "admin.history_interval_ms", "[100, 3600000]"),
        ({"history_retention_s": "1d"}, "admin.history_retention_s", "integer"),
        ({"history_path": 3}, "admin.history_path", "string"),
        ({"port": 50052}, "admin.port", "valid keys"),
    ],
)
def test_invalid_admin_settings_name_the_key(admin: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"admin": admin})
    assert error.value.key == key and fragment in str(error.value)


def test_a_bad_token_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"admin": {"listen": "127.0.0.1:0", "token": "tiny-secret"}})
    assert "tiny-secret" not in str(error.value)
    assert TOKEN not in repr(AdminSettings(listen="127.0.0.1:0", token=TOKEN))


# --- a running service ---------------------------------------------------------------


@pytest.fixture
async def service(start, clock: ManualClock) -> RunningService:
    servers = tuple(ServerSpec(f"s{i}", f"127.0.0.1:900{i}") for i in (1, 2))
    return await start(
        PoolSpec(PoolSettings(name="api", max_concurrency=4), servers),
        PoolSpec(PoolSettings(name="batch", strategy="least_connections"), servers[:1]),
        clock=clock,
        operations=(OperationSettings(name="import", load_source="pool", pool="api"),),
        monitor=MonitorSettings(enabled=False),
        admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN),
    )


async def get(running: RunningService, path: str, headers: dict[str, str] | None = None) -> tuple[int, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{running.admin_port}{path}", headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_no_admin_port_unless_configured(start) -> None:
    running = await start()
    assert running.admin_port is None


async def test_load_status_json_matches_get_load_status(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    await stub.SelectServer(pb.SelectServerRequest(pool="api"))
    await stub.AcquireSlot(pb.AcquireSlotRequest(pool="api"))
    await stub.ReportLoad(
        pb.ReportLoadRequest(
            reports=[
                common.LoadReport(pool="api", server_id="s1", cpu_percent=55.5, memory_percent=12.0, active_requests=3),
            ]
        )
    )
    await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))
    status, body = await get(service, "/api/load-status", BEARER)
    assert status == 200
    expected = (await stub.GetLoadStatus(pb.GetLoadStatusRequest())).status
    # The manual clock stands still, so even generated_at is the same.
    assert body == json_format.MessageToDict(expected, preserving_proto_field_name=True)
    pools = {p["name"]: p for p in body["pools"]}
    assert pools["api"]["active_leases"] == 1 and pools["api"]["concurrency_limit"] == 4
    assert body["operations"][0]["name"] == "import"


async def test_every_endpoint_needs_the_token(service: RunningService) -> None:
    for path in ("/metrics", "/api/load-status", "/nothing"):
        assert (await get(service, path))[0] == 401
        status, body = await get(service, path, {"Authorization": "Bearer not-the-token-at-all"})
        assert status == 403 and TOKEN not in str(body)
    assert await get(service, "/nothing", BEARER) == (
        404,
        {"error": "not_found", "message": "no admin endpoint at /nothing"},
    )


async def test_stop_closes_the_admin_port() -> None:
    config = ServiceConfig(
        listen="127.0.0.1:0",
        admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN),
        monitor=MonitorSettings(enabled=False),
    )
    running = await start_service(config)
    port = running.admin_port
    assert port is not None and (await get(running, "/api/load-status", BEARER))[0] == 200
    await running.stop(0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


async def test_a_busy_admin_port_fails_the_start_and_frees_the_grpc_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            grpc_port = free.getsockname()[1]
        config = ServiceConfig(
            listen=f"127.0.0.1:{grpc_port}",
            monitor=MonitorSettings(enabled=False),
            admin=AdminSettings(listen=f"127.0.0.1:{taken}", token=TOKEN),
        )
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}"):
            await start_service(config)
    # The gRPC port was released: a service can start on it now.
    running = await start_service(
        ServiceConfig(listen=f"127.0.0.1:{grpc_port}", monitor=MonitorSettings(enabled=False))
    )
    assert running.port == grpc_port
    await running.stop(0)


async def test_an_unknown_metrics_exporter_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "zipkin")
    with pytest.raises(ConfigError) as error:
        await start_service(ServiceConfig(listen="127.0.0.1:0", monitor=MonitorSettings(enabled=False)))
    assert error.value.key == "OTEL_METRICS_EXPORTER"
