"""Starting and stopping the Decision service: gRPC server, health, reflection, sweeper."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import random
import resource
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.observability.net import is_loopback
from loadwarden.policy import (
    Clock,
    IdGenerator,
    InvalidArgument,
    LoadWeights,
    NotFound,
    ResourceExhausted,
    SystemClock,
    Unavailable,
)
from loadwarden.v1 import admin_pb2, decision_pb2

from .._errors import ConfigError
from ..engine._core import AdmissionFactory, CoreLimits, DecisionCore, DecisionListener, PeerLink
from ..engine._health_checks import HealthChecker, PoolChecks
from ..engine._loadmonitor import HostMonitor
from ..engine._planner import Planner
from ..rpc._auth import Callers, auth_interceptors
from ..rpc._convert import load_status
from ..rpc._metrics import ServerMetrics
from ..rpc._planning import recommendations_response
from ..rpc._servicer import add_to_server, server_options
from ..rpc._telemetry import server_interceptors
from ..rpc._tls import TlsMaterial, load_tls
from ..rpc.reflection import enable_reflection
from ..shared import Outage, Peers, SharedAdmission, SharedRedis, sync_client
from ..shared import connect as connect_redis
from ._catalog import OPERATIONS, POOLS, RESYNC_S, Catalog, CatalogStore, FileCatalog, RedisCatalog
from ._config import ServiceConfig
from ._persistence import Persister, restore
from ._readiness import Dependency, MonitorDependency, Readiness, RedisDependency
from ._store import FileStore, MemoryStore, RedisBlobStore, StateStore

if TYPE_CHECKING:  # the admin port and metrics are imported only when configured
    from loadwarden.observability.history import History
    from loadwarden.observability.metrics import MetricsSetup

log = logging.getLogger("loadwarden.server")

DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
SERVICE_NAMES = (DECISION_SERVICE, ADMIN_SERVICE)
# Longest a start on the Redis store waits for its events subscription before serving, s.
SUBSCRIBE_TIMEOUT_S = 5.0

_SERVER_OPTIONS = (
    # Without this, Linux lets a second process bind the same port and steal half the calls.
    ("grpc.so_reuseport", 0),
)


@dataclass
class RunningService:
    """A started service. ``port`` is the bound port (useful with port 0); ``host`` keeps
    IPv6 brackets, so ``target`` is dialable as is."""

    server: grpc.aio.Server
    core: DecisionCore
    health: health.aio.HealthServicer
    host: str
    port: int
    persister: Persister | None
    admin_port: int | None  # the admin HTTP port; None when it is off
    readiness: Readiness  # what /readyz and the gRPC health follow
    _stack: contextlib.AsyncExitStack  # undoes the start, last started first
    _grace: list[float | None]  # the grace `stop` was given, read by the gRPC server's stop
    planner: Planner | None = None  # capacity planning; None when [planning] is off
    xds_port: int | None = None  # the xDS server's own port; None when off or on the service's port

    @property
    def target(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """Reports NOT_SERVING, then lets in-flight RPCs finish for ``grace_s`` seconds.

        Then the learned state is saved (after the last outcome was applied), the admin
        port and its history close, and the metrics are flushed.
        """
        self._grace[0] = grace_s
        await self._stack.aclose()


def build_core(
    config: ServiceConfig,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    listener: DecisionListener | None = None,
    admission: AdmissionFactory | None = None,
    ids: IdGenerator | None = None,
    peers: PeerLink | None = None,
) -> DecisionCore:
    """The decision core ``config`` describes, its pools and operations configured.

    Raises:
        ConfigError: a pool's strategy or parameters are invalid, or there are too many servers.
    """
    configured = sum(len(spec.servers or ()) for spec in config.pools)
    if configured > config.limits.max_servers:
        raise ConfigError(
            "limits.max_servers",
            f"the pools configure {configured} servers in all; limits.max_servers is {config.limits.max_servers}",
        )
    clock = clock or SystemClock()
    m = config.monitor
    # The weights score pools' load reports too, so they apply with the host sampler off.
    weights = LoadWeights(m.cpu_weight, m.memory_weight, m.load_average_weight)
    monitor = None
    if m.enabled:
        monitor = HostMonitor(
            clock,
            interval_s=m.interval_ms / 1000.0,
            weights=weights,
            stale_after_s=m.stale_after_ms / 1000.0 if m.stale_after_ms else None,
        )
        monitor.sample_now()  # primes psutil's CPU counter; the first real reading follows
    core = DecisionCore(
        config.limits,
        clock=clock,
        rng=rng or random.Random(config.seed),
        listener=listener,
        monitor=monitor,
        load_weights=weights,
        admission=admission,
        ids=ids,
        peers=peers,
    )
    for spec in config.pools:
        where = f"pools.{spec.settings.name}"
        try:
            core.configure_pool(spec.settings, spec.servers, where=where)
        except InvalidArgument as exc:
            raise ConfigError(exc.field, exc.problem) from None
        except ResourceExhausted as exc:
            raise ConfigError(exc.key or where, str(exc)) from None
    for operation in config.operations:
        core.configure_operation(operation)
    return core


async def start_service(
    config: ServiceConfig,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
    store: StateStore | None = None,
) -> RunningService:
    """Builds the decision core from ``config`` and starts serving on ``config.listen``.

    Args:
        config: Validated service configuration.
        clock: Time source; the system clock by default.
        rng: Randomness for strategies; ``random.Random(config.seed)`` by default.
        extra_handlers: More gRPC handlers to serve on the same port (benchmarks use
            this to put an empty handler beside the real ones).
        store: Where learned state is kept; built from ``config.state`` by default.

    Raises:
        ConfigError: a pool's strategy or parameters are invalid, or a ``tls.*`` file
            cannot be used.
        OSError: the address cannot be bound.
    """
    tls = load_tls(config.tls)  # before anything starts
    async with contextlib.AsyncExitStack() as stack:  # on failure, undoes what started; else handed over
        metrics_setup = _configure_metrics(config)
        if metrics_setup is not None:
            stack.callback(metrics_setup.shutdown)  # flushes OTLP after the last RPC was counted
        metrics = ServerMetrics(metrics_setup.meter_provider if metrics_setup is not None else None)
        shared = await _connect_shared(stack, config)
        admission: AdmissionFactory | None = None
        ids = None
        peers = None
        if shared is not None:
            ids = IdGenerator(prefix=shared.redis.replica, key=shared.redis.secret)  # ids name their replica
            peers = shared.peers
            settings = shared.redis.settings
            outage = Outage(
                settings.on_failure, settings.rate_limit_on_failure or settings.on_failure, settings.replicas
            )
            admission = functools.partial(SharedAdmission, redis=shared.redis, outage=outage)
        core = build_core(config, clock=clock, rng=rng, listener=metrics, admission=admission, ids=ids, peers=peers)
        if peers is not None:
            peers.attach(core)
            stack.push_async_callback(peers.close)
        if isinstance(core.admission, SharedAdmission):
            stack.push_async_callback(core.admission.close)
        metrics.observe(core)
        if store is None:
            store = _state_store(config)
        catalog = Catalog(core, _catalog_store(config, store, shared), config.pools, config.operations)
        await catalog.start()
        stack.push_async_callback(catalog.close)
        restore(core, store)
        persister = None
        if store.durable:
            persister = Persister(core, store, config.state.save_interval_ms / 1000.0)

        host = config.listen.rpartition(":")[0]
        # Auth after tracing (a refused call still gets its span), before metrics (which time handlers).
        client_tokens = config.auth.tokens()
        auth = auth_interceptors(
            admin_token=config.admin.token,
            client_tokens=tuple(client_tokens),
            loopback=is_loopback(host),
            listen=config.listen,
        )
        callers = Callers(client_tokens, certificates=config.tls.require_client_cert)
        open_files = open_files_limit()
        server = grpc.aio.server(
            options=(*_SERVER_OPTIONS, *server_options(config.limits), *connection_options(config.limits, open_files)),
            maximum_concurrent_rpcs=config.limits.max_concurrent_rpcs,
            interceptors=(*server_interceptors(), *auth, *metrics.interceptors()),
        )
        history = _open_history(stack, config)
        planner = _planner(stack, config, core, history, clock or SystemClock())
        # DecisionService and AdminService; undecodable requests get INVALID_ARGUMENT.
        add_to_server(server, core, callers, catalog, planner)
        ads = (
            _mesh("AdsServer", "xds.enabled")(config.xds, tokens=client_tokens, core=core)
            if config.xds.enabled
            else None
        )
        if ads is not None and not config.xds.listen:
            server.add_generic_rpc_handlers(ads.handlers())  # ADS on the service's own port
        if config.rls.enabled:
            rls = _mesh("RateLimitService", "rls.enabled")(
                config.rls,
                client_tokens,
                core=core,
                certificates=config.tls.require_client_cert,
                meter_provider=metrics_setup.meter_provider if metrics_setup is not None else None,
            )
            server.add_generic_rpc_handlers(rls.handlers())
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        on_port: tuple[str, ...] = (_mesh("ADS_SERVICE", ""),) if ads is not None and not config.xds.listen else ()
        on_port += (_mesh("RLS_SERVICE", ""),) if config.rls.enabled else ()
        enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME, *on_port), server)
        if extra_handlers:
            server.add_generic_rpc_handlers(tuple(extra_handlers))

        try:
            port = _add_port(server, config.listen, host, tls)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {config.listen}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        await server.start()
        if persister is not None:
            stack.push_async_callback(persister.final_save)  # once the gRPC server stopped: the last outcomes too
        grace: list[float | None] = [None]  # a failed start stops at once; `stop` sets its own grace
        stack.push_async_callback(lambda: server.stop(grace[0]))  # what releases the port
        readiness = _readiness(config, core, shared, health_servicer, clock or SystemClock())
        xds_port = None
        if ads is not None:
            stack.push_async_callback(ads.stop, 0)
            if config.xds.listen:
                xds_port = await ads.serve(credentials=tls.grpc_credentials() if tls else None)
        admin_port = await _start_admin(stack, config, core, metrics_setup, tls, readiness, history, planner)
        await health_servicer.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await readiness.check_now()  # SERVING, unless a dependency fails already
        interval_s = config.expiry_interval_ms / 1000.0
        tasks = [
            asyncio.create_task(_sweep(core, interval_s), name="loadwarden-sweeper"),
            asyncio.create_task(readiness.run(), name="loadwarden-readiness"),
        ]
        if shared is not None:
            tasks += shared.start(core, catalog, interval_s, readiness)
            # Serve only once other replicas' changes reach this one: a change stored between
            # loading the configuration and subscribing would otherwise wait for the next
            # periodic resync. So: subscribed, then caught up with the stored version.
            if await shared.redis.wait_subscribed(SUBSCRIBE_TIMEOUT_S):
                await shared.catch_up(catalog)
            else:
                log.warning("state.url: the events subscription is not up yet; changes arrive by resync until it is")
        if core.monitor is not None:
            tasks.append(asyncio.create_task(core.monitor.run(), name="loadwarden-host-monitor"))
        checker = _health_checker(config, core)
        if checker is not None:
            tasks.append(asyncio.create_task(checker.run(), name="loadwarden-health-checks"))
        ingester = _orca_ingester(config, core)
        if ingester is not None:
            tasks.append(asyncio.create_task(ingester.run(), name="loadwarden-orca"))
        if persister is not None:
            tasks.append(asyncio.create_task(persister.run(), name="loadwarden-persister"))
        if history is not None:
            snapshot = functools.partial(_snapshot_json, core)
            interval = config.admin.history_interval_ms / 1000.0
            tasks.append(asyncio.create_task(history.run(snapshot, interval), name="loadwarden-history"))
        if planner is not None:
            metrics.observe_planner(planner)
            tasks.append(asyncio.create_task(planner.run(), name="loadwarden-planner"))
        stack.push_async_callback(_cancel, tasks)
        if shared is not None:
            stack.callback(shared.redis.stop_listening)
        stack.push_async_callback(health_servicer.enter_graceful_shutdown)  # first of all: NOT_SERVING
        stack.push_async_callback(readiness.stopping)  # and /readyz says so
        log.info(
            "loadwarden serving on %s:%d (%d pools); connections capped at %s (open files limit %s)",
            host,
            port,
            len(config.pools),
            connection_cap(config.limits, open_files),
            open_files,
        )
        running = RunningService(
            server,
            core,
            health_servicer,
            host,
            port,
            persister,
            admin_port,
            readiness,
            stack.pop_all(),
            grace,
            planner,
            xds_port,
        )
    return running


@dataclass
class _Shared:
    """The shared store's parts of a running service."""

    redis: SharedRedis
    peers: Peers

    def start(
        self, core: DecisionCore, catalog: Catalog, interval_s: float, readiness: Readiness
    ) -> list[asyncio.Task[None]]:
        """The tasks that keep this replica in step: events, lease sweeps, waiter polls, resyncs.
        A call that finds Redis gone marks it failing in ``readiness`` at once."""
        admission = core.admission
        assert isinstance(admission, SharedAdmission)
        replica = self.redis.replica

        def on_health(serving: bool) -> None:
            readiness.mark_failing("redis", None if serving else "calls to Redis fail")

        admission.on_health = on_health

        def on_event(message: str) -> None:
            kind, _, rest = message.partition(" ")
            if kind == "C" and rest.split(" ", 2)[1:2] != [replica]:
                catalog.changed_elsewhere()

        async def on_resubscribe() -> None:  # events may have been missed meanwhile
            catalog.changed_elsewhere()
            for pool in core.pools():
                admission.dispatch(pool.slots)

        self.redis.on_event(on_event)
        self.redis.on_resubscribe(on_resubscribe)
        return [
            asyncio.create_task(self.redis.listen(), name="loadwarden-shared-events"),
            asyncio.create_task(admission.run(interval_s), name="loadwarden-shared-sweeper"),
            asyncio.create_task(admission.poll(), name="loadwarden-shared-poll"),
            asyncio.create_task(self._keep_in_step(catalog), name="loadwarden-shared-resync"),
            asyncio.create_task(self.peers.run(), name="loadwarden-shared-peers"),
        ]

    async def catch_up(self, catalog: Catalog) -> None:
        """Converges once if the stored configuration moved on since it was loaded."""
        try:
            await catalog.resync(await RedisCatalog(self.redis).version())
        except Unavailable as exc:
            log.debug("catch-up skipped (the periodic resync follows): %s", exc)

    async def _keep_in_step(self, catalog: Catalog) -> None:
        """Every RESYNC_S: republishes into an emptied Redis, else converges on a version change."""
        store = RedisCatalog(self.redis)
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                if await self.redis.emptied():
                    await self._republish(store, catalog)
                else:
                    await catalog.resync(await store.version())
            except Unavailable as exc:
                log.debug("resync skipped: %s", exc)

    async def _republish(self, store: RedisCatalog, catalog: Catalog) -> None:
        await self.redis.reclaim_schema()
        records = catalog.records()
        for kind, entries in ((POOLS, records.pools), (OPERATIONS, records.operations)):
            for name, entry in entries.items():
                await store.put(kind, name, entry)
        log.warning(
            "the shared state store came back empty (Redis restarted without persistence?): "
            "republished %d pools and %d operations from this replica; leases granted before are gone",
            len(records.pools),
            len(records.operations),
        )
        await catalog.resync(await store.version())


def _catalog_store(config: ServiceConfig, store: StateStore, shared: _Shared | None) -> CatalogStore | None:
    """Where the configuration is kept: Redis, the state directory, or nowhere (memory)."""
    if shared is not None:
        return RedisCatalog(shared.redis)
    if config.state.store == "file":
        return FileCatalog(store)
    return None


async def _connect_shared(stack: contextlib.AsyncExitStack, config: ServiceConfig) -> _Shared | None:
    """Connects to the shared store when ``[state] store = "redis"``; closed by ``stack``."""
    settings = config.state.redis
    if settings is None:
        return None
    redis = await connect_redis(settings)
    stack.push_async_callback(redis.close)
    return _Shared(redis, Peers(redis))


def _state_store(config: ServiceConfig) -> StateStore:
    """Where learned state is kept for ``config.state``."""
    state = config.state
    if state.store == "file":
        return FileStore(state.path)
    if state.redis is not None:
        return RedisBlobStore(sync_client(state.redis), state.redis.key_prefix)
    return MemoryStore()


def _health_checker(config: ServiceConfig, core: DecisionCore) -> HealthChecker | None:
    """What checks the configured pools' servers; None when no pool asks for it."""
    checks = [
        PoolChecks(spec.settings.name, spec.health_check, frozenset(server.address for server in spec.servers))
        for spec in config.pools
        if spec.health_check is not None
    ]
    if not checks:
        return None
    rng = random.Random(config.seed) if config.seed is not None else random.Random()
    return HealthChecker(core.find_pool, checks, core.clock, rng)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancels ``tasks`` together and waits for them; one that swallowed its cancellation (a
    library that catches CancelledError in a read) is cancelled again until it ends."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            log.warning("task %s did not stop on cancellation; cancelling it again", task.get_name())


def _configure_metrics(config: ServiceConfig) -> MetricsSetup | None:
    """A service-owned metrics pipeline when the admin port or an OTLP/console exporter wants one."""
    if not config.admin.listen and not os.environ.get("OTEL_METRICS_EXPORTER", "").strip():
        return None  # no SDK import: instruments stay on the global API provider (a no-op unless set)
    from loadwarden.observability.metrics import configure_metrics, wants_exporters

    try:
        if not config.admin.listen and not wants_exporters():
            return None
        return configure_metrics(prometheus=bool(config.admin.listen))
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        raise ConfigError(key, problem) from None


def _add_port(server: grpc.aio.Server, listen: str, host: str, tls: TlsMaterial | None) -> int:
    """Binds ``listen`` with TLS when configured; warns once about plaintext off loopback."""
    if tls is not None:
        log.info(
            "gRPC serves TLS on %s%s",
            listen,
            " and requires client certificates" if tls.settings.require_client_cert else "",
        )
        return server.add_secure_port(listen, tls.grpc_credentials())
    if not is_loopback(host):
        log.warning(
            "gRPC listens on %s, not a loopback address, without TLS: requests and tokens cross the "
            "network in plaintext; set tls.cert_file and tls.key_file",
            listen,
        )
    return server.add_insecure_port(listen)


def _mesh(name: str, key: str) -> Any:
    """A name of loadwarden.server.mesh, imported now: only a service with [xds] or [rls] on
    loads xds-protos (the mesh extra). Its absence is a ConfigError naming ``key``."""
    from .. import mesh

    try:
        return getattr(mesh, name)
    except ModuleNotFoundError as exc:
        raise ConfigError(key or "xds.enabled", str(exc)) from None


def _orca_ingester(config: ServiceConfig, core: DecisionCore) -> Any:
    """The ORCA streams of the pools with ``[pools.X.orca]``, or None; imports xds-protos only then."""
    wanted = [spec for spec in config.pools if spec.orca is not None and spec.orca.enabled]
    if not wanted:
        return None
    try:
        from ..engine._orca import OrcaIngester, PoolOrca
    except ModuleNotFoundError as exc:
        key = f"pools.{wanted[0].settings.name}.orca"
        raise ConfigError(key, f"needs xds-protos (missing: {exc.name}): pip install 'loadwarden[mesh]'") from None
    ingest = [
        PoolOrca(spec.settings.name, spec.orca, frozenset(s.address for s in spec.servers))
        for spec in wanted
        if spec.orca is not None
    ]
    rng = random.Random(config.seed) if config.seed is not None else random.Random()
    return OrcaIngester(core.find_pool, core.report_load, ingest, rng)


def _snapshot_json(core: DecisionCore) -> dict[str, object]:
    from google.protobuf import json_format

    return json_format.MessageToDict(load_status(core, ""), preserving_proto_field_name=True)


def _recommendations_json(planner: Planner, pools: list[str], horizon_s: float, operations: bool) -> dict[str, object]:
    """GetRecommendations for the admin port: a bad argument is a ValueError, an unknown pool a LookupError."""
    from google.protobuf import json_format

    try:
        plans = planner.answer(pools, horizon_s, operations)
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None
    except NotFound as exc:
        raise LookupError(str(exc)) from None
    response = recommendations_response(plans, planner.settings.interval_s)
    return json_format.MessageToDict(response, preserving_proto_field_name=True)


def _open_history(stack: contextlib.AsyncExitStack, config: ServiceConfig) -> History | None:
    """The load history, kept for the admin port's dashboard and for capacity planning;
    None when neither is on. Closed by ``stack``."""
    if not (config.admin.listen or config.planning.enabled):
        return None
    from loadwarden.observability.history import History

    settings = config.admin
    try:
        history = History(settings.history_path or None, retention_s=settings.history_retention_s)
    except (OSError, ValueError) as exc:
        raise ConfigError("admin.history_path", f"cannot open the history database: {exc}") from None
    stack.push_async_callback(asyncio.to_thread, history.close)
    return history


def _planner(
    stack: contextlib.AsyncExitStack, config: ServiceConfig, core: DecisionCore, history: History | None, clock: Clock
) -> Planner | None:
    """The capacity planner when [planning] is on, forecasting in a worker process (spawned:
    a fork of a process running gRPC is unsafe) that ``stack`` shuts down."""
    if not config.planning.enabled:
        return None
    assert history is not None  # opened whenever planning is on

    def worker() -> concurrent.futures.Executor:
        return concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    planner = Planner(core, config.planning, history, clock=clock, wall=time.time, executor_factory=worker)
    stack.callback(planner.close)
    return planner


async def _start_admin(
    stack: contextlib.AsyncExitStack,
    config: ServiceConfig,
    core: DecisionCore,
    metrics_setup: MetricsSetup | None,
    tls: TlsMaterial | None,
    readiness: Readiness,
    history: History | None,
    planner: Planner | None,
) -> int | None:
    """Starts the admin HTTP port (metrics, load status, health, dashboard, history) if
    configured; returns its port. What it starts is undone by ``stack``."""
    if not config.admin.listen:
        return None
    from loadwarden.observability.admin import add_dashboard_routes, build_admin_app, start_admin_http

    assert metrics_setup is not None  # configured whenever admin.listen is set
    assert history is not None  # opened whenever admin.listen is set
    settings = config.admin
    app = build_admin_app(
        token=settings.token,
        snapshot_json=functools.partial(_snapshot_json, core),
        render_metrics=metrics_setup.render,
        extra_routes=functools.partial(
            add_dashboard_routes,
            history=history,
            recommendations=None if planner is None else functools.partial(_recommendations_json, planner),
        ),
        readiness=lambda: (readiness.ready, readiness.document()),
    )
    admin = await start_admin_http(app, settings.listen, ssl_context=tls.ssl_context() if tls else None)
    stack.push_async_callback(admin.stop)
    return admin.port


def _readiness(
    config: ServiceConfig,
    core: DecisionCore,
    shared: _Shared | None,
    health_servicer: health.aio.HealthServicer,
    clock: Clock,
) -> Readiness:
    """Readiness over the dependencies ``config`` has; the gRPC health follows it."""
    dependencies: list[Dependency] = []
    if shared is not None:
        redis, admission = shared.redis, core.admission
        assert isinstance(admission, SharedAdmission)
        dependencies.append(
            RedisDependency(
                redis.client.ping, redis.settings.command_timeout_ms / 1000.0, critical=admission.fails_closed
            )
        )
    monitor = core.monitor
    if monitor is not None:
        dependencies.append(MonitorDependency(lambda: monitor.reading(monitor.clock.monotonic()).problem or None))

    async def on_change(ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", DECISION_SERVICE):
            await health_servicer.set(name, status)
        log.log(logging.INFO if ready else logging.WARNING, "readiness: %s", "ready" if ready else "not ready")

    return Readiness(dependencies, config.readiness_interval_ms / 1000.0, clock, on_change)


# File descriptors kept free of connections when max_connections is 0 ("auto"): the
# process's own files (listeners, admin HTTP, state and history files, gRPC's pipes).
FD_RESERVE_MIN = 64
FD_RESERVE_SHARE = 0.1


def connection_cap(limits: CoreLimits, open_files: int | None) -> int | None:
    """Incoming connections allowed at once: ``limits.max_connections``, or with 0 the
    open-files limit less max(FD_RESERVE_MIN, 10 %) of it (None: no limit known)."""
    if limits.max_connections:
        return limits.max_connections
    if open_files is None:
        return None
    return max(1, open_files - max(FD_RESERVE_MIN, int(open_files * FD_RESERVE_SHARE)))


def connection_options(limits: CoreLimits, open_files: int | None) -> tuple[tuple[str, int], ...]:
    """gRPC server options for the connection limits: cap, handshake timeout, keepalive,
    idle and age (``limits.*``, documented on CoreLimits).

    ``open_files`` is the process's open-files limit, which sizes the cap when
    ``limits.max_connections`` is 0. A connection past the cap is closed as soon as
    it is accepted, so descriptors never run out; one that has not finished its TLS
    and HTTP/2 handshake within ``handshake_timeout_ms`` is closed, which frees the
    places held by sockets that never speak HTTP/2, so a new client (a health check)
    gets in after at most that long.
    """
    options = [
        ("grpc.server_handshake_timeout_ms", limits.handshake_timeout_ms),
        ("grpc.keepalive_time_ms", limits.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", limits.keepalive_timeout_ms),
        ("grpc.http2.max_pings_without_data", limits.max_pings_without_data),
    ]
    if limits.max_connection_idle_ms:
        options.append(("grpc.max_connection_idle_ms", limits.max_connection_idle_ms))
    if limits.max_connection_age_ms:
        options.append(("grpc.max_connection_age_ms", limits.max_connection_age_ms))
        options.append(("grpc.max_connection_age_grace_ms", limits.max_connection_age_grace_ms))
    cap = connection_cap(limits, open_files)
    if cap is not None:
        options.append(("grpc.max_allowed_incoming_connections", cap))
    return tuple(options)


# Highest soft open-files limit asked for when the hard limit is unlimited.
_NOFILE_CEILING = 1 << 20


def open_files_limit() -> int | None:
    """The process's soft RLIMIT_NOFILE (None when unlimited or unknown)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> int | None:
    """Raises the soft RLIMIT_NOFILE to the hard limit (each connection holds a
    descriptor) and logs the result; returns the soft limit in force."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = min(hard, _NOFILE_CEILING) if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log.info("open files limit raised from %d to %d (the hard limit)", soft, wanted)
        else:
            log.info("open files limit %s (the hard limit)", soft)
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the open files limit: %s", exc)
    return open_files_limit()


async def _sweep(core: DecisionCore, interval_s: float) -> None:
    # Expires decisions even when no request arrives to do it on the way.
    while True:
        await asyncio.sleep(interval_s or 1.0)
        core.expire()


async def serve(config: ServiceConfig, ready: asyncio.Event | None = None) -> None:
    """Runs the service until SIGTERM or SIGINT, then drains gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: a signal that arrives as soon as we announce readiness must drain too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    raise_open_files_limit()
    running = await start_service(config)
    print(f"loadwarden listening on {running.target}", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("loadwarden draining (grace %d ms)", config.shutdown_grace_ms)
    await running.stop(config.shutdown_grace_ms / 1000.0)
    log.info("loadwarden stopped")
