"""Simulated backends and traffic, routed by the real decision core; scenario files and reports.
May import the public names of loadwarden.policy, .server, .sdk and .observability only.

A seeded discrete-event simulation: arrivals (open-loop Poisson, optionally
ramping and bounded in flight, or closed-loop users) ask ``DecisionCore.select``
for a server, queue at it (FIFO, ``workers`` at a time, with slowdown and outage
phases and client timeouts), and report their latency and success back; servers
report their load every interval. The same seed gives the same result, and
strategies see identical traffic::

    from loadwarden.backend_sim import Arrivals, Scenario, SimServer, capacity_per_s, simulate

    servers = tuple(SimServer(f"s{i}", speed=s) for i, s in enumerate((5, 5, 5, 5, 1)))
    arrivals = Arrivals(rate_per_s=0.8 * capacity_per_s(servers), requests=20_000)
    result = simulate(Scenario(servers, arrivals, seed=1), "least_connections")
    print(result.summary(warmup=2_000).p99_ms)

Scenario files (``scenarios/README.md``) drive ``loadwarden simulate`` and
``loadwarden evaluate``; both build a ``Report`` of one ``StrategyRun`` per
strategy and write it with ``write_report`` and ``write_plots``::

    spec = load_scenario("scenarios/heterogeneous.toml").for_simulate()
    runs = []
    for name in spec.strategies:
        result = simulate(spec.scenario(), name, spec.strategy_params(name))
        runs.append(StrategyRun(name, result.records, tuple(s.id for s in spec.servers), result.loads))
    print(render_markdown(Report(spec, tuple(runs))))

``scenario_schema()`` is the JSON Schema of a scenario file, for editors.
"""

from ._backend import RunningBackend, SimulatedBackend, start_backend
from ._batch_mode import BatchRecord, BatchSettings
from ._config import MAX_REQUESTS, Arrivals, ClosedLoop, Phase, Scenario, SimServer, Surges, capacity_per_s
from ._plots import PlotsUnavailable, write_plots
from ._processes import ProcessGroup
from ._progress import Progress
from ._report import Report, StrategyRun, render_markdown, write_report
from ._scenario_file import ScenarioError, ScenarioSpec, Traffic, Variant, load_scenario, parse_scenario
from ._scenario_tables import scenario_schema
from ._sim import CoreTiming, SimResult, simulate
from ._summary import LoadRecord, RequestLog, RequestRecord, Summary, reward, summarize
from ._traffic import TrafficPlan, TrafficResult, TrafficRunner

__all__ = [
    "MAX_REQUESTS",
    "Arrivals",
    "BatchRecord",
    "BatchSettings",
    "ClosedLoop",
    "CoreTiming",
    "LoadRecord",
    "Phase",
    "PlotsUnavailable",
    "ProcessGroup",
    "Progress",
    "Report",
    "RequestLog",
    "RequestRecord",
    "RunningBackend",
    "Scenario",
    "ScenarioError",
    "ScenarioSpec",
    "SimResult",
    "SimServer",
    "SimulatedBackend",
    "StrategyRun",
    "Summary",
    "Surges",
    "Traffic",
    "TrafficPlan",
    "TrafficResult",
    "TrafficRunner",
    "Variant",
    "capacity_per_s",
    "load_scenario",
    "parse_scenario",
    "render_markdown",
    "reward",
    "scenario_schema",
    "simulate",
    "start_backend",
    "summarize",
    "write_plots",
    "write_report",
]
