"""WebSocket admission under a real FastAPI app served by uvicorn on 127.0.0.1:0: each
connection holds a slot of its own pool through its own client (breakers), and a denied
one is accepted and closed with 1013. uvicorn's WebSocket protocol and the client here
are the `websockets` package."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from fastapi import FastAPI, WebSocket

from loadwarden.sdk.integrations.asgi import AdmissionMiddleware

from ..conftest import three_server_pool
from .test_asgi_middleware import WAIT_S, active_leases, serving


def ws_app(entered: asyncio.Event, release: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        entered.set()
        message = await websocket.receive_text()
        await release.wait()
        await websocket.send_text(message.upper())
        await websocket.close()

    return app


async def test_a_websocket_holds_a_slot_of_its_own_pool_and_a_denied_one_is_closed_1013(start) -> None:
    service = await start(three_server_pool("web", max_concurrency=5), three_server_pool("web-ws", max_concurrency=1))
    entered, release = asyncio.Event(), asyncio.Event()
    middleware = AdmissionMiddleware(ws_app(entered, release), target=service.target, pool="web")
    async with serving(middleware) as url:
        ws_url = url.replace("http://", "ws://") + "/ws"
        async with websockets.connect(ws_url) as first:
            await first.send("hello")
            await asyncio.wait_for(entered.wait(), WAIT_S)
            assert await active_leases(service.target, "web-ws") == 1
            assert await active_leases(service.target, "web") == 0
            async with websockets.connect(ws_url) as second:  # the handshake is accepted, then closed
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(second.recv(), WAIT_S)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
            assert closed.value.rcvd.reason.startswith("overloaded; retry after ")
            release.set()
            assert await asyncio.wait_for(first.recv(), WAIT_S) == "HELLO"
        await wait_no_leases_in(service.target, "web-ws")
    # The connections' own client: their own breakers, not the HTTP requests'.
    assert middleware._ws_client is not middleware._client
    assert middleware._ws_client.breaker("AcquireSlot") is not middleware._client.breaker("AcquireSlot")


async def test_websockets_false_lets_connections_through(start) -> None:
    service = await start(three_server_pool("web"))  # no "web-ws" pool: nothing asks for it
    entered, release = asyncio.Event(), asyncio.Event()
    release.set()
    middleware = AdmissionMiddleware(ws_app(entered, release), target=service.target, pool="web", websockets=False)
    async with serving(middleware) as url, websockets.connect(url.replace("http://", "ws://") + "/ws") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), WAIT_S) == "HI"


async def wait_no_leases_in(target: str, pool: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while await active_leases(target, pool):
            await asyncio.sleep(0.02)
