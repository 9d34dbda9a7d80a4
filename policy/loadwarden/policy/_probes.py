"""Active health checks' verdicts: how answers to a server's checks make it healthy,
degraded or unhealthy (Envoy's thresholds). The shell runs the checks (HTTP GET,
``grpc.health.v1``); this module only counts their answers, so it is pure.

A failed check (an error status, a refused connection, a timeout) counts towards
``unhealthy_threshold``; that many in a row make the server UNHEALTHY: it is left
out of routing as an ejected server is, panic rules included. A passing check
that says the server is degraded (or, with ``degraded_latency_ms``, one that
answers slower than that) makes it DEGRADED at once: it stays routable at
``degraded_share`` of its weight. ``healthy_threshold`` passing checks in a row
bring an UNHEALTHY server back (DEGRADED when the last of them says so), and
that many good ones in a row bring a DEGRADED server back to HEALTHY. The first
passing check concludes an UNCHECKED server's state; failures before it keep it
UNCHECKED, and routed, until there are ``unhealthy_threshold`` of them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Probed(enum.Enum):
    """What active health checks last concluded about a server."""

    UNCHECKED = "unchecked"  # no health check covers it, or none has concluded yet
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # answers slowly or says it is degraded: chosen at a reduced weight
    UNHEALTHY = "unhealthy"  # failed its checks: never chosen (unless the pool panics)


class Answer(enum.Enum):
    """One check's result as the shell saw it."""

    GOOD = "good"
    DEGRADED = "degraded"  # it answered, and said it is degraded
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ProbeRules:
    """How check answers turn into a state.

    Attributes:
        unhealthy_threshold: Failed checks in a row that make a server unhealthy, >= 1.
        healthy_threshold: Passing checks in a row that bring it back, >= 1.
        degraded_latency_ms: A passing check slower than this counts as degraded; 0 is off.
        degraded_share: A degraded server's share of its weight, (0, 1].
    """

    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    degraded_latency_ms: float = 0.0
    degraded_share: float = 0.25

    def __post_init__(self) -> None:
        for name in ("unhealthy_threshold", "healthy_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.degraded_latency_ms) and self.degraded_latency_ms >= 0):
            raise ValueError(f"degraded_latency_ms: must be a finite number >= 0, got {self.degraded_latency_ms!r}")
        if not (0.0 < self.degraded_share <= 1.0):
            raise ValueError(f"degraded_share: must be in (0, 1], got {self.degraded_share!r}")


@dataclass(slots=True)
class ProbeRecord:
    """What checks found about one server so far (``Backend.probe``).

    Attributes:
        state: The verdict.
        consecutive_failures: Failed checks in a row.
        consecutive_successes: Passing checks (good or degraded) in a row.
        consecutive_good: Good (not degraded) checks in a row.
        checks_total: Checks counted.
        degraded_total: Of them, passing checks that found the server degraded.
        failed_total: Of them, failed checks.
        latency_ms: How long the last check took.
        problem: Why the last check failed or found the server degraded; empty when good.
        checked_wall: Wall time (s) of the last check; None before any.
    """

    state: Probed = Probed.UNCHECKED
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    consecutive_good: int = 0
    checks_total: int = 0
    degraded_total: int = 0
    failed_total: int = 0
    latency_ms: float = 0.0
    problem: str = ""
    checked_wall: float | None = None

    def record(self, answer: Answer, latency_ms: float, problem: str, wall: float, rules: ProbeRules) -> Probed:
        """Counts one check's answer and returns the new state (also in ``state``).

        ``problem`` says why a FAILED or DEGRADED answer is one; a GOOD answer slower
        than ``rules.degraded_latency_ms`` counts as DEGRADED, and says so.
        """
        if answer is Answer.GOOD and 0 < rules.degraded_latency_ms < latency_ms:
            answer = Answer.DEGRADED
            problem = f"answered in {latency_ms:.0f} ms (degraded above {rules.degraded_latency_ms:g} ms)"
        self.checks_total += 1
        self.latency_ms, self.checked_wall = latency_ms, wall
        self.problem = "" if answer is Answer.GOOD else problem
        if answer is Answer.DEGRADED:
            self.degraded_total += 1
        if answer is Answer.FAILED:
            self.failed_total += 1
            self.consecutive_failures += 1
            self.consecutive_successes = self.consecutive_good = 0
            if self.consecutive_failures >= rules.unhealthy_threshold:
                self.state = Probed.UNHEALTHY
            return self.state
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        self.consecutive_good = self.consecutive_good + 1 if answer is Answer.GOOD else 0
        passing = Probed.HEALTHY if answer is Answer.GOOD else Probed.DEGRADED
        if self.state is Probed.UNHEALTHY:
            if self.consecutive_successes >= rules.healthy_threshold:
                self.state = passing
        elif passing is Probed.DEGRADED or self.state is not Probed.DEGRADED:
            self.state = passing
        elif self.consecutive_good >= rules.healthy_threshold:
            self.state = Probed.HEALTHY
        return self.state
