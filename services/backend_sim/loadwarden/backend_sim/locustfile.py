"""A Locust driver for HTTP scenarios: requests to one path of ``--host``, every one logged.

What ``loadwarden evaluate`` does over gRPC for simulated backends, this does over
HTTP for anything with a URL: seed 002's reverse proxy in front of its backends, or
an application behind the SDK's middleware. Each simulated user sends
``--lw-method`` requests to ``--lw-path`` at ``--lw-rate`` per second (Poisson
arrivals, as the scenarios' open-loop traffic, or evenly paced), each with a fresh
``X-Request-ID``; Locust's own statistics (``--csv``, ``--html``) cover them, and
``--lw-log`` writes one CSV row per request: ``request_id, timestamp_s, method,
path, status, latency_ms, success, server`` (``server`` from the response's
``--lw-server-header``, the seed 002 proxy's ``X-Backend``; ``status`` 0 when no
answer came). A request fails on a connection error, a timeout or a status of 400
or more.

From a checkout (``locust`` comes with the ``eval`` extra)::

    locust -f services/backend_sim/loadwarden/backend_sim/locustfile.py --headless \\
        -u 10 -r 10 -t 60s --host http://127.0.0.1:8080 \\
        --lw-path /api/work --lw-rate 5 --lw-log out/requests.csv --csv out/locust

Installed, the file sits beside the package:
``locust -f "$(python -c 'import loadwarden.backend_sim.locustfile as m; print(m.__file__)')" ...``
(importing it needs Locust, which is what runs it). Every ``--lw-*`` option may
come from its environment variable instead (``LW_PATH``, ``LW_RATE``, ...), or
from a Locust config file. With ``--processes`` or distributed workers, each
worker writes its own log, ``--lw-log`` with ``.<worker index>`` appended.
"""

from __future__ import annotations

import csv
import itertools
import os
import threading
import time
import uuid
from typing import IO, Any

from locust import HttpUser, constant_throughput, events, poisson, task
from locust.runners import MasterRunner, WorkerRunner

LOG_COLUMNS = ("request_id", "timestamp_s", "method", "path", "status", "latency_ms", "success", "server")
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")
ARRIVALS = ("poisson", "constant")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("loadwarden", "the HTTP requests every user sends (locustfile.py)")
    group.add_argument("--lw-path", env_var="LW_PATH", default="/", help="path (and query) to request, default /")
    group.add_argument("--lw-method", env_var="LW_METHOD", default="GET", choices=METHODS, help="HTTP method")
    group.add_argument(
        "--lw-rate",
        env_var="LW_RATE",
        type=float,
        default=1.0,
        help="requests per second per user (all users: -u times this); 0: each user sends its next "
        "request as soon as the last is answered",
    )
    group.add_argument(
        "--lw-arrivals",
        env_var="LW_ARRIVALS",
        default="poisson",
        choices=ARRIVALS,
        help="poisson: exponential gaps of mean 1/rate after each answer (the rate is lower by the "
        "answers' time); constant: one request every 1/rate s, or at once when the last took longer",
    )
    group.add_argument("--lw-timeout-s", env_var="LW_TIMEOUT_S", type=float, default=30.0, help="per request, s")
    group.add_argument(
        "--lw-server-header",
        env_var="LW_SERVER_HEADER",
        default="X-Backend",
        help="response header naming the backend that served the request (logged as server)",
    )
    group.add_argument("--lw-log", env_var="LW_LOG", default="", help="CSV file of every request (none: no log)")


class RequestLog:
    """The ``--lw-log`` CSV file: one row per request, written as each request ends.

    Args:
        path: The file (replaced).
    """

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed at test stop
        self._writer = csv.writer(self._file)
        self._writer.writerow(LOG_COLUMNS)
        self._lock = threading.Lock()

    def write(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._writer.writerow(row)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _State:
    """The test's log and start (wall clock, s): Locust's events are module-level hooks."""

    log: RequestLog | None = None
    start = time.time()


def _worker_path(environment: Any, path: str) -> str:
    runner = environment.runner
    return f"{path}.{runner.worker_index}" if isinstance(runner, WorkerRunner) else path


@events.test_start.add_listener
def _open_log(environment: Any, **_: Any) -> None:
    _State.start = time.time()
    path = environment.parsed_options.lw_log
    if path and not isinstance(environment.runner, MasterRunner):  # the master runs no users
        _State.log = RequestLog(_worker_path(environment, path))


@events.test_stop.add_listener
def _close_log(environment: Any, **_: Any) -> None:
    del environment
    log, _State.log = _State.log, None
    if log is not None:
        log.close()


@events.request.add_listener
def _log_request(
    request_type: str,
    name: str,
    response_time: float,
    response: Any,
    context: dict[str, Any],
    exception: BaseException | None,
    start_time: float,
    **_: Any,
) -> None:
    log = _State.log
    if log is None or "request_id" not in context:
        return
    status = getattr(response, "status_code", 0) or 0
    headers = getattr(response, "headers", None) or {}
    server = headers.get(context["server_header"], "") if status else ""
    log.write(
        (
            context["request_id"],
            f"{max(0.0, start_time - _State.start):.6f}",  # Locust's start_time is wall clock, s
            request_type,
            name,
            status,
            f"{response_time:.3f}",
            int(exception is None),
            server,
        )
    )


class LoadwardenHttpUser(HttpUser):
    """One simulated user: ``--lw-method`` requests to ``--lw-path``, paced by ``--lw-rate``."""

    _ids = itertools.count(1)
    _run = uuid.uuid4().hex[:8]  # request ids are unique across runs, and across workers by the pid

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        rate = float(options.lw_rate)
        if rate <= 0:
            return 0.0
        pace = poisson(rate) if options.lw_arrivals == "poisson" else constant_throughput(rate)
        return pace(self)  # constant_throughput keeps its state on the user: a fresh closure will do

    @task
    def request(self) -> None:
        options = self.environment.parsed_options
        request_id = f"{self._run}-{os.getpid()}-{next(self._ids)}"
        self.client.request(
            options.lw_method,
            options.lw_path,
            headers={"X-Request-ID": request_id},
            timeout=float(options.lw_timeout_s),
            context={"request_id": request_id, "server_header": options.lw_server_header},
        )
