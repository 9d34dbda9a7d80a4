"""``loadwarden evaluate SCENARIO.toml``: compare strategies on real processes.

Exit codes: 0 done; 1 a run failed (a process did not start or died; every
process started is stopped); 2 a bad scenario file or option (nothing started);
130 / 143 interrupted by SIGINT / SIGTERM (every process started is stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ._evaluate import (
    DEFAULT_STARTUP_TIMEOUT_S,
    EvaluateOptions,
    EvaluationFailed,
    batch_markdown,
    check_batch,
    check_service_configs,
    evaluate,
    scale_duration,
    write_batch_csv,
)
from ._processes import MARKER_ENV, ProcessGroup
from ._report import render_markdown, write_report
from ._scenario_file import ScenarioError, ScenarioSpec, decision_overrides, load_scenario

_EXIT_BY_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def add_command(commands: argparse._SubParsersAction[Any]) -> None:
    """Adds ``evaluate`` to the ``loadwarden`` command."""
    parser = commands.add_parser(
        "evaluate",
        help="run each strategy of a scenario on real processes (service + simulated backends) and compare",
        description="Runs every strategy of SCENARIO on a fresh `loadwarden serve` and fresh `loadwarden "
        "backend-sim` processes with the same seeded traffic; prints a Markdown table and writes "
        "JSON, CSV and (with the eval extra) PNG plots.",
    )
    parser.add_argument("scenario", metavar="SCENARIO.toml", help="scenario file (see scenarios/README.md)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default eval-out/<name>/evaluate)")
    parser.add_argument("--strategies", metavar="A,B", help="run only these strategies, in this order")
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--duration-scale",
        type=float,
        metavar="X",
        help="multiply the traffic's duration, request count and warm-up by X",
    )
    length.add_argument("--duration-s", type=float, metavar="S", help="traffic duration per strategy, seconds")
    parser.add_argument(
        "--decisions",
        metavar="MODES",
        help='decision modes to run each strategy in, e.g. "central,local" (default: the file\'s, else central)',
    )
    parser.add_argument(
        "--clients",
        type=int,
        metavar="N",
        help="client processes sending the traffic, in both modes, when local decisions are run "
        "(default: the file's, else 3)",
    )
    parser.add_argument("--seed", type=int, help="seed (default: the scenario's)")
    parser.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    parser.add_argument(
        "--startup-timeout-s",
        type=float,
        default=None,
        help=f"longest wait for each process to be ready (default: the scenario's "
        f"[evaluate] startup_timeout_s, else {DEFAULT_STARTUP_TIMEOUT_S:g})",
    )
    parser.set_defaults(run=run)


def _fail(message: str, code: int) -> int:
    print(f"loadwarden evaluate: {message}", file=sys.stderr)
    return code


def load(args: argparse.Namespace) -> ScenarioSpec:
    """The scenario with the options applied and ``[evaluate]`` over it.

    Raises:
        ScenarioError: naming the key; ValueError: naming the option.
    """
    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.strategies is not None:
        names = [s.strip() for s in args.strategies.split(",") if s.strip()]
        if not names:
            raise ValueError("--strategies: name at least one strategy")
        overrides["strategies"] = names
    overrides.update(decision_overrides(args.decisions, args.clients))
    spec = load_scenario(args.scenario, **overrides).for_evaluate()
    spec = scale_duration(spec, scale=args.duration_scale, duration_s=args.duration_s)
    check_service_configs(spec, check_batch(spec))
    return spec


def run(args: argparse.Namespace) -> int:
    """Runs ``loadwarden evaluate``; returns the exit code."""
    # gRPC core logs every fork (children are forked while channels are open) at INFO.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        spec = load(args)
    except (ScenarioError, ValueError) as exc:
        return _fail(str(exc), 2)
    timeout = args.startup_timeout_s or spec.options.get("startup_timeout_s") or DEFAULT_STARTUP_TIMEOUT_S
    if not 0 < timeout < float("inf"):
        return _fail(f"--startup-timeout-s: must be a positive number, got {timeout!r}", 2)
    out = Path(args.out) if args.out else Path("eval-out") / spec.name / "evaluate"
    options = EvaluateOptions(
        out_dir=out,
        plots=not args.no_plots,
        startup_timeout_s=float(timeout),
        run_id=os.environ.get(MARKER_ENV) or None,
    )
    return asyncio.run(_main(spec, options))


async def _main(spec: ScenarioSpec, options: EvaluateOptions) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    caught: list[signal.Signals] = []

    def interrupt(sig: signal.Signals) -> None:
        if not caught:
            caught.append(sig)
            task.cancel()

    for sig in _EXIT_BY_SIGNAL:
        loop.add_signal_handler(sig, interrupt, sig)
    group = ProcessGroup(options.out_dir / "logs", run_id=options.run_id)
    clients = "" if spec.clients is None else f", decisions {' and '.join(spec.decisions)}, {spec.clients} clients"
    print(
        f"loadwarden evaluate: {spec.name} ({len(spec.strategies)} strategies, mode {spec.mode}{clients}); "
        f"run {group.run_id}; logs in {group.log_dir}",
        file=sys.stderr,
        flush=True,
    )
    try:
        evaluation = await evaluate(spec, options, group)
    except asyncio.CancelledError:
        if not caught:
            raise
        task.uncancel()
        stopped = _stop(group)
        return _fail(f"interrupted by {caught[0].name}; {stopped}; no report written", _EXIT_BY_SIGNAL[caught[0]])
    except EvaluationFailed as exc:
        stopped = _stop(group)
        return _fail(f"{exc}\n{stopped}; no report written", 1)
    finally:
        group.close()
        for sig in _EXIT_BY_SIGNAL:
            loop.remove_signal_handler(sig)
    markdown = render_markdown(evaluation.report) + batch_markdown(evaluation)
    files = write_report(evaluation.report, options.out_dir)
    files[0].write_text(markdown, encoding="utf-8")  # report.md with the batch table, when there is one
    if evaluation.batches:
        files.append(write_batch_csv(evaluation, options.out_dir / "batches.csv"))
    print(markdown, flush=True)
    if options.plots:
        files += _plots(evaluation, options.out_dir)
    print("wrote " + ", ".join(str(p) for p in files), file=sys.stderr)
    return 0


def _stop(group: ProcessGroup) -> str:
    group.close()
    return f"all {len(group.children)} process(es) it started are stopped"


def _plots(evaluation: Any, out_dir: Path) -> list[Path]:
    from ._plots import PlotsUnavailable, write_plots

    try:
        paths = write_plots(evaluation.report, out_dir)
    except PlotsUnavailable as exc:
        print(f"loadwarden evaluate: {exc}", file=sys.stderr)
        return []
    if evaluation.batches:
        from ._batch_mode import write_batch_plot

        paths.append(
            write_batch_plot(
                evaluation.batches, out_dir / "batch_sizes.png", title=f"{evaluation.report.spec.name}: batch sizes"
            )
        )
    return paths
