"""The ``/admin/load`` live dashboard and its ``/api/history`` endpoint, on the admin HTTP app.

How the page gets the admin token: a browser opening a URL cannot set an
``Authorization`` header, so a request for ``/admin/load`` without one is
answered 401 with the page *shell* as the body of the refusal (a Bearer-only
challenge, which browsers do not prompt for, so they render it: the shell is
the sign-in form). It is one static file (HTML, CSS and JS inline; no external URL, no
data, nothing that depends on the request). Its script takes the token from the
URL fragment (``/admin/load#token=...``: a fragment never reaches the server,
its access log or a proxy, and the script removes it from the address bar and
the tab's history at once) or from a form, keeps it in ``sessionStorage`` (this
tab only, gone when the tab closes), and sends it as ``Authorization: Bearer`` on
every data request. Every data endpoint stays behind the admin app's token check:
without the token they answer 401, with a wrong one 403, and the page then drops
the token and shows "unauthorised" with the form. The page's requests omit
browser credentials, so the admin app's Basic challenge never pops up the
browser's own login dialog over the form.

The shell is the one body served without the token, always with status 401. A
middleware placed in front of the admin app's guard answers exactly ``GET``/``HEAD``
``/admin/load`` (and ``/admin/load/``) without an ``Authorization`` header that way;
a request with credentials meets the guard (wrong token 403, right token 200 with
the same page), as does any other path, including unknown ones.

The page is locked down by a Content-Security-Policy allowing only its own inline
script and style (by hash), requests to its own origin, and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from ._admin_http import _NO_STORE, REALM, error_response
from ._history import DEFAULT_QUERY_POINTS, History

DASHBOARD_PATH = "/admin/load"
HISTORY_PATH = "/api/history"
RECOMMENDATIONS_PATH = "/api/recommendations"
MAX_RECOMMENDATION_POOLS = 1_000  # pool parameters one /api/recommendations may carry
DEFAULT_HISTORY_WINDOW_S = 900.0  # /api/history without `since`: this long before `until`, seconds
MAX_POOL_PARAM_LEN = 128  # pool names are 1-128 characters

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (pools, horizon_s, with operations) -> GetRecommendations as JSON.
Recommendations = Callable[[list[str], float, bool], Mapping[str, Any]]


def _load_page() -> tuple[bytes, str]:
    """The page bytes and the Content-Security-Policy pinning its inline script and style."""
    text = resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")
    hashes = {}
    for tag in ("script", "style"):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S)
        hashes[tag] = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode("utf-8")).digest()).decode() + "'" for b in blocks
        )
    csp = (
        "default-src 'none'; "
        f"script-src {hashes['script']}; style-src {hashes['style']}; "
        "connect-src 'self'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return text.encode("utf-8"), csp


def add_dashboard_routes(
    app: web.Application,
    *,
    history: History | None,
    clock: Callable[[], float] = time.time,
    recommendations: Recommendations | None = None,
) -> None:
    """Adds ``GET /admin/load`` (the page), ``GET /api/history`` and ``GET /api/recommendations``
    to the admin app.

    Meant as ``build_admin_app``'s ``extra_routes``, e.g.
    ``extra_routes=functools.partial(add_dashboard_routes, history=history)``. The page
    reads the admin app's own ``/api/load-status``.

    Args:
        app: The admin application, before it starts.
        history: Where ``/api/history`` reads; None answers it with 404 (the page
            then shows no charts).
        clock: Wall clock, seconds since the epoch: the default ``until``.
        recommendations: Answers ``/api/recommendations?pool=a&pool=b&horizon_s=N&operations=1``
            (GetRecommendations as JSON; a ValueError is the caller's mistake, a LookupError an
            unknown pool); None answers it with 404 (capacity planning is off).
    """
    body, csp = _load_page()
    headers = {
        **_NO_STORE,
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    refusal_headers = {**headers, "WWW-Authenticate": f'Bearer realm="{REALM}"'}

    @web.middleware
    async def public_shell(request: web.Request, handler: Handler) -> web.StreamResponse:
        # No credentials: the static, data-free shell as the 401's body (no Basic challenge, so a
        # browser renders it instead of prompting). Everything else goes on to the token check.
        if (
            request.method in ("GET", "HEAD")
            and request.path in (DASHBOARD_PATH, DASHBOARD_PATH + "/")
            and "Authorization" not in request.headers
        ):
            return web.Response(status=401, body=body, headers=refusal_headers)
        return await handler(request)

    async def history_handler(request: web.Request) -> web.Response:
        if history is None:
            return error_response(404, "not_found", "load history is off on this service")
        try:
            until = _seconds(request.query, "until")
            until = clock() if until is None else until
            since = _seconds(request.query, "since")
            since = max(0.0, until - DEFAULT_HISTORY_WINDOW_S) if since is None else since
            limit = _int(request.query, "limit", DEFAULT_QUERY_POINTS)
            pool = request.query.get("pool") or None
            if pool is not None and len(pool) > MAX_POOL_PARAM_LEN:
                raise ValueError(f"pool must be at most {MAX_POOL_PARAM_LEN} characters")
            answer = await asyncio.to_thread(history.query, since, until, pool=pool, limit=limit)
        except ValueError as exc:
            return error_response(400, "invalid_argument", str(exc))
        return web.json_response(answer, headers=_NO_STORE)

    async def recommendations_handler(request: web.Request) -> web.Response:
        if recommendations is None:
            return error_response(404, "not_found", "capacity planning is off on this service")
        try:
            pools = request.query.getall("pool", [])
            if len(pools) > MAX_RECOMMENDATION_POOLS:
                raise ValueError(f"at most {MAX_RECOMMENDATION_POOLS} pool parameters, got {len(pools)}")
            if any(len(pool) > MAX_POOL_PARAM_LEN for pool in pools):
                raise ValueError(f"pool must be at most {MAX_POOL_PARAM_LEN} characters")
            horizon = _seconds(request.query, "horizon_s", "a number of seconds, e.g. 900")
            operations = request.query.get("operations", "") in ("1", "true")
            answer = recommendations(pools, horizon or 0.0, operations)
        except LookupError as exc:
            return error_response(404, "not_found", str(exc.args[0] if exc.args else exc))
        except ValueError as exc:
            return error_response(400, "invalid_argument", str(exc))
        return web.json_response(answer, headers=_NO_STORE)

    app.middlewares.insert(0, public_shell)
    app.router.add_get(DASHBOARD_PATH, page)
    app.router.add_get(HISTORY_PATH, history_handler)
    app.router.add_get(RECOMMENDATIONS_PATH, recommendations_handler)


def _seconds(
    query: Mapping[str, str], name: str, what: str = "seconds since the epoch, e.g. 1767225600.5"
) -> float | None:
    """The query parameter as seconds; None when absent or empty."""
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {text[:40]!r}")
    return value


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text[:40]!r}") from None
