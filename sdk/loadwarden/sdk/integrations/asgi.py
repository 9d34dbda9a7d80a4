"""ASGI middleware: every HTTP request holds a loadwarden slot while it runs.

Example:
    from fastapi import FastAPI
    from loadwarden.sdk.integrations.asgi import AdmissionMiddleware

    app = FastAPI()
    app.add_middleware(AdmissionMiddleware, target="127.0.0.1:50051", pool="api", wait_s=2.0)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import Any

from loadwarden.sdk import AsyncClient, NotFoundError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk.integrations._common import (
    Admission,
    AdmissionSettings,
    Chooser,
    ServerError,
    denied_body,
    retry_after_s,
    unknown_pool,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AdmissionMiddleware:
    """Admits each HTTP request through a slot of a loadwarden pool.

    The slot is acquired before the app runs and released when the app returns
    (after the last body chunk, so a streaming response holds it while it
    streams), raises, or is cancelled; the release reports the latency and
    success (a response status below 500). A denied request gets 503 with
    `Retry-After` (seconds, rounded up) and a short JSON body, and the app does
    not run. Lifespan and websocket scopes pass through. While the Decision
    service is unreachable, the client's `slot_fallback` answers.

    Args:
        app: The ASGI app.
        client: Client to use; the caller owns it. When None, one is made from the
            settings and closed at lifespan shutdown.
        choose: Function of the ASGI scope returning an `Admission`, a pool name
            (the settings' priority) or None (the request passes through
            unadmitted); None admits every request to the settings' pool.
        settings: Admission settings; keyword arguments override its fields.
        **fields: `AdmissionSettings` fields (target, pool, priority, wait_s, ...).

    Raises:
        ValueError: A setting is out of range; the message names it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncClient | None = None,
        choose: Callable[[Scope], Admission | str | None] | None = None,
        settings: AdmissionSettings | None = None,
        **fields: Any,
    ) -> None:
        self.app = app
        self.settings: AdmissionSettings = replace(settings or AdmissionSettings(), **fields)
        self._choose = choose
        self._chooser: Chooser[Scope] = Chooser(self.settings, choose)
        self._owns_client = client is None
        # An AsyncClient binds to the loop of its first call; making it here is safe.
        self._client = (
            client if client is not None else AsyncClient(self.settings.target, **self.settings.client_options())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self._owns_client:
            await self.app(scope, receive, self._closing_at_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admission = self._chooser(scope)
        if admission is None:
            await self.app(scope, receive, send)
            return
        await self._admitted(admission, scope, receive, send)

    async def _admitted(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        block = self._client.slot(
            admission.pool,
            priority=admission.priority,
            wait_s=self.settings.wait_s,
            lease_ttl_s=self.settings.lease_ttl_s,
        )
        try:
            await block.__aenter__()
        except (SlotDenied, ResourceExhaustedError) as denied:
            await _send_denied(send, denied)
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

    def _closing_at_shutdown(self, send: Send) -> Send:
        async def send_after_close(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return send_after_close

    async def aclose(self) -> None:
        """Closes the client the middleware made (not one it was given)."""
        if self._owns_client:
            await self._client.close()


async def _send_denied(send: Send, denied: SlotDenied | ResourceExhaustedError) -> None:
    retry_after = retry_after_s(denied)
    body = denied_body(denied, retry_after)
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
