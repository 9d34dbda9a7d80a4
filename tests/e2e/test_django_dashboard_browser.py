"""Seed 000's /admin/load/ in a real headless Chromium: the service's dashboard page served
by the Django integration under waitress, signed in with a staff session, fed by the app's
/api/load-status/ from a real in-process Decision service."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import waitress  # type: ignore[import-untyped]  # waitress ships no type hints; types-waitress is not installed

from loadwarden.server import RunningService

from ..conftest import three_server_pool
from ..integration import test_django_middleware as site  # configures Django: auth, sessions, its URLs
from ._harness import REPO
from .test_dashboard_browser import chromium

pytestmark = pytest.mark.e2e

WAIT_S = 15.0


def staff_session() -> str:
    client = site.signed_in("staff")
    return str(client.cookies["sessionid"].value)


async def test_the_django_dashboard_shows_the_app_s_pools_to_a_staff_session(
    start: Callable[..., Awaitable[RunningService]], tmp_path: Path
) -> None:
    service = await start(three_server_pool("web", max_concurrency=3), three_server_pool("ml", max_concurrency=2))
    from django.core.handlers.wsgi import WSGIHandler  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency

    with site.seed_settings(service.target, MIDDLEWARE=site.SESSION_MIDDLEWARE):
        cookie = await asyncio.to_thread(staff_session)
        handler = await asyncio.to_thread(WSGIHandler)  # loads the middleware, which calls the service
        server = waitress.create_server(handler, host="127.0.0.1", port=0, threads=4)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.effective_port}"
        try:
            async with chromium(tmp_path) as browser:
                tab = await browser.new_tab()
                await tab.send("Network.enable")
                await tab.send("Network.setCookie", {"name": "sessionid", "value": cookie, "url": base})
                await tab.navigate(f"{base}/admin/load/")
                await tab.wait_for(
                    "document.querySelector('tr[data-pool=\"web\"]') && document.querySelector('tr[data-pool=\"ml\"]')",
                    "the pools web and ml",
                )
                await tab.wait_for("/^live/.test(document.getElementById('status').textContent)", "the live status")
                sections = ["history-section", "traffic-section", "signout", "login"]
                hidden = await tab.evaluate(f"{sections}.map(id => document.getElementById(id).hidden)")
                assert hidden == [True, True, True, True]  # nothing the app cannot feed, no token form
                footer = await tab.evaluate("document.getElementById('footer').textContent")
                assert footer == "Data: /api/load-status/ every second."
                capacity = await tab.evaluate("document.querySelector('[data-card=capacity]').innerText")
                assert "0 of 5 slots" in capacity, capacity
                await tab.screenshot(tmp_path / "django-dashboard.png", REPO / "build" / "django-dashboard.png")

                # The session ends: the next poll is refused and the page says so, without a token form.
                await tab.send("Network.deleteCookies", {"name": "sessionid", "url": base})
                reason = await tab.wait_for(
                    "!document.getElementById('login').hidden && document.getElementById('token-fields').hidden"
                    " ? document.getElementById('login-reason').textContent : ''",
                    "the refusal",
                )
                assert reason.startswith("This dashboard is for staff members (HTTP 403)")
                errors = tab.session_events("Runtime.exceptionThrown")
                assert not errors, errors
        finally:
            server.close()
            thread.join(WAIT_S)
