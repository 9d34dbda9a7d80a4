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
    """A bound was hit; the caller may retry after ``retry_after_s`` seconds (None: no hint)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(ValueError):
    """The service configuration is invalid.

    Attributes:
        key: The offending key, e.g. ``pools.api.strategy`` or an environment variable name.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
