"""Seed 000's MediBot as a minimal Django project behind loadwarden's middleware.

The project in ``medibot/`` is the seed's: ``settings.py`` with its
``LOAD_MANAGER_MAX_CONNECTIONS``, ``LOAD_MANAGER_ENABLED`` and ``LOAD_MANAGER_TIMEOUT``
and loadwarden's ``AdmissionMiddleware``; ``urls.py`` including
``loadwarden.sdk.integrations.django.urls`` before ``admin/`` (the dashboard at
``/admin/load/`` and its data at ``/api/load-status/``, both for staff, and
``/api/health/``); one view, ``/chat/``, that works a while like the seed's AI call.

Run it against a local service (``./scripts/serve`` in another terminal):

    python examples/seed000_django/demo.py [--target 127.0.0.1:50051] [--max-connections 100] [--requests 120]
    python examples/seed000_django/demo.py --serve 8000   # then open http://127.0.0.1:8000/admin/load/

It migrates a sqlite database in a temporary folder, makes a staff user and a user
who is not staff, and serves the app with waitress on 127.0.0.1. Starting, the
middleware creates the pool ``medibot-web`` on the service, sized by
LOAD_MANAGER_MAX_CONNECTIONS (the demo first deletes one an earlier run left, to
show that). The same pool in a service config file would be::

    [pools.medibot-web]
    max_concurrency = 100  # LOAD_MANAGER_MAX_CONNECTIONS
    max_wait_ms = 1000     # LOAD_MANAGER_TIMEOUT

Then, over HTTP, it sends ``--requests`` requests at once to ``/chat/``, each
working LOAD_MANAGER_TIMEOUT + 1 s so no slot frees while the rest wait, and prints
how many were admitted and how many were turned away with 503 and ``Retry-After``;
fetches ``/admin/load/`` and ``/api/load-status/`` anonymously, as the user who is
not staff and as the staff user (each signed in through ``/accounts/login/``); and
fetches ``/api/health/``. The seed's 30 s timeout would keep the turned-away requests
waiting 30 s for their 503, so ``--timeout`` is 1 s by default (settings.py keeps 30
for the app run any other way).

With ``--serve PORT`` it prints the staff user's name and password (made for this
run only: the database goes with the process) and serves until Ctrl-C. Needs
django and waitress: the dev extra has them.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import FrameType
from typing import Any

import django  # type: ignore[import-untyped]  # Django ships no type hints
import waitress  # type: ignore[import-untyped]  # waitress ships no type hints

from loadwarden.sdk import Client, LoadwardenError, NotFoundError

PROJECT = Path(__file__).resolve().parent  # holds the `medibot` package
POOL = "medibot-web"  # medibot/settings.py's LOADWARDEN_POOL
STAFF_USER = "medibot-staff"
PLAIN_USER = "medibot-user"
HOST = "127.0.0.1"
HTTP_TIMEOUT_S = 30.0  # bound of one HTTP request of the demo, seconds
SETTLE_S = 5.0  # bound of the wait for the burst's slots to be released, seconds
MIDDLEWARE_LOG = "loadwarden.sdk.integrations.django"


@dataclass(frozen=True)
class Answer:
    """One HTTP response, whatever its status."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a redirect is an answer to show
        return None


class Visitor:
    """One visitor of the app: its own cookies (session, CSRF); redirects are not followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _KeepRedirects()
        )

    def get(self, path: str) -> Answer:
        return self._send(urllib.request.Request(self.base + path))

    def post(self, path: str, form: Mapping[str, str]) -> Answer:
        data = urllib.parse.urlencode(form).encode()
        return self._send(urllib.request.Request(self.base + path, data=data, method="POST"))

    def sign_in(self, username: str, password: str) -> None:
        """Signs in through the app's login form, as a browser does (its CSRF token included)."""
        page = self.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body.decode())
        if page.status != 200 or token is None:
            raise SystemExit(f"the login page answered {page.status} without a CSRF token")
        form = {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
        answer = self.post("/accounts/login/", form)
        if answer.status != 302:  # the form again: refused
            raise SystemExit(f"signing in as {username} failed: {answer.status}")

    def _send(self, request: urllib.request.Request) -> Answer:
        try:
            with self._opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as answer:  # 3xx (not followed), 4xx and 5xx
            with answer:
                return Answer(answer.code, answer.headers, answer.read())


def start_django(db_path: Path, target: str, max_connections: int, timeout_s: float) -> None:
    """Points the project's settings at the demo's database and service, sets Django up, migrates."""
    sys.path.insert(0, str(PROJECT))  # `medibot` importable however the script was started
    os.environ["DJANGO_SETTINGS_MODULE"] = "medibot.settings"
    os.environ["SEED000_DJANGO_DB"] = str(db_path)
    os.environ["LOADWARDEN_TARGET"] = target
    os.environ["LOAD_MANAGER_MAX_CONNECTIONS"] = str(max_connections)
    os.environ["LOAD_MANAGER_TIMEOUT"] = str(timeout_s)
    django.setup()
    from django.core.management import call_command  # type: ignore[import-untyped]  # Django ships no type hints

    call_command("migrate", verbosity=0)


def make_users() -> dict[str, str]:
    """The staff user and the user who is not staff, with fresh passwords: name -> password."""
    from django.contrib.auth import get_user_model  # type: ignore[import-untyped]  # Django ships no type hints

    users = get_user_model().objects
    passwords = {STAFF_USER: secrets.token_urlsafe(12), PLAIN_USER: secrets.token_urlsafe(12)}
    users.create_user(STAFF_USER, password=passwords[STAFF_USER], is_staff=True)
    users.create_user(PLAIN_USER, password=passwords[PLAIN_USER])
    return passwords


def forget_pool(client: Client) -> None:
    """Deletes the pool an earlier run left, so the middleware's start-up has it to make."""
    try:
        client.load_status(POOL)
    except NotFoundError:
        return
    client.admin.delete_pool(POOL)
    print(f"deleted pool {POOL!r}, left on the service by an earlier run")


def show_middleware_log() -> None:
    """The middleware's log lines (it says when it creates the pool) on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("middleware log: %(message)s"))
    log = logging.getLogger(MIDDLEWARE_LOG)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def burst(base: str, requests: int, work_ms: int) -> list[Answer]:
    """`requests` anonymous requests to /chat/, all sent at once."""
    start = threading.Barrier(requests)

    def one(n: int) -> Answer:
        start.wait(HTTP_TIMEOUT_S)
        return Visitor(base).get(f"/chat/?q=request+{n}&ms={work_ms}")

    with ThreadPoolExecutor(max_workers=requests) as threads:
        return list(threads.map(one, range(requests)))


def show_burst(answers: list[Answer], max_connections: int) -> None:
    admitted = [a for a in answers if a.status == 200]
    denied = [a for a in answers if a.status == 503]
    others = Counter(a.status for a in answers if a.status not in (200, 503))
    print(f"admitted: {len(admitted)} (200)")
    retry_after = Counter(a.headers.get("Retry-After", "none") for a in denied)
    bodies = Counter(json.dumps(a.json()) for a in denied)
    print(
        f"turned away: {len(denied)} (503"
        + "".join(f", Retry-After {s} s x{n}" for s, n in sorted(retry_after.items()))
        + ")"
        + "".join(f" {body} x{n}" for body, n in bodies.items())
    )
    if others:
        print("other answers: " + ", ".join(f"{status} x{n}" for status, n in sorted(others.items())))
    most = max((a.json()["working"] for a in admitted), default=0)
    print(f"most requests in the view at once: {most} (LOAD_MANAGER_MAX_CONNECTIONS {max_connections})")


def wait_released(client: Client) -> int:
    """The pool's active leases once they are 0, or after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        active = client.load_status(POOL).pools[0].active_leases
        if active == 0 or time.monotonic() >= deadline:
            return active
        time.sleep(0.02)


def describe(answer: Answer) -> str:
    """A short line for an answer of the integration's views."""
    kind = answer.headers.get_content_type()
    if answer.status in (301, 302):
        return f"{answer.status} -> {answer.location}"
    if kind == "application/json":
        document = answer.json()
        if answer.status != 200:
            return f"{answer.status} {document.get('error')}"
        pools = {pool["name"]: pool for pool in document.get("pools", [])}
        mine = pools.get(POOL, {})
        return (
            f"200 JSON: {len(pools)} pool(s); {POOL} concurrency_limit {mine.get('concurrency_limit', 0)}, "
            f"active_leases {mine.get('active_leases', 0)}"
        )
    title = re.search(rb"<title>([^<]*)</title>", answer.body)
    return f"{answer.status} {kind}" + (f" {title.group(1).decode()!r}" if title else "")


def show_access(base: str, passwords: Mapping[str, str]) -> None:
    visitors = {"anonymous": Visitor(base)}
    for name, label in ((PLAIN_USER, "not staff"), (STAFF_USER, "staff")):
        visitor = visitors[f"{name} ({label})"] = Visitor(base)
        visitor.sign_in(name, passwords[name])
    for who, visitor in visitors.items():
        dashboard, status = visitor.get("/admin/load/"), visitor.get("/api/load-status/")
        print(f"{who}: /admin/load/ {describe(dashboard)} | /api/load-status/ {describe(status)}")


def serve(server: Any) -> None:
    """Serves until Ctrl-C or SIGTERM (waitress's loop returns on KeyboardInterrupt)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    server.run()
    print("stopped")


def stop_server(server: Any) -> None:
    """Lets waitress's worker threads finish the request in hand, then closes its socket
    (closing first would pull the wake-up trigger of a finishing request out from under it)."""
    server.task_dispatcher.shutdown()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="loadwarden service address")
    parser.add_argument("--max-connections", type=int, default=100, help="LOAD_MANAGER_MAX_CONNECTIONS, count")
    parser.add_argument("--timeout", type=float, default=1.0, help="LOAD_MANAGER_TIMEOUT, seconds")
    parser.add_argument("--requests", type=int, default=120, help="requests in the burst, count")
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve the app on 127.0.0.1:PORT until Ctrl-C")
    args = parser.parse_args()
    if args.max_connections < 1 or args.requests < 1 or args.timeout < 0:
        parser.error("--max-connections and --requests must be at least 1, --timeout at least 0")

    with tempfile.TemporaryDirectory(prefix="seed000-django-") as folder, Client(args.target, timeout_s=5.0) as client:
        try:
            forget_pool(client)
        except LoadwardenError as err:
            raise SystemExit(f"cannot use the service at {args.target}: {err}") from None
        print(f"pool {POOL!r} on the service before the app starts: missing")
        start_django(Path(folder) / "db.sqlite3", args.target, args.max_connections, args.timeout)
        passwords = make_users()
        show_middleware_log()
        from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]  # Django ships no type hints

        app = get_wsgi_application()  # loads the middleware, which makes the pool
        limit = client.load_status(POOL).pools[0].concurrency_limit
        print(f"pool {POOL!r} on the service after start-up: concurrency limit {limit}")

        threads = max(8, args.requests + 8) if args.serve is None else 16
        server = waitress.create_server(
            app, host=HOST, port=args.serve or 0, threads=threads, connection_limit=threads + 16
        )
        base = f"http://{HOST}:{server.effective_port}"
        print(f"app: Django {django.get_version()} under waitress at {base}/ (sqlite in a temporary folder, migrated)")
        if args.serve is not None:
            print(f"staff user: {STAFF_USER} / {passwords[STAFF_USER]} (made for this run only)")
            print(f"user who is not staff: {PLAIN_USER} / {passwords[PLAIN_USER]}")
            print(f"open {base}/admin/load/ (sign in at {base}/accounts/login/), {base}/api/health/, {base}/chat/")
            print(f"serving on {base}/ (Ctrl-C stops)", flush=True)
            try:
                serve(server)
            finally:
                stop_server(server)
            return

        runner = threading.Thread(target=server.run, daemon=True)
        runner.start()
        try:
            work_ms = round(args.timeout * 1000) + 1000
            print(
                f"burst: {args.requests} requests at once to /chat/, each working {work_ms} ms "
                f"(LOAD_MANAGER_MAX_CONNECTIONS {args.max_connections}, LOAD_MANAGER_TIMEOUT {args.timeout:g} s)"
            )
            show_burst(burst(base, args.requests, work_ms), args.max_connections)
            print(f"active leases after: {wait_released(client)}")
            show_access(base, passwords)
            health = Visitor(base).get("/api/health/")
            print(f"health: /api/health/ {health.status} {health.body.decode()}")
        finally:
            stop_server(server)
            runner.join(HTTP_TIMEOUT_S)


if __name__ == "__main__":
    main()
