"""Domain errors. The servicer maps each class to one gRPC status code."""

from __future__ import annotations


class DecisionError(Exception):
    """Base of every error the decision core raises for a caller's request."""


class InvalidArgument(DecisionError):
    """A request field is malformed or out of range.

    Attributes:
        field: Dotted path of the offending field, e.g. ``outcomes[2].latency_ms``.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(DecisionError):
    """A named pool, server, lease, operation or decision does not exist."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Unavailable(DecisionError):
    """The decision cannot be made right now, e.g. a pool has no eligible server.

    Attributes:
        reason: Short machine-readable cause, sent in trailing metadata so clients
            can tell this answer from an unreachable service.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ResourceExhausted(DecisionError):
    """A bound was hit; the caller may retry after ``retry_after_s`` seconds (None: no hint).

    Attributes:
        retry_after_s: Seconds after which a retry may succeed; None when only an
            operator can make room (e.g. a full pool table).
        cap: The configured cap that was hit, e.g. ``max_leases``; empty for a rate limit.
        key: Where that cap is configured, e.g. ``limits.max_leases``.
    """

    def __init__(self, message: str, retry_after_s: float | None = None, *, cap: str = "", key: str = "") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.cap = cap
        self.key = key

    @classmethod
    def cap_reached(
        cls, cap: str, key: str, value: int, detail: str, retry_after_s: float | None = None
    ) -> ResourceExhausted:
        """The error for a full cap; its message names the cap, its config key and value.

        ``cap_reached("max_leases", "limits.max_leases", 3, "3 leases held")`` reads
        ``max_leases (limits.max_leases = 3) reached: 3 leases held``.
        """
        return cls(f"{cap} ({key} = {value}) reached: {detail}", retry_after_s, cap=cap, key=key)
