"""``loadwarden simulate SCENARIO.toml``: compare strategies in the discrete-event simulator.

Validates the whole file first (a bad file exits 2 with
``loadwarden simulate: <file>: <key>: <problem>`` and writes nothing), runs each
strategy on the same seeded traffic, prints the Markdown table and writes the
report (and, with matplotlib, the plots) into ``--out``.

With ``decisions = ["central", "local"]`` (or ``--decisions central,local``)
every strategy runs once per mode, side by side in the same report: central,
the core decides every request; local, ``clients`` simulated clients decide
from the tables the core's pool is turned into every push interval.

With ``[provisioning]`` (a trace played while servers come and go) the runs are the
provisioning modes instead, each with the file's one routing strategy: every mode on the
same trace and seed, compared in a provisioning table (server-hours, time
under-provisioned, p99 and success over the evaluation window).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from ._config import Arrivals
from ._plots import PlotsUnavailable, write_plots
from ._progress import Progress
from ._provisioning import Provisioner
from ._report import Report, StrategyRun, label, render_markdown, write_report
from ._scenario_file import ScenarioError, ScenarioSpec, TraceTraffic, decision_overrides, load_scenario
from ._sim import SimResult, simulate

PROG = "loadwarden simulate"


def add_command(commands: argparse._SubParsersAction[Any]) -> None:
    """Adds ``simulate`` to the ``loadwarden`` subcommands."""
    parser = commands.add_parser(
        "simulate",
        help="compare strategies on a scenario file in a discrete-event simulation (virtual time)",
        description="Runs every strategy of SCENARIO.toml through the real decision core in a seeded "
        "discrete-event simulation (no network, virtual time), prints a Markdown table and "
        "writes report.md, report.json, summary.csv, requests.csv and PNG plots. "
        "The file's [simulate] section applies. Format: scenarios/README.md.",
    )
    parser.add_argument("scenario", metavar="SCENARIO.toml", help="scenario file")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: eval-out/<name>/simulate)")
    parser.add_argument("--strategies", metavar="A,B", help="run these strategies instead of the file's list")
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="requests per strategy; replaces the file's duration unless the rate ramps over it",
    )
    parser.add_argument(
        "--decisions",
        metavar="MODES",
        help='decision modes to run each strategy in, e.g. "central,local" (default: the file\'s, else central)',
    )
    parser.add_argument(
        "--clients",
        type=int,
        metavar="N",
        help="simulated clients deciding locally (with local decisions; default: the file's, else 3)",
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="simulated seconds of traffic instead of the file's (a trace: play only its first S s)",
    )
    parser.add_argument("--seed", type=int, metavar="N", help="seed instead of the file's")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def load(args: argparse.Namespace) -> ScenarioSpec:
    """The scenario with ``[simulate]`` and the command-line overrides applied.

    Raises:
        ScenarioError: a bad file or override, or a mode the simulator does not run.
    """
    overrides: dict[str, Any] = {}
    if args.strategies is not None:
        overrides["strategies"] = [name.strip() for name in args.strategies.split(",") if name.strip()]
    if args.seed is not None:
        overrides["seed"] = args.seed
    overrides.update(decision_overrides(args.decisions, args.clients))
    spec = load_scenario(args.scenario, **overrides).for_simulate()
    if args.duration_s is not None:
        spec = spec.with_overrides(duration_s=args.duration_s)
    if args.requests is not None:
        extra: dict[str, Any] = {"requests": args.requests}
        if spec.traffic.rate_end_per_s is None:
            extra["duration_s"] = None  # N requests, however long they take
        spec = spec.with_overrides(**extra)
    if spec.mode != "route":
        raise ScenarioError(
            "mode",
            f'loadwarden simulate runs mode "route" only, this scenario is mode {spec.mode!r}; '
            "run it with loadwarden evaluate",
            spec.source,
        )
    return spec


def _estimate(spec: ScenarioSpec) -> int:
    """Roughly how many requests one strategy's run starts (for the progress bar)."""
    arrivals = spec.traffic.arrivals()
    t = spec.traffic
    if isinstance(arrivals, Arrivals):  # kind "open"
        return max(1, int(arrivals.expected_requests))
    if t.requests is not None:
        return t.requests
    assert t.users is not None and t.duration_s is not None
    per_request_s = t.think_ms / 1000.0 + min(s.base_ms / s.speed for s in spec.servers) / 1000.0
    return max(1, int(t.users * t.duration_s / per_request_s))


def _runs(spec: ScenarioSpec) -> list[tuple[str, str]]:
    """(label, decision mode) of every run: the strategies by mode, or the provisioning modes."""
    if spec.provisioning is not None:
        return [(mode, "central") for mode in spec.provisioning.modes]
    return spec.runs()


def run_all(spec: ScenarioSpec, progress: Progress | None = None) -> tuple[list[StrategyRun], dict[str, Any]]:
    """Simulates every strategy of ``spec`` in each decision mode (or, with provisioning, the
    one strategy in every provisioning mode); returns the runs and timing figures by run label."""
    scenario = spec.scenario()
    runs: list[StrategyRun] = []
    timing: dict[str, Any] = {}
    estimate = _estimate(spec)
    traffic = spec.traffic
    curve = traffic.curve() if isinstance(traffic, TraceTraffic) else None
    for i, (name, mode) in enumerate(_runs(spec)):
        key = label(name, mode)
        if progress is not None:
            progress.set_label(f"simulate {key}")
            base = i * estimate

            def advance(n: int, base: int = base) -> None:
                progress.update(min(base + estimate, progress.done + n))

        strategy = spec.strategies[0] if spec.provisioning is not None else name
        provisioner = None
        if spec.provisioning is not None:
            assert curve is not None
            provisioner = Provisioner(name, spec.provisioning, spec.servers[0], curve)
        began, began_cpu = time.perf_counter(), time.process_time()
        result = simulate(
            scenario,
            strategy,
            spec.strategy_params(strategy),
            timer=time.perf_counter,
            progress=advance if progress is not None else None,
            decisions=mode,
            clients=spec.clients or 1,
            push_interval_ms=spec.route_push_interval_ms,
            curve=curve,
            provisioner=provisioner,
        )
        wall, cpu = time.perf_counter() - began, time.process_time() - began_cpu
        if progress is not None:
            progress.update((i + 1) * estimate)
        core = result.timing
        assert core is not None
        n = len(result.records)
        timing[key] = {
            "requests": n,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "core_select_us": round(core.select_us, 2),
            "core_outcome_us": round(core.outcome_us, 2),
            "core_load_report_s": round(core.load_s, 3),
            "core_us_per_request": round(core.core_s / n * 1e6, 2) if n else None,
            "des_us_per_request": round((wall - core.core_s) / n * 1e6, 2) if n else None,
        }
        extra: dict[str, Any] = {}
        if provisioner is not None:
            figures = provisioner.figures(spec.evaluation_window)
            extra = {"routing": strategy, "provisioning": figures.as_dict()}
            if figures.forecast_s is not None:
                timing[key]["forecast_s"] = figures.forecast_s
                timing[key]["forecasts"] = figures.forecasts
        runs.append(
            StrategyRun(
                strategy=name,
                records=result.records,
                server_ids=_server_ids(spec, result),
                loads=result.loads,
                strategy_stats=result.strategy_stats,
                counters={k: v for k, v in result.counters.items() if v},
                wall_s=wall,
                extra=extra,
                decisions=mode,
            )
        )
    return runs, timing


def _server_ids(spec: ScenarioSpec, result: SimResult) -> tuple[str, ...]:
    """The run's servers: the scenario's, or (provisioning) every id a server of the run had."""
    if spec.provisioning is not None:
        return result.records.server_ids
    return tuple(s.id for s in spec.servers)


def run(args: argparse.Namespace) -> int:
    """Runs ``loadwarden simulate``; returns the exit code."""
    try:
        spec = load(args)
    except ScenarioError as exc:
        return _fail(str(exc))
    out = Path(args.out) if args.out else Path("eval-out") / spec.name / "simulate"
    # The core logs each outlier ejection; in a simulation they are counted in the report instead.
    logging.getLogger("loadwarden.server").setLevel(logging.ERROR)
    estimate = _estimate(spec)
    began = time.perf_counter()
    try:
        with Progress(estimate * len(_runs(spec)), "simulate") as bar:
            runs, timing = run_all(spec, bar)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    except ValueError as exc:  # validated before, so only a bug or an unexpected combination lands here
        return _fail(f"{spec.source}: {exc}")
    elapsed = time.perf_counter() - began
    for name, figures in timing.items():
        forecasts = (
            f"; {figures['forecasts']} forecasts in {figures['forecast_s']:.1f} s" if "forecast_s" in figures else ""
        )
        print(
            f"{name}: {figures['requests']:,} requests in {figures['wall_s']:.1f} s ({figures['cpu_s']:.1f} s CPU; "
            f"{figures['core_us_per_request']} µs/request in the decision core, "
            f"{figures['des_us_per_request']} µs/request in the simulator{forecasts})",
            file=sys.stderr,
        )
    report = Report(
        spec,
        tuple(runs),
        kind="simulate",
        meta={
            "command": "simulate",
            "argv": sys.argv[1:],
            "wall_s": round(elapsed, 3),
            "timing": timing,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
    )
    print(render_markdown(report))
    paths = write_report(report, out)
    if not args.no_plots:
        try:
            paths += write_plots(report, out)
        except PlotsUnavailable as exc:
            print(str(exc), file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    return 0
