"""WSGI middleware: every request holds a loadwarden slot until its response is closed.

Example:
    from flask import Flask
    from loadwarden.sdk.integrations.wsgi import AdmissionMiddleware

    app = Flask(__name__)
    app.wsgi_app = AdmissionMiddleware(app.wsgi_app, target="127.0.0.1:50051", pool="api", wait_s=2.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from loadwarden.sdk import Client, NotFoundError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk.integrations._client_key import ClientKeys
from loadwarden.sdk.integrations._common import (
    Admission,
    AdmissionSettings,
    Chooser,
    HeldSlot,
    ReleasingIterable,
    denied_body,
    denied_status,
    retry_after_s,
    unknown_pool,
)
from loadwarden.sdk.integrations.health import HEALTH_HEADERS, Check, Health, HealthCheck, health_body, http_status

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _peer(environ: Environ) -> str | None:
    peer = environ.get("REMOTE_ADDR")
    return peer if isinstance(peer, str) and peer else None


def _header(environ: Environ, name: str) -> Sequence[str]:
    # PEP 3333: HTTP_ plus the name in capitals with "_" for "-"; a server joins repeated lines with ",".
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return [value] if isinstance(value, str) else []


class AdmissionMiddleware:
    """Admits each request through a slot of a loadwarden pool.

    The slot is acquired before the app runs and released when the server closes
    the response iterable (PEP 3333), so a streaming response holds it until it
    ends; also when the app raises. The release reports the latency and success
    (a status below 500). A denied request gets 503 (429 when the client is over
    the pool's rate limit) with `Retry-After` (seconds, rounded up) and a short
    JSON body, and the app does not run. While the Decision service is
    unreachable, the client's `slot_fallback` answers. Every request carries a
    client key for the pool's per-client rate limit: the client's IP address
    (``REMOTE_ADDR``, or `trusted_proxies`' header when configured), or what
    `client_key` returns.

    Args:
        app: The WSGI app.
        client: Client to use; the caller owns it. When None, one is made from the settings.
        choose: Function of the WSGI environ returning an `Admission`, a pool name
            or None (passes through unadmitted); None admits every request to the
            settings' pool.
        client_key: Function of the WSGI environ returning the client key (None or
            "" sends none); None uses the client's IP address. A function that
            raises or returns a non-string is logged and the IP address is used; a
            key that is not a valid name is sent hashed.
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
        app: WSGIApp,
        *,
        client: Client | None = None,
        choose: Callable[[Environ], Admission | str | None] | None = None,
        client_key: Callable[[Environ], str | None] | None = None,
        health_path: str | None = None,
        health_checks: Mapping[str, Check | HealthCheck] | None = None,
        settings: AdmissionSettings | None = None,
        **fields: Any,
    ) -> None:
        self.app = app
        self.settings: AdmissionSettings = replace(settings or AdmissionSettings(), **fields)
        self._choose = choose
        self._chooser: Chooser[Environ] = Chooser(self.settings, choose)
        self._keys: ClientKeys[Environ] = ClientKeys(client_key, self.settings.trusted_proxies, _peer, _header)
        self._owns_client = client is None
        self._client = client if client is not None else Client(self.settings.target, **self.settings.client_options())
        if health_path is not None and (not isinstance(health_path, str) or not health_path.startswith("/")):
            raise ValueError(f"health_path must be a path starting with '/', or None, got {health_path!r}")
        if health_checks and health_path is None:
            raise ValueError("health_checks need a health_path to be served at")
        self._health_path = health_path
        self.health: Health | None = None
        """The health document served at `health_path` (add checks with `health.add_check`)."""
        if health_path is not None:
            self.health = Health(
                self._client,
                pool=self.settings.pool,
                timeout_s=self.settings.timeout_s,
                slot_fallback=self.settings.slot_fallback,
            )
            self.health.add_checks(health_checks or {})

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.health is not None and environ.get("PATH_INFO") == self._health_path:
            return serve_health(self.health, environ, start_response)
        admission = self._chooser(environ)
        if admission is None:
            return self.app(environ, start_response)
        block = self._client.slot(
            admission.pool,
            priority=admission.priority,
            wait_s=self.settings.wait_s,
            lease_ttl_s=self.settings.lease_ttl_s,
            client_key=self._keys(environ),
        )
        try:
            block.__enter__()
        except (SlotDenied, ResourceExhaustedError) as denied:
            return _denied(start_response, denied, admission.pool)
        except NotFoundError:
            raise unknown_pool(admission, self._choose) from None
        held = HeldSlot(block)
        status: list[int] = []

        def start_with_status(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[:] = [int(status_line.split(" ", 1)[0])]
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, start_with_status)
        except BaseException as exc:
            held.end(True, exc)
            raise
        return ReleasingIterable(body, held, lambda: not status or status[0] >= 500)

    def close(self) -> None:
        """Closes the client the middleware made (not one it was given)."""
        if self._owns_client:
            self._client.close()


class HealthApp:
    """A WSGI app answering every GET or HEAD with `health`'s document (503 when not ready).

    Args:
        health: The document to serve; give it the client the admission middleware uses.
    """

    def __init__(self, health: Health) -> None:
        if not isinstance(health, Health):
            raise ValueError(f"health must be a Health, got {health!r}")
        self.health = health

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return serve_health(self.health, environ, start_response)


def serve_health(health: Health, environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Answers one request with `health`'s document (405 for a method other than GET/HEAD)."""
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        body = b'{"error":"method_not_allowed"}'
        start_response(
            "405 Method Not Allowed",
            [("Allow", "GET, HEAD"), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]
    document = health.document()
    body = health_body(document)
    status = HTTPStatus(http_status(document))
    start_response(f"{status.value} {status.phrase}", [*HEALTH_HEADERS, ("Content-Length", str(len(body)))])
    return [b"" if method == "HEAD" else body]


def _denied(start_response: StartResponse, denied: SlotDenied | ResourceExhaustedError, pool: str) -> list[bytes]:
    retry_after = retry_after_s(denied)
    body = denied_body(denied, retry_after, pool)
    status = HTTPStatus(denied_status(denied))
    start_response(
        f"{status.value} {status.phrase}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Retry-After", str(retry_after)),
        ],
    )
    return [body]
