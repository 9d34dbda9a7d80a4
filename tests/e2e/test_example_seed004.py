"""Seed 004's admin dashboard keeps showing the last good snapshot while the service is down.

A real ``loadwarden serve`` (pool ``api``, 3 servers) runs on a fixed port; the
example renders every 0.2 s. The test SIGKILLs the service once a live page is
out, waits for a STALE page with the breaker open and demo requests routed by
the local fallback, restarts the service on the same port and waits for a live
page again. The example must then finish its renders and exit 0.
"""

from __future__ import annotations

import re
import socket
import sys

import pytest

from ._harness import API_CONFIG, REPO, Processes

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "examples" / "seed004_admin_dashboard.py"
REFRESH_S = 0.2
# About 0.4 s per render (4 calls per render, started 0.1 s apart by the request queue):
# enough for a live page, the outage, a failed half-open probe (3 s + 6 s open waits) and recovery.
ITERATIONS = 35
FIRST_PAGE_TIMEOUT_S = 10.0
STALE_TIMEOUT_S = 5.0
# The GetLoadStatus breaker's first open wait is 3 s; a probe that comes before the
# channel has reconnected re-opens it for 6 s more.
RECOVERY_TIMEOUT_S = 12.0
EXIT_TIMEOUT_S = 20.0

LIVE = re.compile(r"^status: LIVE \(snapshot \d\d:\d\d:\d\d\)$", re.MULTILINE)
STALE_OPEN = re.compile(
    r"^status: STALE \(service unavailable since \d\d:\d\d:\d\d; breaker OPEN, next probe in \d+\.\d s\)",
    re.MULTILINE,
)
FALLBACK_ROUTE = re.compile(r"^routes \(api\): .*api-\d \(local fallback\)", re.MULTILINE)
SERVER_ROW = re.compile(r"^  (api-\d) +(127\.0\.0\.1:900\d) +SERVING +\d+  ", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pages(out: str) -> list[str]:
    """The rendered pages, in order."""
    return [p for p in re.split(r"^(?==== loadwarden admin )", out, flags=re.MULTILINE) if p.strip()]


def test_admin_dashboard_shows_stale_snapshot_and_fallback_routes_while_the_service_is_down(
    processes: Processes,
) -> None:
    target = f"127.0.0.1:{free_port()}"
    service = processes.serve(API_CONFIG, listen=target)
    example = processes.spawn(
        [sys.executable, SCRIPT, "--target", target, "--refresh-s", str(REFRESH_S), "--iterations", str(ITERATIONS)]
    )

    assert example.stdout.wait_for(LIVE, FIRST_PAGE_TIMEOUT_S), example.describe()
    service.process.kill()  # SIGKILL: no goodbye to the client

    stale_after_kill = re.compile(f"(?s){LIVE.pattern}.*?{STALE_OPEN.pattern}", re.MULTILINE)
    assert example.stdout.wait_for(stale_after_kill, STALE_TIMEOUT_S), example.describe()
    assert example.stdout.wait_for(FALLBACK_ROUTE, STALE_TIMEOUT_S), example.describe()

    processes.serve(API_CONFIG, listen=target)
    live_again = re.compile(f"(?s){STALE_OPEN.pattern}.*?{LIVE.pattern}", re.MULTILINE)
    assert example.stdout.wait_for(live_again, RECOVERY_TIMEOUT_S), example.describe()

    rc = example.wait(EXIT_TIMEOUT_S)
    assert rc == 0, example.describe()
    assert "Traceback" not in example.stderr.text, example.describe()

    rendered = pages(example.stdout.text)
    assert len(rendered) == ITERATIONS, example.describe()
    live = [p for p in rendered if LIVE.search(p)]
    stale = [p for p in rendered if STALE_OPEN.search(p)]
    # Live pages show the pool's three servers, and the demo requests were answered by the service.
    assert dict(SERVER_ROW.findall(live[0])) == {f"api-{i}": f"127.0.0.1:900{i}" for i in (1, 2, 3)}, live[0]
    assert re.search(r"^routes \(api\): api-\d \(service\), api-\d \(service\), api-\d \(service\)$", live[0], re.M)
    # A stale page still shows the last good snapshot, and the routes come from the local fallback.
    page = stale[0]
    assert "- last good snapshot from " in page, page
    assert dict(SERVER_ROW.findall(page)) == {f"api-{i}": f"127.0.0.1:900{i}" for i in (1, 2, 3)}, page
    assert re.search(r"^breakers: GetLoadStatus OPEN \(next probe in ", page, re.M), page
    assert "(service)" not in page, page
    # After the restart the page is live again and so are the decisions.
    last = rendered[-1]
    assert LIVE.search(last), example.describe()
    assert re.search(r"^breakers: GetLoadStatus CLOSED", last, re.M), last
    after_outage = rendered[rendered.index(stale[-1]) + 1 :]
    assert any("(service)" in p for p in after_outage), example.describe()
