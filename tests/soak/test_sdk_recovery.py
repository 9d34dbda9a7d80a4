"""After an outage of any length, SDK calls are back at the service within 2 s of it serving.

A real `loadwarden serve` is SIGKILLed while a `Client` with the default breaker
settings keeps calling `select()` every 10 ms (answered locally, from the servers
it learnt, while the service is down; the breaker's open wait grows to 60 s). After
25 s (and, in the long run, 120 s) the service is restarted on the same port. A
thread polls the health of the new process over fresh channels, so its own reconnect
backoff does not delay it, and records when it first answers SERVING; the
workload records its first answer that came from the service. The gap must be
under 2 s: the SDK's background health probe ends the breaker's open wait.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.sdk import Client

from ..e2e._harness import API_CONFIG, Processes

pytestmark = [pytest.mark.e2e, pytest.mark.soak, pytest.mark.timeout(300)]  # a 120 s outage and its restarts

CALL_EVERY_S = 0.01
RECOVERY_BOUND_S = 2.0
HEALTH_POLL_S = 0.01


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_serving(target: str, stop: threading.Event, found: list[float]) -> None:
    """Polls the Decision service's health over a fresh channel each time; records the first SERVING."""
    request = health_pb2.HealthCheckRequest(service="loadwarden.v1.DecisionService")
    while not stop.is_set():
        with grpc.insecure_channel(target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=0.2)
            except grpc.RpcError:
                answer = None
        if answer is not None and answer.status == health_pb2.HealthCheckResponse.SERVING:
            found.append(time.monotonic())
            return
        stop.wait(HEALTH_POLL_S)


def measure_recovery(processes: Processes, outage_s: float) -> dict[str, float]:
    target = f"127.0.0.1:{free_port()}"
    service = processes.serve(API_CONFIG, listen=target)
    client = Client(target, timeout_s=0.2)
    stop = threading.Event()
    restarted = threading.Event()
    back_at: list[float] = []
    fallbacks = 0

    def workload() -> None:
        nonlocal fallbacks
        while not stop.is_set():
            selection = client.select("api")
            if selection.fallback:
                fallbacks += 1
            elif restarted.is_set():
                back_at.append(time.monotonic())
                return
            stop.wait(CALL_EVERY_S)

    for _ in range(6):
        assert not client.select("api").fallback  # learn the pool's servers
    caller = threading.Thread(target=workload, daemon=True)
    caller.start()
    try:
        service.stop(signal.SIGKILL)
        breaker = client.breaker("SelectServer")
        assert breaker is not None
        outage_ends = time.monotonic() + outage_s
        while not stop.wait(min(0.5, max(0.0, outage_ends - time.monotonic()))):
            if time.monotonic() >= outage_ends:
                break
        open_wait_s = breaker.stats()["open_wait_s"]
        serving: list[float] = []
        restarted.set()
        poller = threading.Thread(target=first_serving, args=(target, stop, serving), daemon=True)
        poller.start()
        processes.serve(API_CONFIG, listen=target)
        caller.join(30.0)
        poller.join(5.0)
        assert back_at, "no call reached the restarted service within 30 s"
        assert serving, "the restarted service never answered its health check"
        return {"recovery_s": back_at[0] - serving[0], "fallbacks": fallbacks, "open_wait_s": open_wait_s}
    finally:
        stop.set()
        caller.join(5.0)
        client.close()


@pytest.mark.parametrize("outage_s", [25.0, 120.0], ids=["25s", "120s"])
def test_calls_are_back_at_the_service_within_2s_of_it_serving(processes: Processes, outage_s: float) -> None:
    result = measure_recovery(processes, outage_s)

    print({"outage_s": outage_s, **result})
    assert result["fallbacks"] > 0  # the outage was answered locally
    assert result["open_wait_s"] >= 10.0  # the breaker had backed off: waiting it out would be slow
    assert result["recovery_s"] < RECOVERY_BOUND_S, result
