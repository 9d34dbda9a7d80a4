"""Readiness over its dependencies, with a manual clock and dependencies the test steers."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadwarden.policy import ManualClock
from loadwarden.server.app._readiness import MonitorDependency, Readiness, RedisDependency


@dataclass
class Steered:
    name: str
    critical: bool = True
    failing: str | None = None
    asked: int = 0

    async def problem(self) -> str | None:
        self.asked += 1
        return self.failing


@dataclass
class Announced:
    changes: list[bool] = field(default_factory=list)

    async def __call__(self, ready: bool) -> None:
        self.changes.append(ready)


def _readiness(*deps: Steered) -> tuple[Readiness, Announced, ManualClock]:
    clock = ManualClock(start=0.0, wall_offset=1_000.0)
    announced = Announced()
    return Readiness(deps, 1.0, clock, announced), announced, clock


async def test_a_critical_failure_is_not_ready_and_says_which_and_since_when() -> None:
    redis, monitor = Steered("redis"), Steered("load_monitor", critical=False)
    readiness, announced, clock = _readiness(redis, monitor)
    await readiness.check_now()
    assert readiness.ready and announced.changes == [True]
    assert readiness.document() == {
        "status": "ready",
        "checks": {
            "redis": {"state": "ok", "critical": True, "since": 1_000.0},
            "load_monitor": {"state": "ok", "critical": False, "since": 1_000.0},
        },
    }
    clock.advance(5.0)
    redis.failing = "unreachable: ConnectionError: refused"
    await readiness.check_now()
    assert not readiness.ready and announced.changes == [True, False]
    assert readiness.document()["status"] == "not_ready"
    assert readiness.document()["checks"]["redis"] == {
        "state": "failing",
        "critical": True,
        "detail": "unreachable: ConnectionError: refused",
        "since": 1_005.0,
    }
    await readiness.check_now()  # no change, no announcement
    assert announced.changes == [True, False]
    clock.advance(2.0)
    redis.failing = None
    await readiness.check_now()
    assert readiness.ready and announced.changes == [True, False, True]
    assert readiness.document()["checks"]["redis"]["since"] == 1_007.0


async def test_a_failing_non_critical_dependency_is_degraded_but_ready() -> None:
    monitor = Steered("load_monitor", critical=False, failing="host load sample is 9.0 s old")
    readiness, announced, _ = _readiness(Steered("redis"), monitor)
    await readiness.check_now()
    assert readiness.ready and announced.changes == [True]
    document = readiness.document()
    assert document["status"] == "degraded"
    assert document["checks"]["load_monitor"]["detail"] == "host load sample is 9.0 s old"


async def test_marked_failing_from_outside_is_not_ready_at_once_until_a_check_passes() -> None:
    redis = Steered("redis")
    readiness, announced, _ = _readiness(redis)
    await readiness.check_now()
    readiness.mark_failing("redis", "calls to Redis fail")
    assert not readiness.ready
    assert readiness.document()["checks"]["redis"]["detail"] == "calls to Redis fail"
    readiness.mark_failing("nope", "ignored")  # not a dependency: nothing happens
    await readiness.check_now()  # the PING passes: Redis is back
    assert readiness.ready
    assert announced.changes[-1] is True


async def test_a_stop_is_never_ready_again() -> None:
    redis = Steered("redis")
    readiness, announced, _ = _readiness(redis)
    await readiness.check_now()
    await readiness.stopping()
    await readiness.check_now()
    assert not readiness.ready and announced.changes == [True, False]
    document = readiness.document()
    assert document["status"] == "not_ready"
    assert document["checks"]["shutdown"] == {"state": "failing", "critical": True, "detail": "the service is stopping"}


async def test_no_dependencies_is_ready() -> None:
    readiness, _announced, _ = _readiness()
    await readiness.check_now()
    assert readiness.ready and readiness.document() == {"status": "ready", "checks": {}}


async def test_redis_dependency_reports_errors_and_timeouts_and_follows_its_criticality() -> None:
    critical = [True]

    async def refused() -> None:
        raise ConnectionRefusedError("Connection refused")

    async def ok() -> bool:
        return True

    async def hangs() -> None:
        import asyncio

        await asyncio.Event().wait()

    assert await RedisDependency(ok, 1.0, critical=lambda: critical[0]).problem() is None
    assert (
        await RedisDependency(refused, 1.0, critical=lambda: True).problem()
        == "unreachable: ConnectionRefusedError: Connection refused"
    )
    assert await RedisDependency(hangs, 0.01, critical=lambda: True).problem() == "no answer to PING within 10 ms"
    dependency = RedisDependency(ok, 1.0, critical=lambda: critical[0])
    assert dependency.critical
    critical[0] = False  # e.g. on_failure = "fail_open"
    assert not dependency.critical


async def test_monitor_dependency_passes_the_reading_problem_on() -> None:
    problems = ["host load monitor has no sample yet", None]
    dependency = MonitorDependency(lambda: problems[0])
    assert await dependency.problem() == "host load monitor has no sample yet" and not dependency.critical
    problems[0] = None
    assert await dependency.problem() is None
