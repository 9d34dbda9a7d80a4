"""``loadwarden backend-sim``: one process serving simulated backends, each on its own port.

Example::

    loadwarden backend-sim --backend id=b1,workers=4,base_ms=100,service=constant \\
        --backend id=b2,speed=2 --service 127.0.0.1:50051 --pool api --register

When every backend listens (and, with ``--register``, is registered in the pool),
it prints one JSON line on stdout, ``{"backends": {"b1": "127.0.0.1:40123", ...},
"pid": 1234}``, and serves until SIGTERM or SIGINT. Time 0 of the backends'
schedules is the moment that line is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from loadwarden.observability import LOG_LEVELS, configure_logging
from loadwarden.sdk import AsyncClient
from loadwarden.v1 import admin_pb2 as _admin
from loadwarden.v1 import admin_pb2_grpc as _admin_grpc
from loadwarden.v1 import common_pb2 as _common

from ._backend import DEFAULT_ITEM_COST, RunningBackend, start_backend
from ._config import SERVICE_DISTRIBUTIONS, SimServer

DEFAULT_POOL = "sim"
DEFAULT_REPORT_INTERVAL_MS = 1000.0
REGISTER_TIMEOUT_S = 10.0
# --backend keys -> SimServer fields.
_BACKEND_KEYS = {
    "id": "id",
    "speed": "speed",
    "workers": "workers",
    "base_ms": "base_ms",
    "service": "service",
    "failure_rate": "failure_probability",
    "weight": "weight",
}
_INT_KEYS = ("workers", "weight")
_FLOAT_KEYS = ("speed", "base_ms", "failure_rate")


class UsageError(ValueError):
    """A bad option; the message names it."""


def parse_backend(text: str, where: str = "--backend") -> SimServer:
    """Parses ``id=b1,speed=1,workers=4,base_ms=100,service=constant,failure_rate=0.01,weight=1``.

    Raises:
        UsageError: ``"<where>.<key>: problem"`` for an unknown, repeated or invalid key.
    """
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"{where}: expected key=value, got {part!r}")
        if key not in _BACKEND_KEYS:
            raise UsageError(f"{where}.{key}: unknown key; valid keys: {', '.join(sorted(_BACKEND_KEYS))}")
        if _BACKEND_KEYS[key] in values:
            raise UsageError(f"{where}.{key}: given twice")
        value = value.strip()
        try:
            if key in _INT_KEYS:
                parsed: Any = int(value)
            elif key in _FLOAT_KEYS:
                parsed = float(value)
            else:
                parsed = value
        except ValueError:
            kind = "an integer" if key in _INT_KEYS else "a number"
            raise UsageError(f"{where}.{key}: must be {kind}, got {value!r}") from None
        values[_BACKEND_KEYS[key]] = parsed
    if "id" not in values:
        raise UsageError(f"{where}.id: is required")
    if values.get("service", "exponential") not in SERVICE_DISTRIBUTIONS:
        raise UsageError(
            f"{where}.service: must be one of {', '.join(SERVICE_DISTRIBUTIONS)}, got {values['service']!r}"
        )
    try:
        return SimServer(**values)
    except ValueError as exc:
        name, _, problem = str(exc).partition(": ")
        name = "failure_rate" if name == "failure_probability" else name
        raise UsageError(f"{where}.{name}: {problem}") from None


def add_command(commands: argparse._SubParsersAction[Any]) -> None:
    """Adds ``backend-sim`` to the ``loadwarden`` command."""
    parser = commands.add_parser(
        "backend-sim",
        help="serve simulated gRPC backends (queueing workers, schedules) that report load",
        description="Serves simulated backends, each on its own port with grpc.health.v1.Health, and prints "
        "one JSON line with their addresses once all listen.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--scenario", metavar="FILE", help="serve every backend of this scenario file (its [evaluate] section applied)"
    )
    source.add_argument(
        "--backend",
        metavar="SPEC",
        action="append",
        help="id=b1,speed=1,workers=4,base_ms=100,service=constant|exponential,failure_rate=0.01,weight=1 (repeatable)",
    )
    parser.add_argument("--only", metavar="ID,ID", help="with --scenario: serve only these backend ids")
    parser.add_argument("--service", metavar="HOST:PORT", help="Decision service to report load to (none: no reports)")
    parser.add_argument("--pool", default=None, help=f"pool the backends belong to (default {DEFAULT_POOL!r})")
    parser.add_argument(
        "--register",
        action="store_true",
        help="register each backend in --pool with AdminService.RegisterServer before serving",
    )
    parser.add_argument("--listen-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the service-time and failure draws (default: the scenario's, else 1)",
    )
    parser.add_argument(
        "--item-cost",
        type=float,
        default=None,
        help=f"extra service time per batch item beyond the first, as a fraction of a request's "
        f"(default: the scenario's [batch] item_cost, else {DEFAULT_ITEM_COST})",
    )
    parser.add_argument(
        "--report-interval-ms",
        type=float,
        default=None,
        help="load report interval, ms (default: the scenario's, else 1000)",
    )
    parser.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"loadwarden backend-sim: {message}", file=sys.stderr)
    return 2


def resolve(args: argparse.Namespace) -> tuple[list[SimServer], dict[str, Any]]:
    """The backends to serve and the run settings, from the options.

    Raises:
        UsageError: naming the option or key.
    """
    settings: dict[str, Any] = {
        "seed": 1,
        "interval_ms": DEFAULT_REPORT_INTERVAL_MS,
        "item_cost": DEFAULT_ITEM_COST,
        "pool": DEFAULT_POOL,
    }
    if args.scenario:
        from ._scenario_file import ScenarioError, load_scenario

        try:
            spec = load_scenario(args.scenario).for_evaluate()
        except ScenarioError as exc:
            raise UsageError(str(exc)) from None
        servers = list(spec.servers)
        settings.update(
            seed=spec.seed,
            interval_ms=spec.load_report_interval_ms,
            item_cost=float(spec.batch.get("item_cost", DEFAULT_ITEM_COST)),
            pool=spec.scenario().pool,
        )
        if args.only:
            wanted = [s.strip() for s in args.only.split(",") if s.strip()]
            known = {s.id for s in servers}
            for sid in wanted:
                if sid not in known:
                    raise UsageError(f"--only: no backend {sid!r} in the scenario")
            servers = [s for s in servers if s.id in wanted]
    else:
        if args.only:
            raise UsageError("--only: goes with --scenario")
        servers = [parse_backend(text, f"--backend[{i}]") for i, text in enumerate(args.backend)]
        seen: set[str] = set()
        for i, server in enumerate(servers):
            if server.id in seen:
                raise UsageError(f"--backend[{i}].id: duplicate backend id {server.id!r}")
            seen.add(server.id)
    if args.seed is not None:
        settings["seed"] = args.seed
    if args.item_cost is not None:
        if not 0 <= args.item_cost < float("inf"):
            raise UsageError(f"--item-cost: must be a finite number >= 0, got {args.item_cost}")
        settings["item_cost"] = args.item_cost
    if args.report_interval_ms is not None:
        if not 1 <= args.report_interval_ms <= 3_600_000:
            raise UsageError(f"--report-interval-ms: must be in [1, 3600000], got {args.report_interval_ms}")
        settings["interval_ms"] = args.report_interval_ms
    if args.pool is not None:
        if not args.pool:
            raise UsageError("--pool: must not be empty")
        settings["pool"] = args.pool
    if args.register and not args.service:
        raise UsageError("--register: needs --service")
    return servers, settings


async def register(target: str, pool: str, backends: Sequence[RunningBackend]) -> None:
    """Registers each backend (id, address, weight) in ``pool`` with AdminService.RegisterServer.

    Raises:
        grpc.aio.AioRpcError: the service refused or could not be reached in time.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        for running in backends:
            spec = running.backend.spec
            server = _common.ServerSpec(id=spec.id, address=running.address, weight=spec.weight)
            await stub.RegisterServer(
                _admin.RegisterServerRequest(pool=pool, server=server), timeout=REGISTER_TIMEOUT_S, wait_for_ready=True
            )


async def serve(servers: Sequence[SimServer], settings: dict[str, Any], args: argparse.Namespace) -> int:
    """Serves ``servers`` until SIGTERM/SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    master = random.Random(settings["seed"])
    client = AsyncClient(args.service, timeout_s=2.0) if args.service else None
    started: list[RunningBackend] = []
    try:
        for spec in servers:
            started.append(
                await start_backend(
                    spec,
                    host=args.listen_host,
                    rng=random.Random(master.getrandbits(64)),
                    client=client,
                    pool=settings["pool"],
                    report_interval_s=settings["interval_ms"] / 1000.0,
                    item_cost=settings["item_cost"],
                )
            )
        if args.register:
            try:
                await register(args.service, settings["pool"], started)
            except grpc.aio.AioRpcError as exc:
                print(
                    f"loadwarden backend-sim: registering in pool {settings['pool']!r} at {args.service} failed: "
                    f"{exc.code().name}: {exc.details()}",
                    file=sys.stderr,
                )
                return 1
        for running in started:
            await running.begin()
        print(json.dumps({"backends": {r.backend.id: r.address for r in started}, "pid": os.getpid()}), flush=True)
        await stop.wait()
        return 0
    finally:
        for running in started:
            with contextlib.suppress(Exception):
                await running.stop(0)
        if client is not None:
            await client.close()


def run(args: argparse.Namespace) -> int:
    """Runs ``loadwarden backend-sim``; returns the exit code (2: bad options)."""
    configure_logging(args.log_level)
    try:
        servers, settings = resolve(args)
    except UsageError as exc:
        return _fail(str(exc))
    try:
        return asyncio.run(serve(servers, settings, args))
    except OSError as exc:
        print(f"loadwarden backend-sim: {exc}", file=sys.stderr)
        return 1
