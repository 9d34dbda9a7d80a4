"""ASGI middleware: every HTTP request and WebSocket connection holds a loadwarden slot while it runs.

Example:
    from fastapi import FastAPI
    from loadwarden.sdk.integrations.asgi import AdmissionMiddleware

    app = FastAPI()
    app.add_middleware(AdmissionMiddleware, target="127.0.0.1:50051", pool="api", wait_s=2.0)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

from loadwarden.sdk import AsyncClient, HeldLease, NotFoundError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk.integrations._client_key import ClientKeys
from loadwarden.sdk.integrations._common import (
    Admission,
    AdmissionChoiceError,
    AdmissionSettings,
    Chooser,
    ServerError,
    denied_body,
    denied_status,
    rate_limited,
    retry_after_s,
    unknown_pool,
)
from loadwarden.sdk.integrations.health import (
    HEALTH_HEADERS,
    AsyncCheck,
    AsyncHealth,
    HealthCheck,
    health_body,
    http_status,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WS_TRY_AGAIN_LATER = 1013  # RFC 6455 close code: the server is overloaded, come back later
WS_INTERNAL_ERROR = 1011  # the close code of a server failure: the release reports success=False
WS_POOL_SUFFIX = "-ws"  # the WebSocket pool's name is the HTTP pool's with this suffix, by default


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _header(scope: Scope, name: str) -> Sequence[str]:
    wanted = name.lower().encode("latin-1")
    return [value.decode("latin-1") for key, value in scope.get("headers") or () if key.lower() == wanted]


class AdmissionMiddleware:
    """Admits each HTTP request and each WebSocket connection through a slot of a loadwarden pool.

    The slot is acquired before the app runs and released when the app returns
    (after the last body chunk, so a streaming response holds it while it
    streams; when a WebSocket connection ends), raises, or is cancelled; the
    release reports the latency and success (a response status below 500; a
    WebSocket not closed with 1011). A denied request gets 503 (429 when the
    client is over the pool's rate limit) with `Retry-After` (seconds, rounded
    up) and a short JSON body, and the app does not run. A denied WebSocket is
    accepted and closed at once with code 1013 (Try Again Later) and a reason
    naming the retry-after, so the browser's `onclose` sees why. Lifespan scopes
    pass through. While the Decision service is unreachable, the client's
    `slot_fallback` answers.

    WebSocket connections have their own pool (`websocket_pool`, by default the
    HTTP pool's name with "-ws") and, unless the caller gives the clients, their
    own client: their own circuit breakers and local fallback slots, so
    long-lived connections neither take the HTTP requests' slots nor share their
    breakers (seed 004's "separate circuit breakers for API and WebSocket").

    Every request carries a client key for the pool's per-client rate limit: the
    client's IP address (read through `trusted_proxies`' header when configured),
    or what `client_key` returns.

    Args:
        app: The ASGI app.
        client: Client to use; the caller owns it. When None, one is made from the
            settings and closed at lifespan shutdown.
        choose: Function of the ASGI scope of an HTTP request returning an
            `Admission`, a pool name (the settings' priority) or None (the request
            passes through unadmitted); None admits every request to the settings' pool.
        client_key: Function of the ASGI scope (HTTP or WebSocket) returning the
            client key (None or "" sends none); None uses the client's IP address.
            A function that raises or returns a non-string is logged and the IP
            address is used; a key that is not a valid name is sent hashed.
        websockets: False lets WebSocket connections through unadmitted.
        websocket_pool: Pool of WebSocket connections; None means the settings'
            pool with "-ws" appended ("web-ws").
        websocket_client: Client of WebSocket admissions; the caller owns it. When
            None: one made from the settings (closed at lifespan shutdown) when the
            middleware makes its own HTTP client, else `client`.
        health_path: Path (e.g. "/api/health") the middleware answers itself, never
            admitted, with the health document of its own client (see
            `loadwarden.sdk.integrations.health`); None serves none.
        health_checks: The app's checks in that document, by name: a check
            (critical) or a `HealthCheck`.
        settings: Admission settings; keyword arguments override its fields.
        **fields: `AdmissionSettings` fields (target, pool, priority, wait_s,
            trusted_proxies, ...).

    Raises:
        ValueError: A setting is out of range; the message names it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncClient | None = None,
        choose: Callable[[Scope], Admission | str | None] | None = None,
        client_key: Callable[[Scope], str | None] | None = None,
        websockets: bool = True,
        websocket_pool: str | None = None,
        websocket_client: AsyncClient | None = None,
        health_path: str | None = None,
        health_checks: Mapping[str, AsyncCheck | HealthCheck] | None = None,
        settings: AdmissionSettings | None = None,
        **fields: Any,
    ) -> None:
        self.app = app
        self.settings: AdmissionSettings = replace(settings or AdmissionSettings(), **fields)
        if not isinstance(websockets, bool):
            raise ValueError(f"websockets must be True or False, got {websockets!r}")
        self._choose = choose
        self._chooser: Chooser[Scope] = Chooser(self.settings, choose)
        self._keys: ClientKeys[Scope] = ClientKeys(client_key, self.settings.trusted_proxies, _peer, _header)
        ws_pool = websocket_pool if websocket_pool is not None else self.settings.pool + WS_POOL_SUFFIX
        try:
            self._ws_admission: Admission | None = Admission(ws_pool, self.settings.priority) if websockets else None
        except ValueError as err:
            raise ValueError(f"websocket_pool: {err}") from None
        self._owned: list[AsyncClient] = []
        # An AsyncClient binds to the loop of its first call; making it here is safe.
        self._client = client if client is not None else self._own_client()
        if websocket_client is not None:
            self._ws_client = websocket_client
        else:
            self._ws_client = self._own_client() if client is None and websockets else self._client
        if health_path is not None and (not isinstance(health_path, str) or not health_path.startswith("/")):
            raise ValueError(f"health_path must be a path starting with '/', or None, got {health_path!r}")
        if health_checks and health_path is None:
            raise ValueError("health_checks need a health_path to be served at")
        self._health_path = health_path
        self.health: AsyncHealth | None = None
        """The health document served at `health_path` (add checks with `health.add_check`)."""
        if health_path is not None:
            self.health = AsyncHealth(
                self._client,
                pool=self.settings.pool,
                timeout_s=self.settings.timeout_s,
                slot_fallback=self.settings.slot_fallback,
            )
            self.health.add_checks(health_checks or {})

    def _own_client(self) -> AsyncClient:
        made = AsyncClient(self.settings.target, **self.settings.client_options())
        self._owned.append(made)
        return made

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" and self._owned:
            await self.app(scope, receive, self._closing_at_shutdown(send))
            return
        if kind == "websocket" and self._ws_admission is not None:
            await self._admitted_websocket(self._ws_admission, scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        if self.health is not None and scope.get("path") == self._health_path:
            await serve_health(self.health, scope, send)
            return
        admission = self._chooser(scope)
        if admission is None:
            await self.app(scope, receive, send)
            return
        await self._admitted(admission, scope, receive, send)

    def _slot(self, client: AsyncClient, admission: Admission, scope: Scope) -> AbstractAsyncContextManager[HeldLease]:
        """The slot a request or a WebSocket connection asks `client` for, by the settings."""
        return client.slot(
            admission.pool,
            priority=admission.priority,
            wait_s=self.settings.wait_s,
            lease_ttl_s=self.settings.lease_ttl_s,
            client_key=self._keys(scope),
        )

    async def _admitted(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        block = self._slot(self._client, admission, scope)
        try:
            await block.__aenter__()
        except (SlotDenied, ResourceExhaustedError) as denied:
            await _send_denied(send, denied, admission.pool)
            return
        except NotFoundError:
            raise unknown_pool(admission, self._choose) from None
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:  # cancellation included: the slot is released, the error propagates
            await block.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if status is None or status >= 500:
            marker = ServerError()
            await block.__aexit__(ServerError, marker, None)  # releases with success=False
        else:
            await block.__aexit__(None, None, None)

    async def _admitted_websocket(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        block = self._slot(self._ws_client, admission, scope)
        try:
            await block.__aenter__()
        except (SlotDenied, ResourceExhaustedError) as denied:
            await _close_denied(receive, send, denied)
            return
        except NotFoundError:
            raise AdmissionChoiceError(
                f"WebSocket pool {admission.pool!r} does not exist at the Decision service "
                "(create it, name another with websocket_pool=, or pass websockets=False)"
            ) from None
        failed = False

        async def send_watched(message: Message) -> None:
            nonlocal failed
            if message["type"] == "websocket.close" and message.get("code") == WS_INTERNAL_ERROR:
                failed = True
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except BaseException as exc:  # cancellation included: the slot is released, the error propagates
            await block.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if failed:
            marker = ServerError()
            await block.__aexit__(ServerError, marker, None)
        else:
            await block.__aexit__(None, None, None)

    def _closing_at_shutdown(self, send: Send) -> Send:
        async def send_after_close(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return send_after_close

    async def aclose(self) -> None:
        """Closes the clients the middleware made (not ones it was given)."""
        for client in self._owned:
            await client.close()


class HealthApp:
    """An ASGI app answering every GET or HEAD with `health`'s document (503 when not
    ready), e.g. ``app.add_route("/api/health", HealthApp(health))`` in Starlette/FastAPI.

    Args:
        health: The document to serve; give it the client the admission middleware uses.
    """

    def __init__(self, health: AsyncHealth) -> None:
        if not isinstance(health, AsyncHealth):
            raise ValueError(f"health must be an AsyncHealth, got {health!r}")
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"HealthApp serves HTTP only, got a {scope['type']!r} scope")
        await serve_health(self.health, scope, send)


async def serve_health(health: AsyncHealth, scope: Scope, send: Send) -> None:
    """Answers one HTTP request with `health`'s document (405 for a method other than GET/HEAD)."""
    if scope.get("method", "GET") not in ("GET", "HEAD"):
        body = b'{"error":"method_not_allowed"}'
        status, headers = 405, [(b"allow", b"GET, HEAD"), (b"content-type", b"application/json")]
    else:
        document = await health.document()
        body = health_body(document)
        status = http_status(document)
        headers = [(k.lower().encode(), v.encode()) for k, v in HEALTH_HEADERS]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


async def _send_denied(send: Send, denied: SlotDenied | ResourceExhaustedError, pool: str) -> None:
    retry_after = retry_after_s(denied)
    body = denied_body(denied, retry_after, pool)
    await send(
        {
            "type": "http.response.start",
            "status": denied_status(denied),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _close_denied(receive: Receive, send: Send, denied: SlotDenied | ResourceExhaustedError) -> None:
    """Accepts the handshake and closes at once with 1013, so the client learns why (a close
    before the accept would be a bare HTTP 403 to it)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client left before its handshake was answered
    reason = f"{'rate limited' if rate_limited(denied) else 'overloaded'}; retry after {retry_after_s(denied)} s"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER, "reason": reason})
