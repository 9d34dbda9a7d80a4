"""``loadwarden evaluate``: each strategy in turn on fresh real processes, the same seeded traffic.

For every strategy of the scenario (``[evaluate]`` applied), and every decision
mode it lists (``decisions``; central only by default):

1. write a service config: the scenario's pool with the strategy (mode route),
   limit algorithm (slot) or an operation with the batch controller (batch); a
   variant's ``service_config`` merged over it (every variant's config is checked
   with the service's own parser before the first run starts);
2. start ``loadwarden serve --listen 127.0.0.1:0`` and wait for its address;
3. start ``loadwarden backend-sim --register``: its backends listen on free
   ports, register themselves in the pool (AdminService.RegisterServer) and
   report their load; wait for its JSON line with their addresses;
4. run the traffic (``_traffic``) through the SDK (a ``RecordingClient``: the
   SDK's default breakers, retries and local fallback, unless
   ``[evaluate.client]`` turns them off), while a watchdog stops the run if a
   child exits: from this process with central decisions only; else
   from ``clients`` client processes (``_evaluate_client``), each with its own
   ``AsyncClient(decisions=...)`` and its share of the seeded arrivals, started
   together once every one is ready (a local client has its first routing
   table by then) and sending its records back in a file. Central runs use the
   same client processes as local ones, so the two modes differ in where the
   decisions are made only;
5. meanwhile, ``[[evaluate.faults]]``: at each fault's ``at_s`` from the start of
   the traffic the service is SIGKILLed (the watchdog lets it go), and after
   ``restart_after_s`` started again on the same address with the same config
   plus the backends' addresses (``servers``, which they registered by RPC the
   first time), so the pool comes back; each ``Outage`` is kept with the
   decisions the clients made meanwhile, by source;
6. stop them all (SIGTERM, then SIGKILL after a grace period) and keep the records.

Then the ``Report`` (kind ``"evaluate"``) is built, with the simulator's figures
on the same scenario (and decision mode) as ``comparison`` in mode route (variants
left out: the in-process core has no service config), and in mode batch the batch
figures, through the traffic's surges too when it has some. Every
child is started by one ``ProcessGroup``, closed in a ``finally``: on success, on
failure, on cancellation (SIGINT/SIGTERM cancel the run) and at exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadwarden.sdk import AsyncClient
from loadwarden.server import ConfigError, load_config

from ._batch_mode import (
    BatchRecord,
    BatchSettings,
    BatchSummary,
    PeakSummary,
    parse_batch,
    peak_windows,
    render_batch_markdown,
    render_peaks_markdown,
    summarize_batches,
    summarize_peaks,
)
from ._evaluate_client import (
    ClientJob,
    ClientSettings,
    DecisionSources,
    RecordingClient,
    client_options,
    read_records,
)
from ._processes import Child, ChildFailed, ProcessGroup
from ._progress import Progress
from ._report import Report, StrategyRun, label
from ._scenario_file import ScenarioError, ScenarioSpec
from ._summary import LoadRecord, RequestRecord, Summary, summarize
from ._traffic import TrafficPlan, TrafficResult, TrafficRunner, planned_requests

DEFAULT_STARTUP_TIMEOUT_S = 30.0
# How long a started service may take to finish after its last request, s.
STOP_GRACE_S = 5.0
_LISTENING = re.compile(r"^loadwarden listening on (\S+)$", re.MULTILINE)
_BACKENDS = re.compile(r"^(\{\"backends\".*\})$", re.MULTILINE)
_READY = re.compile(r'^\{"ready".*\}$', re.MULTILINE)
_DONE = re.compile(r'^\{"done": (\d+)\}$', re.MULTILINE)
# The command that runs ``loadwarden``: this interpreter, so no PATH lookup is needed.
LOADWARDEN = (sys.executable, "-m", "loadwarden.server")
# The command that runs one client process (``_evaluate_client``); its job file is appended.
CLIENT = (sys.executable, "-m", "loadwarden.backend_sim._evaluate_client")
# Between the last client being ready and the common start, s: every client reads the go file by then.
START_DELAY_S = 0.3


class EvaluationFailed(RuntimeError):
    """A run could not be completed (a process failed to start or died); the message says which."""


@dataclass(frozen=True, slots=True)
class EvaluateOptions:
    """How to run an evaluation.

    Attributes:
        out_dir: Where the report, the configs and the children's logs go.
        plots: Write PNG plots (needs the ``eval`` extra).
        startup_timeout_s: Longest wait for each process to be ready, s.
        progress_stream: Where the progress bar is drawn (stderr when None).
        run_id: Marker of every child process (``LW_EVAL_RUN``); fresh when None.
        command: How to run ``loadwarden``.
        client_command: How to run a client process (its job file is appended).
    """

    out_dir: Path
    plots: bool = True
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    progress_stream: Any = None
    run_id: str | None = None
    command: Sequence[str] = LOADWARDEN
    client_command: Sequence[str] = CLIENT


@dataclass
class Evaluation:
    """What ``evaluate`` produced.

    Attributes:
        report: The comparison (kind ``"evaluate"``), with the simulator's figures in mode route.
        batch: Mode batch: each controller's batch figures (None when it finished no batch).
        batches: Mode batch: each controller's batches.
        peaks: Mode batch with traffic surges: each controller's figures through the surges.
        peak_before_s: The windows of ``peaks`` start this long before each surge, s.
    """

    report: Report
    batch: dict[str, BatchSummary | None] = field(default_factory=dict)
    batches: dict[str, tuple[BatchRecord, ...]] = field(default_factory=dict)
    peaks: dict[str, PeakSummary] = field(default_factory=dict)
    peak_before_s: float = 0.0


# --- configs -------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} to TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"a.b": {key: value}}`` as TOML tables ``[a.b]``; nested mappings become inline tables."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def pool_name(spec: ScenarioSpec) -> str:
    """The pool every run uses."""
    return spec.scenario().pool


def service_config(
    spec: ScenarioSpec, strategy: str, batch: BatchSettings | None, servers: Mapping[str, str] | None = None
) -> str:
    """The ``loadwarden serve`` config of one run, as TOML text.

    Without ``servers`` the backends register themselves; with them (id -> address, for a
    restart after a fault) the pool lists them, with their weights. A variant's
    ``service_config`` is merged over the rest (``merged_config``).
    """
    pool = pool_name(spec)
    pool_table = spec.pool_config(strategy)
    if servers is not None:
        pool_table["servers"] = [{"id": s.id, "address": servers[s.id], "weight": s.weight} for s in spec.servers]
    if "load_report_ttl_ms" not in pool_table:
        # As the simulator: max(10 s, 3 intervals), so a loaded machine's late reports do not
        # make servers flap stale; [pool] load_report_ttl_ms sets it.
        pool_table["load_report_ttl_ms"] = int(max(10_000, math.ceil(3 * spec.load_report_interval_ms)))
    timeout_ms = spec.timeout_ms or 30_000
    tables: dict[str, dict[str, Any]] = {
        "service": {"seed": spec.seed, "shutdown_grace_ms": 500},
        "limits": {
            "decision_ttl_ms": int(min(86_400_000, max(30_000, 3 * timeout_ms))),
            **(
                {"route_push_interval_ms": spec.route_push_interval_ms}
                if spec.route_push_interval_ms is not None
                else {}
            ),
        },
        # Pool-sourced batch sizing reads the backends' reported CPU (their busy-worker fraction)
        # alone. The weights only apply while the monitor is enabled (the core falls back to the
        # default weights without it), so it stays on in mode batch.
        "monitor": {
            "enabled": spec.mode == "batch",
            "cpu_weight": 1.0,
            "memory_weight": 0.0,
            "load_average_weight": 0.0,
        },
        f"pools.{_toml_key(pool)}": pool_table,
    }
    if spec.mode == "batch":
        assert batch is not None
        tables[f"operations.{_toml_key(batch.operation)}"] = batch.operation_config(
            spec.strategy_of(strategy), spec.strategy_params(strategy), pool
        )
    variant = spec.variants.get(strategy)
    return to_toml(merged_config(tables, variant.service_config) if variant is not None else tables)


def merged_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: a table into a table key by key, any other value replacing."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merged_config(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = merged_config({}, value)
        elif isinstance(value, (list, tuple)):
            merged[key] = list(value)
        else:
            merged[key] = value
    return merged


def check_service_configs(spec: ScenarioSpec, batch: BatchSettings | None) -> None:
    """Every variant's ``loadwarden.toml``, checked with the service's own parser (``load_config``)
    before anything starts; in mode batch, its ``planning.operations`` must name the run's operation.

    Raises:
        ScenarioError: ``variants.<name>.service_config.<key>`` (the key as the service names it;
            ``variants.<name>.service_config: <key>: ...`` when the variant did not write that key).
    """
    with tempfile.TemporaryDirectory(prefix="loadwarden-evaluate-") as tmp:
        path = Path(tmp) / "loadwarden.toml"
        for name in dict.fromkeys(spec.strategies):
            variant = spec.variants.get(name)
            if variant is None:
                continue
            where = f"variants.{name}.service_config"
            planned = variant.service_config.get("planning", {}).get("operations", {})
            if batch is not None and isinstance(planned, Mapping):
                for operation in planned:
                    if operation != batch.operation:
                        raise ScenarioError(
                            f"{where}.planning.operations.{operation}",
                            f"names no operation of the run: it registers {batch.operation!r} (batch.operation)",
                            spec.source,
                        )
            path.write_text(service_config(spec, name, batch), encoding="utf-8")
            try:
                load_config(path, environ={})
            except ConfigError as exc:
                problem = str(exc).removeprefix(f"{exc.key}: ")
                if _written(variant.service_config, exc.key):
                    raise ScenarioError(f"{where}.{exc.key}", problem, spec.source) from None
                raise ScenarioError(where, f"{exc.key}: {problem}", spec.source) from None


def _written(table: Mapping[str, Any], key: str) -> bool:
    """Whether ``table`` holds the dotted ``key``."""
    here: Any = table
    for part in key.split("."):
        if not isinstance(here, Mapping) or part not in here:
            return False
        here = here[part]
    return True


def check_batch(spec: ScenarioSpec) -> BatchSettings | None:
    """Mode batch: the ``[batch]`` settings, validated with every controller's params.

    Raises:
        ValueError: naming ``batch.<key>`` or ``params.<controller>.<key>``.
    """
    if spec.mode != "batch":
        return None
    controllers = [spec.strategy_of(name) for name in spec.strategies]
    settings = parse_batch(spec.batch, pool=pool_name(spec), controllers=controllers, params=spec.params)
    surges = spec.traffic.surges
    if "peak_before_s" in spec.batch:
        if surges is None:
            raise ScenarioError(
                "batch.peak_before_s",
                "applies to traffic with surges (traffic.surge_every_s): the peak figures cover them",
                spec.source,
            )
        gap = surges.every_s - surges.duration_s
        if settings.peak_before_s >= gap:
            raise ScenarioError(
                "batch.peak_before_s",
                f"must be less than the time between two surges ({gap:g} s: traffic.surge_every_s - "
                f"traffic.surge_duration_s), got {settings.peak_before_s:g}",
                spec.source,
            )
    return settings


def traffic_plan(spec: ScenarioSpec, batch: BatchSettings | None) -> TrafficPlan:
    """The traffic every strategy of ``spec`` gets."""
    wait_ms = spec.pool.get("max_wait_ms", 0) if spec.mode == "slot" else 0
    return TrafficPlan(
        mode=spec.mode,
        pool=pool_name(spec),
        traffic=spec.traffic.arrivals(),
        seed=spec.seed,
        timeout_ms=spec.timeout_ms,
        slot_wait_s=float(wait_ms) / 1000.0,
        batch=batch,
    )


def scale_duration(spec: ScenarioSpec, *, scale: float | None = None, duration_s: float | None = None) -> ScenarioSpec:
    """``spec`` with its traffic shortened or lengthened.

    ``duration_s`` sets the traffic's duration; ``scale`` multiplies its duration,
    request count and warm-up. The ramp (``load_end``) spans the new duration.

    Raises:
        ScenarioError: the result is invalid.
        ValueError: ``scale`` or ``duration_s`` is not a positive number.
    """
    t = spec.traffic
    overrides: dict[str, Any] = {}
    if scale is not None:
        if not 0 < scale < math.inf:
            raise ValueError(f"--duration-scale: must be a positive number, got {scale!r}")
        if t.duration_s is not None:
            overrides["duration_s"] = t.duration_s * scale
        if t.requests is not None:
            overrides["requests"] = max(1, round(t.requests * scale))
        overrides["warmup_s"] = spec.warmup_s * scale
    if duration_s is not None:
        if not 0 < duration_s < math.inf:
            raise ValueError(f"--duration-s: must be a positive number, got {duration_s!r}")
        overrides["duration_s"] = duration_s
        if spec.warmup_s >= duration_s:
            overrides["warmup_s"] = duration_s / 10
    return spec.with_overrides(**overrides) if overrides else spec


# --- one run -------------------------------------------------------------------------


@dataclass
class _Run:
    strategy: str
    result: TrafficResult
    loads: list[LoadRecord]
    wall_s: float
    addresses: dict[str, str]
    client_stats: list[dict[str, Any]] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    sources: DecisionSources = field(default_factory=DecisionSources)


@dataclass
class Outage:
    """One fault of a run, as it happened; times in s from the start of the traffic.

    Attributes:
        fault: Its place in ``[[evaluate.faults]]``.
        kind: The fault's kind (``kill_service``).
        at_s: When it was planned.
        killed_s: When the service was SIGKILLed.
        killed_pid: The killed process.
        exit_code: Its exit code (``-9``).
        restarted_s: When the new service process was started; None when it was not.
        ready_s: When the new process listened again; None when it did not in the run.
        pid: The new process; None when there was none.
    """

    fault: int
    kind: str
    at_s: float
    killed_s: float
    killed_pid: int
    exit_code: int | None
    restarted_s: float | None = None
    ready_s: float | None = None
    pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: round(v, 6) if isinstance(v, float) else v for key, v in dataclasses.asdict(self).items()}


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class _ServiceFaults:
    """Kills and restarts one run's service as ``[[evaluate.faults]]`` says.

    Args:
        faults: The scenario's faults, in time order.
        service: The service process started for the run.
        target: Its address; a restart listens there again.
        restart_argv: The command of a restarted service (its config lists the servers).
        name: The run's child-name stem.
        group: Starts the new service processes (and stops them at the end).
        env: Their environment.
        timeout_s: Longest wait for a restarted service to listen.
        watched: The processes the run's watchdog watches: the service is taken out of it
            before it is killed, and its successor put in once it listens.
        started: The processes the run stops at its end: a successor takes the service's place.
        options: The evaluation's options (for messages).
    """

    def __init__(
        self,
        faults: Sequence[Any],
        service: Child,
        target: str,
        restart_argv: Sequence[str],
        name: str,
        group: ProcessGroup,
        env: Mapping[str, str],
        timeout_s: float,
        watched: list[Child],
        started: list[Child],
        options: EvaluateOptions,
    ) -> None:
        self.faults = list(faults)
        self.service = service
        self.target = target
        self.restart_argv = list(restart_argv)
        self.name = name
        self.group = group
        self.env = env
        self.timeout_s = timeout_s
        self.watched = watched
        self.started = started
        self.options = options
        self.outages: list[Outage] = []

    async def run(self, start: float) -> None:
        """Every fault at its time from ``start`` (monotonic s: the traffic's start).

        Raises:
            EvaluationFailed: a restarted service did not listen in time, or elsewhere.
        """
        for i, fault in enumerate(self.faults):
            await _sleep_until(start + fault.at_s)
            service = self.service
            if service in self.watched:
                self.watched.remove(service)  # before the kill: the watchdog never sees it die
            killed_s = time.monotonic() - start
            code = service.kill()
            outage = Outage(i, fault.kind, fault.at_s, killed_s, service.pid, code)
            self.outages.append(outage)
            _say(self.options, f"{self.name}: fault {i}: service (pid {service.pid}) killed at {killed_s:.2f} s")
            if fault.restart_after_s is None:
                continue
            await _sleep_until(start + fault.at_s + fault.restart_after_s)
            outage.restarted_s = time.monotonic() - start
            successor = self.group.start(f"{self.name}-service{i + 1}", self.restart_argv, env=self.env)
            self.started[self.started.index(service)] = successor
            self.service = successor
            try:
                address = (await successor.wait_for(_LISTENING, self.timeout_s)).group(1)
            except ChildFailed as exc:
                raise EvaluationFailed(f"{successor.name} did not start again after fault {i}: {exc}") from None
            if address != self.target:
                raise EvaluationFailed(f"{successor.name} listens on {address}, not on {self.target} as before")
            outage.ready_s, outage.pid = time.monotonic() - start, successor.pid
            self.watched.append(successor)
            _say(
                self.options,
                f"{self.name}: fault {i}: service back (pid {successor.pid}) at {outage.ready_s:.2f} s",
            )


async def _until_done(
    work: Awaitable[Any], watchdog: asyncio.Task[Child], faults: asyncio.Task[None] | None, title: str
) -> Any:
    """``work``'s result, unless a watched process exits or the faults fail first.

    Raises:
        EvaluationFailed: naming the process that exited, or the fault that failed.
    """
    task = asyncio.ensure_future(work)
    pending: set[asyncio.Future[Any]] = {task, watchdog, *([faults] if faults is not None else [])}
    try:
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if watchdog in done:
                raise EvaluationFailed(f"{watchdog.result().describe_exit()}\n(during the run of {title!r})")
            if faults is not None and faults in done:
                faults.result()  # raises when a fault failed; else the traffic goes on
            if task in done:
                return task.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _sample_loads(client: AsyncClient, pool: str, interval_s: float, start: float, out: list[LoadRecord]) -> None:
    """Reads the pool's load reports from the service every interval (for the report's load series)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            status = await client.load_status(pool)
        except Exception:  # noqa: BLE001 - a missed sample only thins the series
            continue
        now = time.monotonic() - start
        for p in status.pools:
            for server in p.servers:
                load = server.load
                if load is not None:
                    out.append(
                        LoadRecord(
                            now,
                            server.id,
                            load.cpu_percent,
                            load.active_requests,
                            load.mean_latency_ms,
                            load.error_rate,
                        )
                    )


async def _wait_ready(child: Child, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    try:
        return await child.wait_for(pattern, timeout_s)
    except ChildFailed as exc:
        raise EvaluationFailed(f"{child.name} did not start: {exc}") from None


async def run_strategy(
    spec: ScenarioSpec,
    strategy: str,
    plan: TrafficPlan,
    batch: BatchSettings | None,
    group: ProcessGroup,
    options: EvaluateOptions,
    progress: Callable[[int], None] | None = None,
    decisions: str = "central",
) -> _Run:
    """One strategy on a fresh service and fresh backends, its traffic from this process
    (``spec.clients`` None) or from ``spec.clients`` client processes deciding as
    ``decisions`` says, through the faults of ``[[evaluate.faults]]``; every process is
    stopped before it returns."""
    began = time.monotonic()
    name = strategy if spec.clients is None else f"{strategy}-{decisions}"  # names the files and the children
    work = options.out_dir / "runs" / name
    work.mkdir(parents=True, exist_ok=True)
    config = work / "loadwarden.toml"
    config.write_text(service_config(spec, strategy, batch), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADWARDEN_")}  # the run is the file's alone
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    settings = ClientSettings.of(spec.options.get("client"))
    started: list[Child] = []

    def serve(config: Path, listen: str) -> list[str]:
        return [*options.command, "serve", "--config", str(config), "--listen", listen, "--log-level", "WARNING"]

    try:
        service = group.start(f"{name}-service", serve(config, "127.0.0.1:0"), env=env)
        started.append(service)
        target = (await _wait_ready(service, _LISTENING, options.startup_timeout_s)).group(1)
        addresses: dict[str, str] = {}
        for i, chunk in enumerate(_chunks([s.id for s in spec.servers], spec.options.get("max_backends_per_process"))):
            argv = [
                *options.command,
                "backend-sim",
                "--scenario",
                spec.source,
                "--service",
                target,
                "--pool",
                plan.pool,
                "--register",
                "--seed",
                str(spec.seed + i),
                "--report-interval-ms",
                f"{spec.load_report_interval_ms:g}",
            ]
            if batch is not None:
                argv += ["--item-cost", f"{batch.item_cost:g}"]
            if len(chunk) < len(spec.servers):
                argv += ["--only", ",".join(chunk)]
            backends = group.start(f"{name}-backends{i}", argv, env=env)
            started.append(backends)
            line = (await _wait_ready(backends, _BACKENDS, options.startup_timeout_s)).group(1)
            addresses.update(json.loads(line)["backends"])
        watched = list(started)  # none of these may exit during the run, but a service a fault kills
        faults = None
        if spec.options.get("faults"):
            restart = work / "loadwarden-restart.toml"  # the backends do not register again: the file lists them
            restart.write_text(service_config(spec, strategy, batch, servers=addresses), encoding="utf-8")
            faults = _ServiceFaults(
                spec.options["faults"],
                service,
                target,
                serve(restart, target),
                name,
                group,
                env,
                options.startup_timeout_s,
                watched,
                started,
                options,
            )
        loads: list[LoadRecord] = []
        if spec.clients is not None:
            clients = _Clients(
                spec.clients, name, label(strategy, decisions), decisions, group, options, env, work, settings
            )
            result = await clients.run(plan, target, addresses, started, watched, loads, spec, progress, faults)
            return _Run(
                strategy,
                result,
                loads,
                time.monotonic() - began,
                addresses,
                clients.stats,
                faults.outages if faults is not None else [],
                clients.sources,
            )
        _say(options, f"{strategy}: service {target}, {len(addresses)} backends ready; sending traffic")
        async with (
            RecordingClient(target, fallback=settings.fallback, **client_options(settings, plan.mode)) as client,
            AsyncClient(target, timeout_s=5.0, breaker=None, retry=None) as sampling,  # not the traffic's
        ):
            runner = TrafficRunner(plan, client, addresses, progress=progress)
            start = time.monotonic()
            client.sources.restart()
            sampler = asyncio.create_task(
                _sample_loads(sampling, plan.pool, spec.load_report_interval_ms / 1000.0, start, loads)
            )
            watchdog = asyncio.create_task(group.watch(watched))
            faulting = asyncio.create_task(faults.run(start)) if faults is not None else None
            try:
                result = await _until_done(runner.run(), watchdog, faulting, strategy)
            finally:
                for task in (sampler, watchdog, *([faulting] if faulting is not None else [])):
                    task.cancel()
                await asyncio.gather(sampler, watchdog, *([faulting] if faulting else []), return_exceptions=True)
    finally:
        for child in reversed(started):  # backends first: none pushes load to a service already gone
            group.stop(child)
    return _Run(
        strategy,
        result,
        loads,
        time.monotonic() - began,
        addresses,
        outages=faults.outages if faults is not None else [],
        sources=client.sources,
    )


class _Clients:
    """The client processes of one run: started, told to go together, watched, their records merged.

    Args:
        count: Client processes.
        name: The run's file and child-name stem.
        title: The run's label, for messages.
        decisions: How every client decides.
        group: Starts (and at the end stops) every process.
        options: The evaluation's options.
        env: The children's environment.
        work: The run's directory: job, go and record files go there.
        settings: What ``[evaluate.client]`` turns off in every client.
    """

    def __init__(
        self,
        count: int,
        name: str,
        title: str,
        decisions: str,
        group: ProcessGroup,
        options: EvaluateOptions,
        env: Mapping[str, str],
        work: Path,
        settings: ClientSettings,
    ) -> None:
        self.count = count
        self.name = name
        self.title = title
        self.decisions = decisions
        self.group = group
        self.options = options
        self.env = env
        self.work = work
        self.settings = settings
        self.stats: list[dict[str, Any]] = []
        self.sources = DecisionSources()

    async def run(
        self,
        plan: TrafficPlan,
        target: str,
        addresses: Mapping[str, str],
        started: list[Child],
        watched: list[Child],
        loads: list[LoadRecord],
        spec: ScenarioSpec,
        progress: Callable[[int], None] | None,
        faults: _ServiceFaults | None = None,
    ) -> TrafficResult:
        """Runs ``plan`` split over the clients; ``started`` already holds the service and backends,
        ``watched`` those that may not exit (``faults`` takes its service out while it is down).

        Raises:
            EvaluationFailed: a client or another child exited early, a client was not ready in
                time, or a restarted service did not listen.
        """
        go = self.work / "go.json"
        go.unlink(missing_ok=True)
        clients: list[tuple[Child, Path]] = []
        for i in range(self.count):
            out = self.work / f"client{i}.jsonl"
            out.unlink(missing_ok=True)
            job = ClientJob(
                target=target,
                decisions=self.decisions,
                plan=dataclasses.replace(plan, client=i, clients=self.count),
                addresses=addresses,
                go_path=str(go),
                out_path=str(out),
                ready_timeout_s=self.options.startup_timeout_s,
                client=self.settings,
            )
            job_path = self.work / f"client{i}.json"
            job_path.write_text(job.to_json(), encoding="utf-8")
            child = self.group.start(
                f"{self.name}-client{i}", [*self.options.client_command, str(job_path)], env=self.env
            )
            started.append(child)
            clients.append((child, out))
        watchdog = asyncio.create_task(self.group.watch(watched))
        faulting: asyncio.Task[None] | None = None
        try:
            await _until_done(self._all_ready([c for c, _ in clients]), watchdog, None, self.title)
            start_wall = time.time() + START_DELAY_S
            tmp = go.with_name(go.name + ".tmp")
            tmp.write_text(json.dumps({"start_wall": start_wall}), encoding="utf-8")
            os.replace(tmp, go)  # a client reads it whole or not at all
            _say(
                self.options,
                f"{self.title}: service {target}, {len(addresses)} backends, {self.count} {self.decisions} "
                "clients ready; sending traffic",
            )
            # The load series and the faults' times are on the clients' clock.
            start = time.monotonic() + (start_wall - time.time())
            if faults is not None:
                faulting = asyncio.create_task(faults.run(start))
            async with AsyncClient(target, timeout_s=5.0, breaker=None, retry=None) as client:
                sampler = asyncio.create_task(
                    _sample_loads(client, plan.pool, spec.load_report_interval_ms / 1000.0, start, loads)
                )
                try:
                    await _until_done(self._all_done([c for c, _ in clients], progress), watchdog, faulting, self.title)
                finally:
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)
        finally:
            for task in (watchdog, *([faulting] if faulting is not None else [])):
                task.cancel()
            await asyncio.gather(watchdog, *([faulting] if faulting else []), return_exceptions=True)
        return self._merge([out for _, out in clients])

    async def _all_ready(self, clients: list[Child]) -> None:
        for child in clients:
            await _wait_ready(child, _READY, self.options.startup_timeout_s)

    async def _all_done(self, clients: list[Child], progress: Callable[[int], None] | None) -> None:
        """Waits for every client to exit 0, passing on their finished-request counts."""
        while True:
            codes = [child.popen.poll() for child in clients]
            for child, code in zip(clients, codes, strict=True):
                if code not in (None, 0):
                    raise EvaluationFailed(f"{child.describe_exit()}\n(during the run of {self.title!r})")
            if progress is not None:
                progress(sum(int(m[-1]) if (m := _DONE.findall(c.output())) else 0 for c in clients))
            if all(code == 0 for code in codes):
                return
            await asyncio.sleep(0.1)

    def _merge(self, outputs: list[Path]) -> TrafficResult:
        """The clients' records in arrival order, their counters summed."""
        records: list[RequestRecord] = []
        totals: dict[str, int] = {}
        duration_s = 0.0
        for i, path in enumerate(outputs):
            try:
                head, mine = read_records(path)
            except (OSError, ValueError) as exc:
                raise EvaluationFailed(f"{self.name}-client{i}: no records ({exc})") from None
            records += mine
            for key, value in head["counters"].items():
                totals[key] = totals.get(key, 0) + int(value)
            duration_s = max(duration_s, float(head["duration_s"]))
            self.stats.append({"client": i, "requests": len(mine), **head["stats"]})
            self.sources.merge([DecisionSources.from_json(head.get("decisions", {}))])
        records.sort(key=lambda r: r.time_s)
        return TrafficResult(
            tuple(records),
            dropped=totals.get("dropped", 0),
            rejected=totals.get("rejected", 0),
            timeouts=totals.get("timed_out", 0),
            unrouted=totals.get("unavailable", 0),
            fallbacks=totals.get("fallbacks", 0),
            duration_s=duration_s,
            local=totals.get("local", 0),
            stale=totals.get("stale", 0),
            late=totals.get("late", 0),
        )


def _say(options: EvaluateOptions, message: str) -> None:
    stream = options.progress_stream if options.progress_stream is not None else sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    stream.write(("\r\x1b[K" if tty else "") + f"evaluate: {message}\n")
    stream.flush()


def _chunks(ids: list[str], size: int | None) -> list[list[str]]:
    if not size or size >= len(ids):
        return [ids]
    return [ids[i : i + size] for i in range(0, len(ids), size)]


# --- the whole evaluation ------------------------------------------------------------


def simulator_comparison(spec: ScenarioSpec) -> dict[str, Summary]:
    """The simulator's summary of every run (by label) on the same scenario (mode route only)."""
    from ._sim import simulate

    out: dict[str, Summary] = {}
    scenario = spec.scenario()
    ids = [s.id for s in spec.servers]
    server_log = logging.getLogger("loadwarden.server")
    level = server_log.level
    server_log.setLevel(logging.ERROR)  # the in-process core's ejection warnings are the simulator's, not the run's
    try:
        for strategy, mode in spec.runs():
            if strategy in spec.variants:
                continue  # its service config is not the in-process core's
            result = simulate(
                scenario,
                strategy,
                spec.strategy_params(strategy),
                decisions=mode,
                clients=spec.clients or 1,
                push_interval_ms=spec.route_push_interval_ms,
            )
            try:
                out[label(strategy, mode)] = summarize(result.records, ids, warmup_s=spec.warmup_s)
            except ValueError:
                continue  # nothing after the warm-up
    finally:
        server_log.setLevel(level)
    return out


def _progress_total(spec: ScenarioSpec, plan: TrafficPlan) -> tuple[int, bool]:
    """(units per strategy, whether units are requests); closed loop without a count uses seconds."""
    planned = planned_requests(plan)
    if planned is not None:
        return planned, True
    return math.ceil(spec.traffic.duration_s or 0), False


async def evaluate(spec: ScenarioSpec, options: EvaluateOptions, group: ProcessGroup) -> Evaluation:
    """Runs every strategy of ``spec`` (``[evaluate]`` applied already) and builds the report.

    Raises:
        ValueError: the ``[batch]`` table or a controller's params are invalid (before anything starts).
        EvaluationFailed: a process did not start or died during a run.
    """
    batch = check_batch(spec)
    check_service_configs(spec, batch)
    plan = traffic_plan(spec, batch)
    per_strategy, by_request = _progress_total(spec, plan)
    server_ids = tuple(s.id for s in spec.servers)
    runs: list[StrategyRun] = []
    summaries: dict[str, BatchSummary | None] = {}
    batches: dict[str, tuple[BatchRecord, ...]] = {}
    peaks: dict[str, PeakSummary] = {}
    began = time.monotonic()
    with Progress(per_strategy * len(spec.runs()), "evaluate", stream=options.progress_stream) as bar:
        for strategy, mode in spec.runs():
            bar.set_label(f"evaluate {label(strategy, mode)}")
            base = bar.done

            def advance(done: int, base: int = base) -> None:
                bar.advance(max(0, min(base + done, base + per_strategy) - bar.done))

            ticker = None if by_request else asyncio.create_task(_tick(advance))
            try:
                run = await run_strategy(
                    spec,
                    strategy,
                    plan,
                    batch,
                    group,
                    options,
                    progress=advance if by_request else None,
                    decisions=mode,
                )
            finally:
                if ticker is not None:
                    ticker.cancel()
            bar.advance(max(0, base + per_strategy - bar.done))
            extra: dict[str, Any] = {"addresses": run.addresses, "decision_sources": run.sources.totals()}
            if spec.clients is not None:
                extra["clients"] = run.client_stats
            if spec.options.get("faults"):
                extra["outages"] = outage_extra(run.outages, run.sources, run.result.duration_s)
                end_s = max(run.result.duration_s, 1e-3)
                extra["decision_sources_over_time"] = run.sources.series(max(0.1, end_s / 100), end_s)
            if spec.mode == "batch":
                assert batch is not None
                batches[strategy] = run.result.batches
                summary = summaries[strategy] = summarize_batches(run.result.batches, warmup_s=spec.warmup_s)
                extra["batch"] = summary.as_dict() if summary else None
                surges = spec.traffic.surges
                if surges is not None:
                    until = spec.traffic.duration_s or run.result.duration_s
                    windows = peak_windows(surges, until, before_s=batch.peak_before_s, warmup_s=spec.warmup_s)
                    peak = peaks[strategy] = summarize_peaks(run.result.batches, run.result.records, windows)
                    extra["batch_peaks"] = peak.as_dict()
            if strategy in spec.variants:
                extra["variant"] = spec.variants[strategy].as_dict()
            runs.append(
                StrategyRun(
                    strategy=strategy,
                    records=run.result.records,
                    server_ids=server_ids,
                    loads=run.loads,
                    counters=run.result.counters(),
                    wall_s=round(run.wall_s, 3),
                    extra=extra,
                    decisions=mode,
                )
            )
    comparison = simulator_comparison(spec) if spec.mode == "route" else None
    meta = {
        "wall_s": round(time.monotonic() - began, 3),
        "command": " ".join(sys.argv),
        "run_id": group.run_id,
        "python": sys.version.split()[0],
        "client": ClientSettings.of(spec.options.get("client")).as_dict(),
        "faults": [fault.model_dump() for fault in spec.options.get("faults", ())],
    }
    report = Report(spec, tuple(runs), kind="evaluate", comparison=comparison, meta=meta)
    return Evaluation(report, summaries, batches, peaks, batch.peak_before_s if batch is not None else 0.0)


def outage_extra(outages: Sequence[Outage], sources: DecisionSources, end_s: float) -> list[dict[str, Any]]:
    """Each outage for ``report.json``: the ``Outage``, the decisions asked for while the service
    was down (from the kill until it listened again, or the run's end), by source, and
    ``back_to_service_s``: from its listening again to the first decision the service made."""
    out = []
    for outage in outages:
        until = outage.ready_s if outage.ready_s is not None else max(end_s, outage.killed_s)
        back = None
        if outage.ready_s is not None and (first := sources.first("service", outage.ready_s)) is not None:
            back = round(first - outage.ready_s, 3)
        out.append(
            {
                **outage.as_dict(),
                "until_s": round(until, 6),
                "decisions": sources.between(outage.killed_s, until),
                "back_to_service_s": back,
            }
        )
    return out


async def _tick(advance: Callable[[int], None]) -> None:
    seconds = 0
    while True:
        await asyncio.sleep(1.0)
        seconds += 1
        advance(seconds)


def batch_markdown(evaluation: Evaluation) -> str:
    """Mode batch: the batch table that follows the main one."""
    if not evaluation.batch:
        return ""
    text = "\nBatches (the background requests above share the backends):\n\n" + render_batch_markdown(evaluation.batch)
    if evaluation.peaks:
        text += "\n" + render_peaks_markdown(evaluation.peaks, evaluation.peak_before_s)
    return text


def write_batch_csv(evaluation: Evaluation, path: Path) -> Path:
    """``batches.csv``: every batch of every run."""
    with path.open("w", encoding="utf-8") as out:
        out.write("strategy,timestamp_s,server,size,latency_ms,success,load_score,forecast\n")
        for strategy, batches in evaluation.batches.items():
            for b in batches:
                score = "" if b.load_score is None else f"{b.load_score:.2f}"
                out.write(
                    f"{strategy},{b.time_s:.6f},{b.server},{b.size},{b.latency_ms:.3f},{int(b.success)},{score},"
                    f"{int(b.forecast)}\n"
                )
    return path
