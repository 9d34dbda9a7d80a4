"""The application keeps working while the control plane dies and comes back.

A workload of 2,000 route() and slot() calls runs in threads while the test
SIGKILLs the real service and restarts it on the same port. The application sees
no exception but documented denials, every call returns within its deadline, the
breakers open, and calls go back to the service after the restart.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import pytest

from loadwarden.sdk import BreakerConfig, BreakerEvent, BreakerState, Client, RetryConfig, SlotDenied

from ._harness import Processes

pytestmark = pytest.mark.e2e

CALLS = 2_000
THREADS = 4
TIMEOUT_S = 0.3
# Python scheduling and thread switches on a 2-core machine, on top of the SDK's own deadline.
SLACK_S = 0.3
WORK_S = 0.005  # the application's own work inside each block (a backend call)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONFIG = """
[service]
shutdown_grace_ms = 200

[pools.api]
max_concurrency = 50
servers = [
  { id = "a", address = "127.0.0.1:9001" },
  { id = "b", address = "127.0.0.1:9002" },
  { id = "c", address = "127.0.0.1:9003" },
]
"""


def test_workload_survives_sigkill_and_restart(processes: Processes) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    service = processes.serve(CONFIG, listen=target)
    client = Client(
        target,
        timeout_s=TIMEOUT_S,
        breaker=BreakerConfig(
            window_size=10,
            minimum_calls=5,
            consecutive_failures=3,
            open_wait_s=0.2,
            max_open_wait_s=0.5,
            half_open_probes=2,
        ),
        retry=RetryConfig(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05),
        slot_fallback="local_limit",
        local_slot_limit=THREADS,
    )
    events: list[BreakerEvent] = []
    assert client._breakers is not None
    client._breakers.add_listener(events.append)

    lock = threading.Lock()
    done = 0
    unexpected: list[BaseException] = []
    late: list[tuple[str, float]] = []
    answers: list[tuple[int, str, bool]] = []  # (sequence, kind, fallback)
    denials: Counter[str] = Counter()

    def work() -> None:
        nonlocal done
        while True:
            with lock:
                if done >= CALLS:
                    return
                done += 1
                n = done
            kind = "route" if n % 2 else "slot"
            began = time.monotonic()
            try:
                if kind == "route":
                    with client.route("api") as route:
                        fallback = route.selection.fallback
                        time.sleep(WORK_S)
                else:
                    with client.slot("api") as lease:
                        fallback = lease.fallback
                        time.sleep(WORK_S)
            except SlotDenied as denied:
                denials[denied.denial] += 1
                fallback = True
            except BaseException as exc:  # noqa: BLE001 - the point: nothing else may escape
                unexpected.append(exc)
                continue
            took = time.monotonic() - began
            # slot() makes two calls on the caller's path (acquire and release).
            allowed = TIMEOUT_S * (1 if kind == "route" else 2) + WORK_S + SLACK_S
            with lock:
                answers.append((n, kind, fallback))
                if took > allowed:
                    late.append((kind, took))

    def wait_for(condition, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "condition not met before the deadline"
            time.sleep(0.01)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: done >= 300)
    service.process.kill()  # SIGKILL: no drain, connections drop
    killed_at = done
    wait_for(lambda: any(e.current is BreakerState.OPEN for e in events))
    wait_for(lambda: done >= killed_at + 300)  # the application kept going on local answers
    restarted_at = done
    processes.serve(CONFIG, listen=target)
    back_at = done  # the service answers again from here on (once its breakers let calls through)
    for thread in threads:
        thread.join(120)
    client.close()

    assert not unexpected, unexpected[:5]
    assert not late, late[:5]
    assert set(denials) <= {"LOCAL_LIMIT", "AT_CAPACITY"}, denials
    down = [a for a in answers if killed_at < a[0] <= restarted_at]
    assert sum(1 for a in down if a[2]) >= len(down) * 0.5  # mostly local answers while the service was down
    assert back_at < CALLS - 400, f"the restart came too late to check recovery (at call {back_at})"
    after = sorted(answers)[-200:]
    assert sum(1 for a in after if not a[2]) >= 190  # back on the service's answers
    assert any(e.current is BreakerState.OPEN for e in events)
    assert any(e.previous is BreakerState.HALF_OPEN and e.current is BreakerState.CLOSED for e in events)
