"""Connection limits and the global server cap of a real ``loadwarden serve`` process.

The idle-socket test starts the service with a 1024-descriptor soft and hard limit
(``prlimit``) and opens 1,100 raw TCP sockets that never send the HTTP/2 preface:
the connection cap (the open-files limit less a reserve) keeps the process from
running out of descriptors, and the handshake timeout closes the idle sockets, so
a health check on a new connection is answered SERVING within its deadline. (With
gRPC's own 120 s handshake timeout the same check times out: the cap alone would
leave the health check's connection refused for as long as the idle sockets stay.)
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.server import CoreLimits
from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2

from ._harness import _LISTENING, API_CONFIG, STARTUP_TIMEOUT_S, Processes, Service, tool

pytestmark = pytest.mark.e2e

IDLE_SOCKETS = 1_100
FD_LIMIT = 1_024
HANDSHAKE_TIMEOUT_MS = CoreLimits().handshake_timeout_ms  # the default: what operators get
HEALTH_DEADLINE_S = 3 * HANDSHAKE_TIMEOUT_MS / 1000


def serve_with_nofile(processes: Processes, config: str, soft: int, hard: int) -> Service:
    """``loadwarden serve`` started under ``prlimit --nofile=soft:hard``."""
    path = processes.workdir / "limits.toml"
    path.write_text(config, encoding="utf-8")
    process = processes.spawn(
        [
            "prlimit",
            f"--nofile={soft}:{hard}",
            "--",
            tool("loadwarden"),
            "serve",
            "--config",
            path,
            "--listen",
            "127.0.0.1:0",
        ]
    )
    match = process.stdout.wait_for(_LISTENING, STARTUP_TIMEOUT_S)
    if match is None:
        process.stop()
        pytest.fail(f"loadwarden did not start\n{process.describe()}")
    return Service(match.group(1), process)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_health_is_answered_with_1100_idle_sockets_open_under_a_1024_fd_limit(processes: Processes) -> None:
    service = serve_with_nofile(processes, API_CONFIG, FD_LIMIT, FD_LIMIT)
    cap = FD_LIMIT - max(64, FD_LIMIT // 10)
    assert service.process.stderr.wait_for(rf"connections capped at {cap} \(open files limit {FD_LIMIT}\)", 5), (
        service.process.describe()
    )
    host, _, port = service.target.rpartition(":")
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_SOCKETS):
            sock = socket.create_connection((host, int(port)), timeout=5)
            idle.append(sock)  # never sends a byte
        # The cap holds the service's descriptors under its limit while the sockets are open.
        assert open_descriptors(service.proc.pid) < FD_LIMIT
        with grpc.insecure_channel(service.target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_DEADLINE_S, wait_for_ready=True
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert service.proc.poll() is None
    finally:
        for sock in idle:
            sock.close()


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit(processes: Processes) -> None:
    service = serve_with_nofile(processes, API_CONFIG, 512, 2_048)
    assert service.process.stderr.wait_for(r"open files limit raised from 512 to 2048", 5), service.process.describe()
    limits = Path(f"/proc/{service.proc.pid}/limits").read_text()
    assert re.search(r"^Max open files\s+2048\s+2048", limits, re.MULTILINE), limits


def test_the_global_server_cap_holds_across_pools(processes: Processes) -> None:
    service = processes.serve(API_CONFIG + "\n[limits]\nmax_servers = 4\n")  # api holds 3
    with grpc.insecure_channel(service.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.RegisterServer(
            admin_pb2.RegisterServerRequest(
                pool="api", server=common_pb2.ServerSpec(id="api-4", address="127.0.0.1:9004")
            ),
            timeout=5,
        )
        with pytest.raises(grpc.RpcError) as refused:
            admin.RegisterServer(
                admin_pb2.RegisterServerRequest(
                    pool="api", server=common_pb2.ServerSpec(id="api-5", address="127.0.0.1:9005")
                ),
                timeout=5,
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_servers (limits.max_servers = 4) reached" in (refused.value.details() or "")
        other = common_pb2.PoolConfig(name="other", servers=[common_pb2.ServerSpec(id="o-1", address="127.0.0.1:9101")])
        with pytest.raises(grpc.RpcError) as refused:
            admin.ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=other), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_servers" in (refused.value.details() or "")
        # Replacing a pool's servers counts its old ones out: 4 -> 2 is fine.
        smaller = common_pb2.PoolConfig(
            name="api",
            servers=[
                common_pb2.ServerSpec(id="a", address="127.0.0.1:1"),
                common_pb2.ServerSpec(id="b", address="127.0.0.1:2"),
            ],
        )
        assert not admin.ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=smaller), timeout=5).created


def test_a_config_over_the_server_cap_does_not_start(processes: Processes) -> None:
    config = (
        API_CONFIG
        + """
[pools.more]
servers = [{ id = "m-1", address = "127.0.0.1:9201" }, { id = "m-2", address = "127.0.0.1:9202" }]

[limits]
max_servers = 4
"""
    )
    process = processes.loadwarden(config)
    assert processes.expect_exit(process) == 2
    text = process.stderr.text
    errors = [line for line in text.splitlines() if line.startswith("loadwarden:")]
    assert "Traceback" not in text and len(errors) == 1, text
    assert "limits.max_servers" in errors[0] and "5 servers" in errors[0], errors
