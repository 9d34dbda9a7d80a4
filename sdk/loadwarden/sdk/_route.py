"""The handle `route()` yields: the chosen server, and the outcome of the block."""

from __future__ import annotations

import time
from collections.abc import Callable

from loadwarden.sdk._convert import MAX_LATENCY_MS, MAX_STATUS_LEN, check_status, outcome_to_proto
from loadwarden.sdk._types import Selection
from loadwarden.v1 import decision_pb2 as _pb


class Route:
    """One routed request, yielded by `Client.route` and `AsyncClient.route`.

    The block's outcome is reported when it exits: a success unless an exception
    escaped it or `fail` was called. Not constructed directly.

    The outcome's latency is timed from the start of the block, after the selection
    returned: it is the backend's time, which the strategies learn from. How long
    the selection took is `decision_s`; add the two for the whole time the caller
    spent on the request.

    Attributes:
        selection: The service's choice.
        decision_s: How long `route()` waited for the selection (the SelectServer
            call, or the local decision), seconds.
    """

    __slots__ = ("_clock", "_failure_status", "_started", "decision_s", "selection")

    def __init__(
        self, selection: Selection, *, clock: Callable[[], float] = time.perf_counter, asked_at: float | None = None
    ) -> None:
        self.selection: Selection = selection
        self._clock = clock
        self._started = clock()
        self.decision_s: float = 0.0 if asked_at is None else max(0.0, self._started - asked_at)
        self._failure_status: str | None = None

    @property
    def server_id(self) -> str:
        """Chosen server id within the pool."""
        return self.selection.server_id

    @property
    def address(self) -> str:
        """Where to reach the chosen server, e.g. "10.0.0.7:8080"."""
        return self.selection.address

    def fail(self, status: str = "") -> None:
        """Marks the request failed without raising, e.g. after an HTTP 503.

        Args:
            status: Optional detail reported with the outcome, e.g. "503";
                at most 64 printable ASCII characters.
        """
        check_status(status)
        self._failure_status = status

    def _result(self, exc: BaseException | None) -> tuple[bool, float, str]:
        """Success, latency (ms) and status of the block that just exited (with `exc` escaping it, if any)."""
        latency_ms = min(max(0.0, (self._clock() - self._started) * 1000.0), float(MAX_LATENCY_MS))
        if self._failure_status is not None:
            return False, latency_ms, self._failure_status
        if exc is not None:
            # Class names may be non-ASCII; the status must not be, or the batch is rejected.
            return False, latency_ms, type(exc).__name__.encode("ascii", "replace").decode()[:MAX_STATUS_LEN]
        return True, latency_ms, ""

    def _outcome(self, exc: BaseException | None) -> _pb.Outcome | None:
        """The outcome of a central decision's block that just exited.

        None when there is nothing to report: a local fallback decision has no id.
        """
        if not self.selection.decision_id:
            return None
        success, latency_ms, status = self._result(exc)
        return outcome_to_proto(self.selection.decision_id, success=success, latency_ms=latency_ms, status=status)

    def __repr__(self) -> str:
        return f"Route(server_id={self.server_id!r}, address={self.address!r})"
