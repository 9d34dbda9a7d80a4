"""The admin HTTP port: ``/metrics``, ``/api/load-status``, health, and whatever ``extra_routes`` adds.

It runs in the service's event loop (aiohttp), so handlers read the decision
state directly, with no locks. It serves HTTPS when given an ``ssl.SSLContext``
(the service's ``[tls]`` certificate). Every path, known or not, needs the admin
token, ``/metrics`` and ``/api/load-status`` included: load status shows every
pool and server, and Prometheus sends a bearer token (``authorization`` in its
scrape config) as easily as none:

* ``Authorization: Bearer <token>``, or ``Authorization: Basic`` with the token
  as the password (any user name), so a browser can open a dashboard page with
  its own login prompt and no token in the URL;
* no usable credentials: 401 with ``WWW-Authenticate`` challenges for both;
* credentials with the wrong token: 403.

Two paths are open without a token, for orchestrators' probes: ``/healthz``
(liveness: 200 while the event loop answers) and ``/readyz`` (readiness: 200 or
503 with each dependency's state, see ``loadwarden.server.app._readiness``).
They tell nothing about pools or servers.

Tokens are compared in constant time and never appear in a response, a log
line or the access log (which records the path without its query string).
Errors are JSON: ``{"error": "<reason>", "message": "<text>"}``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .net import is_loopback

log = logging.getLogger("loadwarden.observability")

REALM = "loadwarden-admin"
METRICS_PATH = "/metrics"
LOAD_STATUS_PATH = "/api/load-status"
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
OPEN_PATHS = frozenset({LIVENESS_PATH, READINESS_PATH})
# How long stopping waits for requests in progress, seconds.
SHUTDOWN_TIMEOUT_S = 2.0

_CHALLENGES = (f'Bearer realm="{REALM}"', f'Basic realm="{REALM}", charset="UTF-8"')
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error body every admin endpoint answers with."""
    return web.json_response(
        {"error": error, "message": message}, status=status, headers={**_NO_STORE, **(headers or {})}
    )


def build_admin_app(
    *,
    token: str,
    snapshot_json: Callable[[], dict[str, Any]],
    extra_routes: Callable[[web.Application], None] | None = None,
    render_metrics: Callable[[str], tuple[bytes, str]] | None = None,
    readiness: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
) -> web.Application:
    """The admin application; serve it with ``start_admin_http``.

    Args:
        token: The admin token every request must present; non-empty.
        snapshot_json: The LoadStatus snapshot as a JSON-ready dict (field names as in the
            proto), called on the event loop for each ``/api/load-status``.
        extra_routes: Adds more routes (the dashboard); they sit behind the same token check.
        render_metrics: Given the request's Accept header, the metrics body and its content
            type (``MetricsSetup.render``); None answers ``/metrics`` with 404.
        readiness: Whether the service is ready and the ``/readyz`` document; None
            answers ``/readyz`` as ready with no checks.

    Raises:
        ValueError: an empty token.
    """
    if not token:
        raise ValueError("token: must not be empty")
    expected = token.encode("utf-8")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        presented = _presented_token(request.headers.get("Authorization", ""))
        if presented is None:
            response = error_response(401, "unauthenticated", "send the admin token as 'Authorization: Bearer <token>'")
            for challenge in _CHALLENGES:
                response.headers.add("WWW-Authenticate", challenge)
            return response
        if not hmac.compare_digest(presented, expected):
            return error_response(403, "permission_denied", "the admin token is not valid")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error_response(404, "not_found", f"no admin endpoint at {request.path}")
        except web.HTTPMethodNotAllowed as exc:
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}",
                {"Allow": ", ".join(sorted(exc.allowed_methods))},
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and the like are answers, not errors
            return error_response(exc.status, "http_error", exc.reason)
        except Exception:
            log.exception("admin endpoint %s failed", request.path)
            return error_response(500, "internal", "internal error; see the service logs")

    async def metrics(request: web.Request) -> web.Response:
        if render_metrics is None:
            return error_response(404, "not_found", "metrics are not configured")
        body, content_type = render_metrics(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={**_NO_STORE, "Content-Type": content_type})

    async def load_status(request: web.Request) -> web.Response:
        return web.json_response(snapshot_json(), headers=_NO_STORE)

    async def liveness(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers=_NO_STORE)

    async def ready(request: web.Request) -> web.Response:
        is_ready, document = readiness() if readiness is not None else (True, {"status": "ready", "checks": {}})
        return web.json_response(document, status=200 if is_ready else 503, headers=_NO_STORE)

    app = web.Application(middlewares=[guard])
    app.router.add_get(METRICS_PATH, metrics)
    app.router.add_get(LOAD_STATUS_PATH, load_status)
    app.router.add_get(LIVENESS_PATH, liveness)
    app.router.add_get(READINESS_PATH, ready)
    if extra_routes is not None:
        extra_routes(app)
    return app


def _presented_token(header: str) -> bytes | None:
    """The token in an Authorization header value; None when there is none to check."""
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() == "bearer":
        return credentials.encode("utf-8")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return None
        _user, sep, password = decoded.partition(b":")
        return password if sep else None
    return None


class AdminHttp:
    """A running admin HTTP server.

    Attributes:
        host: The bound host, without IPv6 brackets.
        port: The bound port (useful with port 0).
        tls: Whether it serves HTTPS.
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int, tls: bool = False) -> None:
        self._runner = runner
        self.host = host
        self.port = port
        self.tls = tls

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` with TLS) for clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def stop(self) -> None:
        """Stops listening; requests in progress get ``SHUTDOWN_TIMEOUT_S`` to finish."""
        await self._runner.cleanup()


class _AccessLogger(AbstractAccessLogger):
    # The path only: a query string could carry anything, including a token a client put there.
    def log(self, request: Any, response: Any, time: float) -> None:
        self.logger.debug("%s %s %d %.1f ms", request.method, request.path, response.status, time * 1000.0)


async def start_admin_http(
    app: web.Application, listen: str, *, ssl_context: ssl.SSLContext | None = None
) -> AdminHttp:
    """Serves ``app`` on ``listen`` (``host:port``, IPv6 in brackets; port 0 picks one) in the running loop.

    Args:
        app: From ``build_admin_app``.
        listen: The address.
        ssl_context: A server context to serve HTTPS with; None serves plain HTTP.

    A non-loopback address without TLS is served with a warning: the token and the
    load data would cross the network in plaintext.

    Raises:
        OSError: the address cannot be bound.
    """
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit():
        raise OSError(f"cannot listen on {listen}: expected host:port")
    bind_host = host.strip("[]")
    if not is_loopback(bind_host) and ssl_context is None:
        log.warning(
            "admin HTTP listens on %s, not a loopback address, without TLS: the admin token and "
            "load data cross the network in plaintext; set tls.cert_file and tls.key_file",
            listen,
        )
    runner = web.AppRunner(
        app, access_log_class=_AccessLogger, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, bind_host, int(port_text), ssl_context=ssl_context).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    log.info("admin HTTP serving %s on %s:%d", "HTTPS" if ssl_context else "HTTP", host, port)
    return AdminHttp(runner, bind_host, port, tls=ssl_context is not None)
