"""Readiness: what the service depends on, checked every interval.

``/readyz`` on the admin port and the gRPC health status both follow it. Each
dependency is named with its state in the document ``/readyz`` answers:

* ``redis`` (with ``[state] store = "redis"``): a PING within the command
  timeout. It is critical when an outage refuses calls (``on_failure =
  "fail_closed"``, or rate limits failing closed on a pool that has one): the
  service is then not ready while Redis is away. With ``fail_open`` or ``local``
  the service goes on answering, so a failing Redis makes it ``degraded``, still
  ready: a load balancer taking every replica out at once would turn a degraded
  service into an outage.
* ``load_monitor`` (unless ``[monitor] enabled = false``): a sample younger than
  its stale age. Never critical: without one, host-sourced batch operations
  answer their default size, and nothing else depends on it.
* ``shutdown``: not ready from the moment a stop begins, so load balancers stop
  sending before the port closes.

While not ready, the gRPC health of ``""`` and of ``loadwarden.v1.DecisionService``
is NOT_SERVING; AdminService stays SERVING, so an operator can still reach it.
The admission's own outage detection (a call that failed) marks Redis failing at
once, without waiting for the next check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from loadwarden.policy import Clock

log = logging.getLogger("loadwarden.server")

OK, FAILING, DEGRADED, READY, NOT_READY = "ok", "failing", "degraded", "ready", "not_ready"


class Dependency(Protocol):
    """One thing readiness checks."""

    name: str

    @property
    def critical(self) -> bool:
        """Whether its failing makes the service not ready."""

    async def problem(self) -> str | None:
        """What is wrong with it now, or None when it is fine; never raises."""


@dataclass
class _State:
    problem: str | None = None
    since: float | None = None  # wall time the state last changed
    external: str | None = None  # set from outside (the admission's outage), cleared by a passing check


class Readiness:
    """Checks ``dependencies`` every ``interval_s`` and tells ``on_change`` when readiness flips.

    Args:
        dependencies: What to check, in the order the document lists them.
        interval_s: Time between two rounds of checks.
        clock: Wall time for ``since``.
        on_change: Awaited with the new readiness whenever it changes (and once at start).
    """

    def __init__(
        self,
        dependencies: Sequence[Dependency],
        interval_s: float,
        clock: Clock,
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._dependencies = tuple(dependencies)
        self._interval_s = interval_s
        self._clock = clock
        self._on_change = on_change
        self._states = {dep.name: _State(since=clock.wall()) for dep in self._dependencies}
        self._stopping = False
        self._announced: bool | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.checks_total = 0

    @property
    def ready(self) -> bool:
        """No critical dependency failing, and no stop begun."""
        if self._stopping:
            return False
        return not any(dep.critical and self._failing(dep.name) for dep in self._dependencies)

    def _failing(self, name: str) -> str | None:
        state = self._states[name]
        return state.external or state.problem

    def document(self) -> dict[str, Any]:
        """The ``/readyz`` body: the status, then each dependency with its state."""
        checks: dict[str, Any] = {}
        degraded = False
        for dep in self._dependencies:
            problem = self._failing(dep.name)
            state = self._states[dep.name]
            entry: dict[str, Any] = {"state": FAILING if problem else OK, "critical": dep.critical}
            if problem:
                entry["detail"] = problem
                degraded = degraded or not dep.critical
            if state.since is not None:
                entry["since"] = round(state.since, 3)
            checks[dep.name] = entry
        if self._stopping:
            checks["shutdown"] = {"state": FAILING, "critical": True, "detail": "the service is stopping"}
        status = NOT_READY if not self.ready else DEGRADED if degraded else READY
        return {"status": status, "checks": checks}

    async def check_now(self) -> None:
        """One round of checks; announces a change of readiness."""
        for dep in self._dependencies:
            problem = await dep.problem()
            state = self._states[dep.name]
            if problem is None:
                state.external = None
            if (problem is None) != (state.problem is None):
                state.since = self._clock.wall()
                if problem is None:
                    log.info("readiness: %s is ok again", dep.name)
                else:
                    log.warning("readiness: %s is failing: %s", dep.name, problem)
            state.problem = problem
        self.checks_total += 1
        await self._announce()

    def mark_failing(self, name: str, problem: str | None) -> None:
        """Marks ``name`` failing at once (None: lets the next check decide); ignored for unknown names."""
        state = self._states.get(name)
        if state is None:
            return
        if problem is not None and state.external is None and state.problem is None:
            state.since = self._clock.wall()
        state.external = problem
        task = asyncio.get_running_loop().create_task(self._announce())
        self._pending.add(task)  # a task nothing refers to may be collected before it runs
        task.add_done_callback(self._pending.discard)

    async def stopping(self) -> None:
        """A stop began: not ready from now on."""
        self._stopping = True
        await self._announce()

    async def run(self) -> None:
        """Checks every interval (the first after one), forever; cancel to stop."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_now()

    async def _announce(self) -> None:
        ready = self.ready
        if ready != self._announced:
            self._announced = ready
            await self._on_change(ready)


class RedisDependency:
    """Redis answers a PING within ``timeout_s``; critical while ``critical()`` says an outage refuses calls."""

    name = "redis"

    def __init__(self, ping: Callable[[], Awaitable[Any]], timeout_s: float, *, critical: Callable[[], bool]) -> None:
        self._ping = ping
        self._timeout_s = timeout_s
        self._critical = critical

    @property
    def critical(self) -> bool:
        return self._critical()

    async def problem(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ping()
        except TimeoutError:
            return f"no answer to PING within {self._timeout_s * 1000:.0f} ms"
        except Exception as exc:  # noqa: BLE001 - any failure is the dependency's state, reported
            return f"unreachable: {type(exc).__name__}: {exc}"
        return None


class MonitorDependency:
    """The host load monitor has a fresh sample."""

    name = "load_monitor"
    critical = False

    def __init__(self, reading_problem: Callable[[], str | None]) -> None:
        self._reading_problem = reading_problem

    async def problem(self) -> str | None:
        return self._reading_problem()
