"""Seed 004's API limits example, run as documented against a real ``loadwarden serve``.

The example serves its FastAPI app with uvicorn in its own process and talks to it
over real sockets: two client addresses (127.0.0.1 and 127.0.0.2), WebSocket
connections, a SQLite file it takes away. The test checks what it prints.
"""

from __future__ import annotations

import json
import re

import pytest

from ._harness import Processes
from .test_examples import number, run_example

pytestmark = pytest.mark.e2e

SCRIPT = "seed004_api_limits.py"


def line(pattern: str, out: str) -> re.Match[str]:
    match = re.search(pattern, out, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in:\n{out}"
    return match


def test_seed004_limits_each_ip_to_thirty_a_minute_and_reports_its_dependencies(processes: Processes) -> None:
    out = run_example(processes, SCRIPT)

    # 30/minute per IP: the 31st request from 127.0.0.1 is refused, 127.0.0.2 has its own 30.
    line(
        r"^127\.0\.0\.1: 31 requests to /api/admin/dashboard: 30 answered 200 \(\{\"users\":2\}\), 1 refused 429$", out
    )
    refused = line(r"^127\.0\.0\.1: request 31: 429 Retry-After: (\d+) (\{.*\})$", out)
    retry_after = int(refused.group(1))
    assert 1 <= retry_after <= 2, out  # one token every 2 s
    assert json.loads(refused.group(2)) == {
        "error": "rate_limited",
        "reason": "RATE_LIMITED",
        "pool": "api",
        "retry_after_s": retry_after,
    }
    assert number(r"^127\.0\.0\.2: 3 requests: (\d+) answered 200", out) == 3

    # /api/health answers the client that is over its limit, with the database and the control plane.
    line(
        r"^health \(asked by 127\.0\.0\.1, over its limit; never admitted\): 200 ready; database ok \(connected\); "
        r"control_plane ok \(fallback local_limit not in use, AcquireSlot breaker closed\)$",
        out,
    )
    document = json.loads(line(r"^health document: (\{.*\})$", out).group(1))
    assert document["status"] == "ready" and document["timestamp"]
    assert document["checks"]["database"] == {"state": "ok", "critical": True, "detail": "connected"}
    plane = document["checks"]["control_plane"]
    assert plane["state"] == "ok" and plane["fallback_in_use"] is False
    assert set(plane["breakers"].values()) == {"closed"}

    # WebSockets: their own pool of 2, the third closed with 1013, room again once one closes.
    line(r"^websocket 1: accepted \(reply 'ping'\)$", out)
    line(r"^websocket 2: accepted \(reply 'ping'\)$", out)
    line(r"^websocket 3: closed 1013 \(overloaded; retry after \d+ s\)$", out)
    line(r"^open connections hold: api-ws 2 slots, api 0$", out)
    line(r"^websocket 4, after one closed: accepted \(reply 'ping'\)$", out)
    line(r"^AcquireSlot breakers: API closed, WebSocket closed \(separate: True\)$", out)

    # The database gone: not ready (503), naming why; back: ready.
    line(r"^database down: health 503 not_ready; database failing \(OperationalError: unable to open", out)
    line(r"^database back: health 200 ready; database ok \(connected\)", out)
    line(r"^active leases after: api 0, api-ws 0$", out)
