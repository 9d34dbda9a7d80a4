"""Seed 004's API limits on the drop-in ASGI middleware: 30 requests a minute per IP,
a dependency health endpoint, and WebSocket connections in a pool of their own.

What the seed built by hand, and what stands in for it here:

- slowapi's ``@limiter.limit("30/minute")`` keyed by ``get_remote_address``:
  ``rate_limit = "30/minute"`` on the service's ``api`` pool and nothing in the
  app. The middleware sends the client's IP address as the client key of every
  ``AcquireSlot``, so each address has its own 30; the 31st request in a minute
  gets 429 with ``Retry-After``. The pool also caps the requests served at once
  (``max_concurrency = 50``, the seed's ``pool_size``).
- ``GET /api/health`` reporting ``"database": "connected"``: the middleware's
  ``health_path`` with a ``database`` check (``SELECT 1`` on a SQLite file), next
  to the control plane, its circuit breakers and the fallback. It is never
  admitted, so it answers a client over its rate limit; a failing database makes
  it 503 ``not_ready``.
- "Separate circuit breakers for API and WebSocket": ``/ws/updates`` connections
  hold slots of the ``api-ws`` pool through a client of their own (its own
  breakers); a connection that finds the pool full is accepted and closed at once
  with code 1013 (Try Again Later).

Run it against a local service (``./scripts/serve`` in another terminal):

    python examples/seed004_api_limits.py [--target 127.0.0.1:50051]

It creates (or replaces) the two pools through ``AdminService``; in a service
config file they would be::

    [pools.api]
    max_concurrency = 50
    rate_limit = "30/minute"

    [pools.api-ws]
    max_concurrency = 2

Then it serves a FastAPI app with uvicorn on a free port of 127.0.0.1, in this
process, sends 31 requests from 127.0.0.1 and 3 from 127.0.0.2 (the client
sockets are bound to those source addresses), reads ``/api/health``, opens
WebSocket connections until one is refused, takes the database away and brings
it back, and prints what each step got. The rate buckets live in the service,
shared by every process of the app: run it again within a minute and 127.0.0.1
finds part of its 30 spent. Needs fastapi, uvicorn, httpx and websockets: the
dev extra has them (``./scripts/test`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
import websockets
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection

from loadwarden.sdk import AsyncClient, PoolConfig
from loadwarden.sdk.integrations.asgi import AdmissionMiddleware

POOL = "api"
WS_POOL = "api-ws"  # the middleware's default: the HTTP pool's name with "-ws"
RATE_LIMIT = "30/minute"  # the seed's @limiter.limit("30/minute"), per client IP
RATE_COUNT = 30
MAX_CONCURRENCY = 50  # the seed's database pool_size: requests served at once
WS_MAX_CONNECTIONS = 2  # small, so that the demo fills it
HEALTH_PATH = "/api/health"
DASHBOARD_PATH = "/api/admin/dashboard"
OTHER_CLIENT_REQUESTS = 3
WAIT_S = 5.0  # bound of every wait in the demo, seconds


class Database:
    """A SQLite file standing in for the seed's PostgreSQL; each use opens a connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE users (name TEXT NOT NULL, active INTEGER NOT NULL)")
            db.executemany("INSERT INTO users VALUES (?, ?)", [("ann", 1), ("bob", 1), ("eve", 0)])

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: a missing file is an error, not a new empty database.
        return sqlite3.connect(f"{self.path.as_uri()}?mode=rw", uri=True, timeout=1.0)

    def ping(self) -> str:
        """The health check: ``SELECT 1``; raises when the database cannot be reached."""
        with contextlib.closing(self._connect()) as db:
            db.execute("SELECT 1").fetchone()
        return "connected"

    def active_users(self) -> int:
        with contextlib.closing(self._connect()) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM users WHERE active = 1").fetchone()
        return int(count)


def make_app(database: Database, client: AsyncClient, ws_client: AsyncClient) -> AdmissionMiddleware:
    """The seed's API behind the admission middleware (the clients are the caller's)."""
    api = FastAPI()

    @api.get(DASHBOARD_PATH)
    def dashboard() -> dict[str, int]:  # a plain function: FastAPI runs it in a thread
        return {"users": database.active_users()}

    @api.websocket("/ws/updates")
    async def updates(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(json.dumps({"reply": await websocket.receive_text()}))
        except WebSocketDisconnect:
            pass

    return AdmissionMiddleware(
        api,
        client=client,
        websocket_client=ws_client,
        pool=POOL,
        health_path=HEALTH_PATH,
        health_checks={"database": database.ping},
    )


async def configure_pools(client: AsyncClient) -> None:
    """Creates or replaces the two pools; a pool of no servers admits without routing."""
    await client.admin.configure_pool(PoolConfig(POOL, max_concurrency=MAX_CONCURRENCY, rate_limit=RATE_LIMIT))
    await client.admin.configure_pool(PoolConfig(WS_POOL, max_concurrency=WS_MAX_CONNECTIONS))


@contextlib.asynccontextmanager
async def serving(app: AdmissionMiddleware) -> AsyncIterator[str]:
    """Serves `app` with uvicorn on a free port of 127.0.0.1 in this process; yields its URL."""
    # No proxy in front: the peer is the client, and an X-Forwarded-For it sends is not believed.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", proxy_headers=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT_S)


def from_address(url: str, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections leave from `address` (all of 127.0.0.0/8 reaches 127.0.0.1)."""
    return httpx.AsyncClient(base_url=url, timeout=WAIT_S, transport=httpx.AsyncHTTPTransport(local_address=address))


def summary(answer: httpx.Response) -> str:
    """One line of a health answer: its status, the database check and the control plane."""
    document = answer.json()
    checks = document["checks"]
    database, plane = checks["database"], checks["control_plane"]
    in_use = "in use" if plane["fallback_in_use"] else "not in use"
    return (
        f"{answer.status_code} {document['status']}; database {database['state']} ({database.get('detail', '')}); "
        f"control_plane {plane['state']} (fallback {plane['fallback']} {in_use}, "
        f"AcquireSlot breaker {plane['breakers']['AcquireSlot']})"
    )


async def open_websocket(url: str) -> tuple[ClientConnection | None, str]:
    """Opens a connection and sends a ping: (the connection, "accepted"), or (None, how it was closed)."""
    ws = await websockets.connect(url, open_timeout=WAIT_S)
    try:
        await ws.send("ping")
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    except websockets.ConnectionClosed as closed:
        await ws.close()
        if closed.rcvd is None:
            return None, "closed without a close frame"
        return None, f"closed {closed.rcvd.code} ({closed.rcvd.reason})"
    return ws, f"accepted (reply {reply['reply']!r})"


async def active_leases(client: AsyncClient, pool: str) -> int:
    return (await client.load_status(pool)).pools[0].active_leases


async def wait_leases_below(client: AsyncClient, pool: str, limit: int) -> None:
    """Waits until `pool` holds fewer than `limit` leases (a slot is released after its handler returns)."""
    async with asyncio.timeout(WAIT_S):
        while await active_leases(client, pool) >= limit:
            await asyncio.sleep(0.02)


async def demo_rate_limit(url: str) -> None:
    async with from_address(url, "127.0.0.1") as first, from_address(url, "127.0.0.2") as other:
        answers = [await first.get(DASHBOARD_PATH) for _ in range(RATE_COUNT + 1)]
        codes = [a.status_code for a in answers]
        print(
            f"127.0.0.1: {len(codes)} requests to {DASHBOARD_PATH}: {codes.count(200)} answered 200 "
            f"({answers[0].text}), {codes.count(429)} refused 429"
        )
        if 429 in codes:
            n = codes.index(429)
            refused = answers[n]
            print(
                f"127.0.0.1: request {n + 1}: {refused.status_code} "
                f"Retry-After: {refused.headers.get('retry-after')} {refused.text}"
            )
        others = [(await other.get(DASHBOARD_PATH)).status_code for _ in range(OTHER_CLIENT_REQUESTS)]
        print(f"127.0.0.2: {len(others)} requests: {others.count(200)} answered 200 (its own {RATE_LIMIT})")
        health = await first.get(HEALTH_PATH)
        print(f"health (asked by 127.0.0.1, over its limit; never admitted): {summary(health)}")
        print(f"health document: {health.text}")


async def demo_websockets(url: str, client: AsyncClient) -> None:
    ws_url = url.replace("http://", "ws://") + "/ws/updates"
    opened = []
    for n in range(1, WS_MAX_CONNECTIONS + 2):
        ws, outcome = await open_websocket(ws_url)
        print(f"websocket {n}: {outcome}")
        if ws is not None:
            opened.append(ws)
    print(
        f"open connections hold: {WS_POOL} {await active_leases(client, WS_POOL)} slots, {POOL} "
        f"{await active_leases(client, POOL)}"
    )
    await opened.pop(0).close()
    await wait_leases_below(client, WS_POOL, WS_MAX_CONNECTIONS)
    ws, outcome = await open_websocket(ws_url)
    print(f"websocket {WS_MAX_CONNECTIONS + 2}, after one closed: {outcome}")
    if ws is not None:
        opened.append(ws)
    for ws in opened:
        await ws.close()


async def demo_database_down(url: str, database: Database) -> None:
    away = database.path.with_name(database.path.name + ".away")
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        database.path.rename(away)  # the database server gone, as far as the app can tell
        down = await http.get(HEALTH_PATH)
        print(f"database down: health {summary(down)}")
        away.rename(database.path)
        print(f"database back: health {summary(await http.get(HEALTH_PATH))}")


async def run(target: str) -> None:
    # Two clients: the WebSocket connections' own breakers and local fallback slots.
    async with AsyncClient(target, timeout_s=2.0) as client, AsyncClient(target, timeout_s=2.0) as ws_client:
        await configure_pools(client)
        print(
            f"pool {POOL!r}: {RATE_LIMIT} per client IP, at most {MAX_CONCURRENCY} at once; "
            f"pool {WS_POOL!r}: at most {WS_MAX_CONNECTIONS} WebSocket connections"
        )
        with tempfile.TemporaryDirectory(prefix="seed004-") as scratch:
            database = Database(Path(scratch) / "app.db")
            async with serving(make_app(database, client, ws_client)) as url:
                print(f"serving on {url} (uvicorn, in this process)")
                await demo_rate_limit(url)
                await demo_websockets(url, client)
                await demo_database_down(url, database)
        breakers = [c.breaker("AcquireSlot") for c in (client, ws_client)]
        states = ", ".join(
            f"{kind} {b.state.value if b else 'none'}" for kind, b in zip(("API", "WebSocket"), breakers, strict=True)
        )
        print(f"AcquireSlot breakers: {states} (separate: {breakers[0] is not breakers[1]})")
        print(
            f"active leases after: {POOL} {await active_leases(client, POOL)}, {WS_POOL} "
            f"{await active_leases(client, WS_POOL)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="loadwarden service address")
    args = parser.parse_args()
    asyncio.run(run(args.target))


if __name__ == "__main__":
    main()
