"""The Locust driver (``loadwarden/backend_sim/locustfile.py``) run headless against a real HTTP server.

A small aiohttp server on 127.0.0.1 port 0, in a thread of the test, answers every
tenth request 500 and names itself in ``X-Backend`` as seed 002's proxy does; Locust
runs as its own process for a few seconds. Its statistics and the driver's request
log must agree with what the server saw. Locust rewrites its ``--csv`` files once a
second and not at exit, so they may miss the last second; its ``--json-file``
(written at exit) has the final figures.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from ._harness import REPO, clean_env, tool

pytestmark = pytest.mark.e2e

LOCUSTFILE = REPO / "services" / "backend_sim" / "loadwarden" / "backend_sim" / "locustfile.py"
USERS = 5
RATE_PER_USER = 4.0
RUN_S = 5


@dataclass
class Served:
    """What the server answered: the request ids it saw, and how many it failed."""

    ids: list[str] = field(default_factory=list)
    failed: int = 0
    other_paths: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    """``http://127.0.0.1:PORT`` of a running aiohttp app, and what it served."""
    served = Served()
    ready = threading.Event()
    started: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Event]] = []  # port, loop, stop

    async def work(request: web.Request) -> web.Response:
        with served.lock:
            served.ids.append(request.headers.get("X-Request-ID", ""))
            fail = len(served.ids) % 10 == 0
            served.failed += fail
        return web.Response(status=500 if fail else 200, text="ok", headers={"X-Backend": "b1"})

    async def elsewhere(request: web.Request) -> web.Response:
        with served.lock:
            served.other_paths += 1
        return web.Response(status=404)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/work", work)
        app.router.add_route("*", "/{tail:.*}", elsewhere)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stop = asyncio.Event()
        started.append((runner.addresses[0][1], asyncio.get_running_loop(), stop))
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the HTTP server did not start"
    [(port, loop, stop)] = started
    try:
        yield f"http://127.0.0.1:{port}", served
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_locust_drives_the_path_at_the_rate_and_logs_every_request(server: tuple[str, Served], tmp_path: Path) -> None:
    host, served = server
    log = tmp_path / "requests.csv"
    done = subprocess.run(
        [
            str(tool("locust")),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(USERS),
            "-r",
            str(USERS),
            "-t",
            f"{RUN_S}s",
            "--host",
            host,
            "--csv",
            str(tmp_path / "locust"),
            "--json-file",
            str(tmp_path / "final"),
            "--only-summary",
            "--exit-code-on-error",
            "0",
            "--lw-path",
            "/work",
            "--lw-log",
            str(log),
        ],
        cwd=tmp_path,
        env=clean_env({"LW_RATE": str(RATE_PER_USER), "LW_ARRIVALS": "constant"}),  # options from the environment
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    [final] = json.loads((tmp_path / "final.json").read_text(encoding="utf-8"))
    assert (final["name"], final["method"]) == ("/work", "GET")
    requests, failures = int(final["num_requests"]), int(final["num_failures"])
    [stats] = [row for row in _rows(tmp_path / "locust_stats.csv") if row["Name"] == "/work"]
    assert stats["Type"] == "GET" and 0 < int(stats["Request Count"]) <= requests  # at most a second behind
    assert int(stats["Request Count"]) >= requests - USERS * (RATE_PER_USER * 2 + 1)
    assert int(stats["Failure Count"]) <= failures
    assert float(stats["Median Response Time"]) > 0
    # Users stopped at the time limit may leave a request the server answered but Locust never counted.
    with served.lock:
        seen, failed = list(served.ids), served.failed
    assert seen and served.other_paths == 0
    assert len(seen) - USERS <= requests <= len(seen)
    assert failed - USERS <= failures <= failed and failures >= 1
    # Paced: at most RATE_PER_USER a second per user (and the first at once), however fast the answers.
    assert requests <= USERS * (RATE_PER_USER * RUN_S + 2)
    rows = _rows(log)
    assert list(rows[0]) == ["request_id", "timestamp_s", "method", "path", "status", "latency_ms", "success", "server"]
    assert len(rows) == requests  # one row per request Locust counted
    ids = [row["request_id"] for row in rows]
    assert len(set(ids)) == len(ids) and set(ids) <= set(seen)  # the X-Request-ID the server got
    assert {row["status"] for row in rows} == {"200", "500"}
    assert sum(row["success"] == "0" for row in rows) == failures
    assert all(row["success"] == ("1" if row["status"] == "200" else "0") for row in rows)
    assert {(row["method"], row["path"], row["server"]) for row in rows} == {("GET", "/work", "b1")}
    assert all(float(row["latency_ms"]) >= 0 and 0 <= float(row["timestamp_s"]) < RUN_S + 5 for row in rows)
