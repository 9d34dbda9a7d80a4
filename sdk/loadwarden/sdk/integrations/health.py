"""An application's health document, seed 004's ``/api/health``: the control plane, its
breakers, the fallback, and the checks the app registers (a database ping, ...).

The document has the shape of the Decision service's own ``/readyz``, so one probe
configuration reads both::

    {"status": "ready" | "degraded" | "not_ready",
     "timestamp": "2026-12-01T12:00:00.000000+00:00",
     "checks": {
       "control_plane": {"state": "ok" | "failing", "critical": false, "detail"?: "...",
                         "fallback": "local_limit", "fallback_in_use": false,
                         "breakers": {"AcquireSlot": "closed", ...}},
       "database": {"state": "ok", "critical": true, "detail": "connected"}}}

A check fails when it raises or returns False; a string it returns is its
``detail`` ("connected"). A failing critical check makes the app ``not_ready``
(HTTP 503); a failing non-critical one ``degraded`` (still 200: a load balancer
taking every replica out at once would turn a degraded app into an outage).

The control plane is critical only under ``slot_fallback="fail_closed"``, where its
absence refuses every request; otherwise the SDK's fallback keeps the app serving and
an unreachable service makes it ``degraded``. It is failing when a `load_status`
call (the pool's, within ``timeout_s``) gets no answer or is refused, or while the
AcquireSlot breaker is open: slots are then answered by the fallback, which
``fallback_in_use`` says.

`Health` is for a sync `Client` (WSGI, Django), `AsyncHealth` for an `AsyncClient`
(ASGI). Give them the client the admission middleware uses, so the breakers shown
are the ones deciding; the middlewares' ``health_path`` does that for you.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from loadwarden.sdk import (
    AsyncClient,
    BreakerOpenError,
    BreakerState,
    Client,
    LoadwardenError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from loadwarden.sdk._errors import is_transport_failure

OK, FAILING = "ok", "failing"
READY, DEGRADED, NOT_READY = "ready", "degraded", "not_ready"
CONTROL_PLANE = "control_plane"
# Breakers shown, by method: admission, routing and batch sizing, and the probe's own.
BREAKER_METHODS = ("AcquireSlot", "RenewLease", "ReleaseSlot", "SelectServer", "GetBatchSize", "GetLoadStatus")
DETAIL_MAX_LEN = 200  # characters of a failure's detail shown; the document is public

AnyClient = TypeVar("AnyClient", Client, AsyncClient)
Result = tuple["_Registered", bool, str | None]  # a check, whether it passed, its detail
Check = Callable[[], object]
"""A check: returns None, True or a detail string when fine; False or raising is failing."""
AsyncCheck = Callable[[], Awaitable[object] | object]
"""An `AsyncHealth` check: a coroutine function, or a plain function (run in a thread)."""


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A check with its criticality, where a mapping of checks is taken (``health_checks=``).

    Attributes:
        check: The check (see `Health.add_check`).
        critical: Whether its failing makes the app not ready rather than degraded.
    """

    check: Callable[[], object]
    critical: bool = True


@dataclass(frozen=True, slots=True)
class _Registered:
    name: str
    check: Callable[[], object]
    critical: bool


def _short(text: str) -> str:
    return text if len(text) <= DETAIL_MAX_LEN else text[: DETAIL_MAX_LEN - 3] + "..."


def _failure(exc: BaseException) -> str:
    return _short(f"{type(exc).__name__}: {exc}")


def _outcome(value: object) -> tuple[bool, str | None]:
    """(ok, detail) of a check's return value."""
    if value is False:
        return False, "the check returned False"
    if isinstance(value, str):
        return True, _short(value)
    return True, None


class _Health(Generic[AnyClient]):
    """What `Health` and `AsyncHealth` share: the registry and the document."""

    def __init__(
        self,
        client: AnyClient,
        *,
        pool: str | None = None,
        timeout_s: float = 1.0,
        slot_fallback: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if pool is not None and (not isinstance(pool, str) or not pool):
            raise ValueError(f"pool must be a non-empty string or None, got {pool!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.client: AnyClient = client
        self.pool: str | None = pool
        self.timeout_s: float = float(timeout_s)
        # The client's own policy; the middlewares pass theirs (the same).
        local_slots = getattr(client, "_local_slots", None)
        self.slot_fallback: str = slot_fallback or str(getattr(local_slots, "policy", "local_limit"))
        self._clock = clock
        self._checks: dict[str, _Registered] = {}

    def add_check(self, name: str, check: Callable[..., object], *, critical: bool = True) -> None:
        """Registers a check, shown under `name`.

        Args:
            name: Its name in the document, e.g. "database".
            check: Called with no argument for each document; returns None, True
                or a detail such as "connected" when fine; False or raising is failing.
            critical: Whether its failing makes the app not ready (503) rather than degraded.

        Raises:
            ValueError: A bad or taken name, or a check that is not callable.
        """
        if not isinstance(name, str) or not name or name == CONTROL_PLANE:
            raise ValueError(f"name must be a non-empty string other than {CONTROL_PLANE!r}, got {name!r}")
        if name in self._checks:
            raise ValueError(f"a check named {name!r} is registered already")
        if not callable(check):
            raise ValueError(f"check {name!r} must be callable, got {check!r}")
        if not isinstance(critical, bool):
            raise ValueError(f"critical must be True or False, got {critical!r}")
        self._checks[name] = _Registered(name, check, critical)

    def add_checks(self, checks: Mapping[str, Callable[..., object] | HealthCheck]) -> None:
        """`add_check` for each item of `checks`: a check (critical) or a `HealthCheck`."""
        if not isinstance(checks, Mapping):
            raise ValueError(f"health checks must be a mapping of name to check, got {checks!r}")
        for name, check in checks.items():
            if isinstance(check, HealthCheck):
                self.add_check(name, check.check, critical=check.critical)
            else:
                self.add_check(name, check)

    def _probe_problem(self, exc: BaseException | None) -> tuple[str | None, bool]:
        """(what is wrong with the control plane, whether slots are answered locally)."""
        acquire = self.client.breaker("AcquireSlot")
        acquire_open = acquire is not None and acquire.state is BreakerState.OPEN
        if exc is None:
            if acquire_open:
                return f"AcquireSlot's breaker is open: slots are answered by {self.slot_fallback}", True
            return None, False
        if isinstance(exc, BreakerOpenError):
            problem = f"unreachable: {exc.method}'s breaker is open (next probe in {exc.retry_after_s:.1f} s)"
        elif isinstance(exc, NotFoundError):
            return f"pool {self.pool!r} does not exist at the Decision service", acquire_open
        elif isinstance(exc, UnauthenticatedError | PermissionDeniedError):
            return f"refused ({exc.code.name}): check the client token", acquire_open
        elif is_transport_failure(exc):
            problem = f"unreachable ({exc.code.name})" if isinstance(exc, LoadwardenError) else "unreachable"
        elif isinstance(exc, LoadwardenError):
            return f"answered {exc.code.name}", acquire_open
        else:
            return _failure(exc), acquire_open
        return problem, True

    def _control_plane(self, exc: BaseException | None) -> dict[str, Any]:
        problem, fallback_in_use = self._probe_problem(exc)
        entry: dict[str, Any] = {
            "state": FAILING if problem else OK,
            "critical": self.slot_fallback == "fail_closed",
        }
        if problem:
            entry["detail"] = problem
        entry["fallback"] = self.slot_fallback
        entry["fallback_in_use"] = fallback_in_use
        breakers = {}
        for method in BREAKER_METHODS:
            breaker = self.client.breaker(method)
            if breaker is not None:
                breakers[method] = breaker.state.value
        entry["breakers"] = breakers
        return entry

    def _document(
        self, control_plane: dict[str, Any], results: list[tuple[_Registered, bool, str | None]]
    ) -> dict[str, Any]:
        checks: dict[str, Any] = {CONTROL_PLANE: control_plane}
        entries = [(control_plane["state"] == OK, control_plane["critical"])]
        for registered, ok, detail in results:
            entry: dict[str, Any] = {"state": OK if ok else FAILING, "critical": registered.critical}
            if detail is not None:
                entry["detail"] = detail
            checks[registered.name] = entry
            entries.append((ok, registered.critical))
        if any(not ok and critical for ok, critical in entries):
            status = NOT_READY
        elif any(not ok for ok, _ in entries):
            status = DEGRADED
        else:
            status = READY
        timestamp = datetime.fromtimestamp(self._clock(), UTC).isoformat()
        return {"status": status, "timestamp": timestamp, "checks": checks}


def http_status(document: Mapping[str, Any]) -> int:
    """The HTTP status of a health document: 503 when not ready, else 200."""
    return 503 if document.get("status") == NOT_READY else 200


HEALTH_HEADERS = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


def health_body(document: Mapping[str, Any]) -> bytes:
    """The document as the JSON body of a health answer."""
    return json.dumps(document, separators=(",", ":")).encode()


class Health(_Health[Client]):
    """The health document of an app admitting through a sync `Client`.

    Checks run one after another in the caller's thread (so a Django check may use
    the ORM): each bounds its own time, e.g. with its driver's connect timeout.

    Example:
        health = Health(client, pool="web")
        health.add_check("database", ping_database)  # returns "connected"
        document = health.document()

    Args:
        client: The client whose control plane and breakers are shown.
        pool: Pool whose status the control-plane probe reads; None reads every pool.
        timeout_s: Deadline of the control-plane probe, seconds.
        slot_fallback: The fallback policy shown; None reads the client's.
        clock: Wall clock for `timestamp`, seconds since the epoch.
    """

    def document(self) -> dict[str, Any]:
        """Runs the probe and every check; never raises."""
        failure: BaseException | None = None
        try:
            self.client.load_status(self.pool, timeout_s=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure is the control plane's state, reported
            failure = exc
        results = []
        for registered in self._checks.values():
            try:
                ok, detail = _outcome(registered.check())
            except Exception as exc:  # noqa: BLE001 - any failure is the check's state, reported
                ok, detail = False, _failure(exc)
            results.append((registered, ok, detail))
        return self._document(self._control_plane(failure), results)


class AsyncHealth(_Health[AsyncClient]):
    """The health document of an app admitting through an `AsyncClient`.

    The probe and the checks run at once, each within `timeout_s`: a coroutine
    function is awaited (and cancelled at its deadline), a plain function runs in
    a thread (and is reported failing at its deadline, left to finish).

    Args: as `Health`; `timeout_s` also bounds every check.
    """

    def add_check(self, name: str, check: AsyncCheck, *, critical: bool = True) -> None:
        """Registers a check (a coroutine function or a plain one); see `Health.add_check`."""
        super().add_check(name, check, critical=critical)

    async def document(self) -> dict[str, Any]:
        """Runs the probe and every check at once; never raises."""

        async def probe() -> BaseException | None:
            try:
                await self.client.load_status(self.pool, timeout_s=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure is the control plane's state, reported
                return exc
            return None

        async def run(registered: _Registered) -> Result:
            try:
                async with asyncio.timeout(self.timeout_s):
                    if inspect.iscoroutinefunction(registered.check):
                        value = await registered.check()
                    else:
                        value = await asyncio.to_thread(registered.check)
                        if inspect.isawaitable(value):
                            value = await value
            except TimeoutError:
                return registered, False, f"no answer within {self.timeout_s * 1000:.0f} ms"
            except Exception as exc:  # noqa: BLE001 - any failure is the check's state, reported
                return registered, False, _failure(exc)
            return (registered, *_outcome(value))

        failure, results = await asyncio.gather(probe(), asyncio.gather(*(run(r) for r in self._checks.values())))
        return self._document(self._control_plane(failure), results)
