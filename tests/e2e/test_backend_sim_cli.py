"""``loadwarden backend-sim`` as a real process: its JSON line, health, Handle, registration, load reports, signals."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from ._harness import Grpcurl, Proc, Processes, tool

pytestmark = pytest.mark.e2e

READY = re.compile(r"^(\{\"backends\".*\})$", re.MULTILINE)
STARTUP_S = 30.0
HANDLE = "loadwarden.v1.SimulatedBackendService/Handle"
HEALTH = "grpc.health.v1.Health/Check"
DECISION = "loadwarden.v1.DecisionService"


def backend_sim(processes: Processes, *args: str) -> tuple[Proc, dict[str, str]]:
    proc = processes.spawn([tool("loadwarden"), "backend-sim", *args])
    match = proc.stdout.wait_for(READY, STARTUP_S)
    if match is None:
        proc.stop()
        pytest.fail(f"backend-sim printed no JSON line within {STARTUP_S} s\n{proc.describe()}")
    return proc, json.loads(match.group(1))["backends"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_backends_listen_serve_health_and_handle_and_stop_cleanly(
    processes: Processes, grpcurl: Grpcurl, sig: signal.Signals
) -> None:
    proc, backends = backend_sim(
        processes,
        "--backend",
        "id=b1,workers=2,base_ms=20,service=constant",
        "--backend",
        "id=b2,speed=2,base_ms=20,service=constant",
    )

    assert set(backends) == {"b1", "b2"}
    assert len(set(backends.values())) == 2  # one port each
    for server_id, address in backends.items():
        assert grpcurl(address, HEALTH, data={}).json() == {"status": "SERVING"}
        answer = grpcurl(address, HANDLE, data={"request_id": "r1", "items": 1}).json()
        assert answer["server_id"] == server_id and answer["request_id"] == "r1"
        assert float(answer["service_ms"]) == pytest.approx(20.0 if server_id == "b1" else 10.0)
    proc.signal(sig)
    assert proc.wait() == 0


@pytest.mark.parametrize(
    ("spec", "key"),
    [  # every key's checks: tests/unit/backend_sim/test_evaluate_parts.py
        ("id=b1,workers=x", "--backend[0].workers"),
        ("id=b1,colour=red", "--backend[0].colour"),
    ],
)
def test_a_bad_backend_option_exits_2_naming_the_key(processes: Processes, spec: str, key: str) -> None:
    proc = processes.spawn([tool("loadwarden"), "backend-sim", "--backend", spec])

    assert proc.wait(STARTUP_S) == 2
    assert f"{key}:" in proc.stderr.text
    assert proc.stdout.text == ""


def test_registered_backends_appear_in_the_pool_and_report_their_load(processes: Processes, grpcurl: Grpcurl) -> None:
    service = processes.serve('[pools.sim]\nstrategy = "least_connections"\n')
    proc, backends = backend_sim(
        processes,
        "--backend",
        "id=b1,base_ms=5",
        "--backend",
        "id=b2,base_ms=5",
        "--service",
        service.target,
        "--pool",
        "sim",
        "--register",
        "--report-interval-ms",
        "100",
    )

    (pool,) = grpcurl(service.target, f"{DECISION}/GetLoadStatus", data={"pool": "sim"}).json()["status"]["pools"]
    assert {s["id"]: s["address"] for s in pool["servers"]} == backends
    deadline = time.monotonic() + STARTUP_S
    while True:
        (pool,) = grpcurl(service.target, f"{DECISION}/GetLoadStatus", data={"pool": "sim"}).json()["status"]["pools"]
        if all("load" in s for s in pool["servers"]):
            break
        assert time.monotonic() < deadline, f"no load reports within {STARTUP_S} s: {pool}"
        time.sleep(0.1)
    choice = grpcurl(service.target, f"{DECISION}/SelectServer", data={"pool": "sim"}).json()
    assert grpcurl(choice["address"], HANDLE, data={}).json()["server_id"] == choice["server_id"]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_registering_in_a_missing_pool_fails_the_start(processes: Processes) -> None:
    service = processes.serve(config=None)
    proc = processes.spawn(
        [
            tool("loadwarden"),
            "backend-sim",
            "--backend",
            "id=b1",
            "--service",
            service.target,
            "--pool",
            "nope",
            "--register",
        ]
    )

    assert proc.wait(STARTUP_S) == 1
    assert "NOT_FOUND" in proc.stderr.text and "'nope'" in proc.stderr.text
    assert proc.stdout.text == ""
