"""Simulated backends and traffic, routed by the real decision core.

A seeded discrete-event simulation: Poisson arrivals ask ``DecisionCore.select``
for a server, queue at it (FIFO, ``workers`` at a time), and report their
latency and success back; servers report their load every interval. The same
seed gives the same result, and strategies see identical traffic::

    from loadwarden.backend_sim import Arrivals, Scenario, SimServer, capacity_per_s, simulate

    servers = tuple(SimServer(f"s{i}", speed=s) for i, s in enumerate((5, 5, 5, 5, 1)))
    arrivals = Arrivals(rate_per_s=0.8 * capacity_per_s(servers), requests=20_000)
    result = simulate(Scenario(servers, arrivals, seed=1), "least_connections")
    print(result.summary(warmup=2_000).p99_ms)
"""

from ._config import MAX_REQUESTS, Arrivals, Phase, Scenario, SimServer, capacity_per_s
from ._sim import CoreTiming, SimResult, simulate
from ._summary import LoadRecord, RequestRecord, Summary, reward, summarize

__all__ = [
    "MAX_REQUESTS",
    "Arrivals",
    "CoreTiming",
    "LoadRecord",
    "Phase",
    "RequestRecord",
    "Scenario",
    "SimResult",
    "SimServer",
    "Summary",
    "capacity_per_s",
    "reward",
    "simulate",
    "summarize",
]
