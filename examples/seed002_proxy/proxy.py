"""The seed's load balancer: an aiohttp reverse proxy that asks loadwarden where each request goes.

For every incoming request the proxy opens ``AsyncClient.route(pool)``: the service
picks a backend of the pool with the pool's strategy (round robin, least
connections or Q-learning), the proxy forwards the request there, and when the
block exits the SDK reports the outcome (the backend's latency, and whether it
answered below 500) in the background, which is what the Q-learning agent learns
from. The client is the SDK's default one: a deadline on every call, retries and
a circuit breaker per method, and local round robin over the last known servers
when the service cannot answer.

Answers: the backend's status and body; 504 when the backend did not answer
within the proxy's timeout; 502 when it could not be reached; 503 when loadwarden
had no server to give. Every request is logged as a `ProxyRecord`.
"""

from __future__ import annotations

import time
import uuid
from typing import NamedTuple

import aiohttp
from aiohttp import web

from loadwarden.sdk import AsyncClient, LoadwardenError

# Headers of a hop, not of the message (RFC 9110 7.6.1): never forwarded either way.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "host", "content-length"}
)


class ProxyRecord(NamedTuple):
    """One request through the proxy (the seed's ``request_id, strategy, server, latency, status``).

    Attributes:
        request_id: The client's ``X-Request-ID``, or one the proxy made.
        strategy: Routing strategy of the pool asked.
        time_s: When the request reached the proxy, seconds since the run started.
        server: Backend chosen; "" when none was.
        latency_ms: Time in the proxy, from arrival to answer (the decision included), ms.
        status: HTTP status the proxy answered.
        explored: The strategy said it explored rather than exploited.
    """

    request_id: str
    strategy: str
    time_s: float
    server: str
    latency_ms: float
    status: int
    explored: bool


class ReverseProxy:
    """Forwards every request to the backend loadwarden picks in the current pool.

    Args:
        client: The loadwarden client (the caller's: it closes it).
        timeout_s: Longest the proxy waits for a backend, seconds.
    """

    def __init__(self, client: AsyncClient, timeout_s: float) -> None:
        self._client = client
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.pool = ""
        self.strategy = ""
        self._started = time.perf_counter()
        self.records: list[ProxyRecord] = []
        self.in_flight = 0  # requests the proxy is handling right now

    def use(self, pool: str, strategy: str) -> None:
        """Routes the requests that arrive from now on through `pool`; restarts the clock and the log."""
        self.pool, self.strategy = pool, strategy
        self._started = time.perf_counter()
        self.records = []

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.perf_counter()
        request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        pool, strategy, started, log = self.pool, self.strategy, self._started, self.records  # this run's
        server, explored = "", False
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Request-ID"] = request_id
        try:
            async with self._client.route(pool) as route:
                server, explored = route.server_id, route.selection.explored
                response = await self._forward(request, route.address, headers, body)
                if response.status >= 500:
                    route.fail(str(response.status))
        except LoadwardenError as err:  # no server to give: raised by the selection, before any forward
            response = web.json_response({"error": "no_backend", "detail": str(err)}, status=503)
        except TimeoutError:  # before aiohttp.ClientError: its timeouts are both
            response = web.json_response({"error": "backend_timeout", "server": server}, status=504)
        except aiohttp.ClientError as err:
            response = web.json_response({"error": "backend_unreachable", "detail": str(err)}, status=502)
        response.headers["X-Request-ID"] = request_id
        if server:
            response.headers["X-Backend"] = server
        done = time.perf_counter()
        log.append(
            ProxyRecord(
                request_id,
                strategy,
                arrived - started,
                server,
                (done - arrived) * 1000.0,
                response.status,
                explored,
            )
        )
        return response

    async def _forward(self, request: web.Request, address: str, headers: dict[str, str], body: bytes) -> web.Response:
        assert self._session is not None
        url = f"http://{address}{request.rel_url}"
        async with self._session.request(request.method, url, headers=headers, data=body) as upstream:
            payload = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=kept)

    async def start(self) -> str:
        """Serves the proxy on a free port of 127.0.0.1; returns its base URL."""
        # limit=0: no cap on connections to the backends; a queue belongs in the backends.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=self._timeout, auto_decompress=False
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
