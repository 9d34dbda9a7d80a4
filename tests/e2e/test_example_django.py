"""Seed 000's Django project (``examples/seed000_django``) runs as documented against a real
``loadwarden serve`` and says what it claims; served with ``--serve``, its staff user
reaches ``/admin/load/`` and its pool is on the service as LOAD_MANAGER_MAX_CONNECTIONS sized it."""

from __future__ import annotations

import json
import re
import signal
import sys

import httpx
import pytest

from loadwarden.sdk import Client

from ._harness import Processes, free_loopback_port
from .test_examples import EXAMPLE_TIMEOUT_S, EXAMPLES, number, run_example

pytestmark = pytest.mark.e2e

DEMO = "seed000_django/demo.py"
POOL = "medibot-web"
LOGIN_REDIRECT = "302 -> /accounts/login/?next=/admin/load/"


def line(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return match


def test_the_seed000_django_demo_turns_away_the_overflow_and_keeps_the_dashboard_for_staff(
    processes: Processes,
) -> None:
    out = run_example(processes, DEMO)  # the README's command: the seed's 100 connections, 120 requests

    # The middleware made the pool at start-up, sized by LOAD_MANAGER_MAX_CONNECTIONS.
    line(rf"^pool '{POOL}' on the service before the app starts: missing$", out)
    line(rf"^middleware log: loadwarden: created pool '{POOL}' at \S+ with max_concurrency 100 ", out)
    assert number(rf"^pool '{POOL}' on the service after start-up: concurrency limit (\d+)$", out) == 100

    # The burst over real HTTP: exactly the capacity admitted, the rest told when to come back.
    assert number(r"^admitted: (\d+) \(200\)$", out) == 100
    turned_away = line(r"^turned away: (\d+) \(503((?:, Retry-After \d+ s x\d+)+)\) (.*)$", out)
    assert int(turned_away.group(1)) == 20
    retry_afters = [(int(s), int(n)) for s, n in re.findall(r"Retry-After (\d+) s x(\d+)", turned_away.group(2))]
    assert all(seconds >= 1 for seconds, _ in retry_afters) and sum(n for _, n in retry_afters) == 20
    assert '"error": "overloaded"' in turned_away.group(3) and f'"pool": "{POOL}"' in turned_away.group(3)
    assert number(r"^most requests in the view at once: (\d+) \(LOAD_MANAGER_MAX_CONNECTIONS 100\)$", out) == 100
    assert number(r"^active leases after: (\d+)$", out) == 0

    # The dashboard and its data for staff only; everyone else is sent to sign in, or refused.
    for who in ("anonymous", "medibot-user \\(not staff\\)"):
        line(rf"^{who}: /admin/load/ {re.escape(LOGIN_REDIRECT)} \| /api/load-status/ 403 permission_denied$", out)
    staff = line(r"^medibot-staff \(staff\): /admin/load/ 200 text/html '.+' \| /api/load-status/ 200 JSON: (.*)$", out)
    assert f"{POOL} concurrency_limit 100, active_leases 0" in staff.group(1)

    health = json.loads(line(r"^health: /api/health/ 200 (\{.*\})$", out).group(1))
    assert health["status"] == "ready"
    assert health["checks"]["control_plane"]["state"] == "ok"
    assert health["checks"]["database"] == {"state": "ok", "critical": True, "detail": "connected"}


def sign_in(http: httpx.Client, username: str, password: str) -> None:
    page = http.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token is not None, page.text
    form = {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
    answer = http.post("/accounts/login/", data=form)
    assert answer.status_code == 302 and answer.headers["location"] == "/admin/load/", answer.text


def test_the_seed000_django_project_serves_the_dashboard_to_the_printed_staff_user(processes: Processes) -> None:
    service = processes.serve(None)
    port = free_loopback_port()
    app = processes.spawn(
        [sys.executable, EXAMPLES / DEMO, "--target", service.target, "--serve", str(port), "--max-connections", "7"]
    )
    assert app.stdout.wait_for(re.compile(r"^serving on ", re.MULTILINE), EXAMPLE_TIMEOUT_S), app.describe()
    staff = line(r"^staff user: (medibot-staff) / (\S+) \(made for this run only\)$", app.stdout.text)
    plain = line(r"^user who is not staff: (medibot-user) / (\S+)$", app.stdout.text)

    with Client(service.target, timeout_s=5.0) as client:  # the pool is on the service, not only printed
        assert client.load_status(POOL).pools[0].concurrency_limit == 7

    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10.0) as http:  # waitress listens before the line is printed
        assert http.get("/admin/load/").headers["location"] == "/accounts/login/?next=/admin/load/"
        assert http.get("/api/health/").json()["status"] == "ready"
        assert http.get("/chat/", params={"q": "hi", "ms": "0"}).json()["reply"] == "MediBot heard 'hi'"
    with httpx.Client(base_url=base, timeout=10.0) as http:
        sign_in(http, plain.group(1), plain.group(2))
        assert http.get("/api/load-status/").status_code == 403
        assert http.get("/admin/load/").status_code == 302
    with httpx.Client(base_url=base, timeout=10.0) as http:
        sign_in(http, staff.group(1), staff.group(2))
        page = http.get("/admin/load/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        pools = {pool["name"]: pool for pool in http.get("/api/load-status/").json()["pools"]}
        assert pools[POOL]["concurrency_limit"] == 7

    app.signal(signal.SIGTERM)
    assert app.wait(EXAMPLE_TIMEOUT_S) == 0, app.describe()
    assert app.stdout.text.rstrip().endswith("stopped"), app.describe()
    assert "Traceback" not in app.stderr.text, app.describe()
