"""What `Client` and `AsyncClient` share: validated options and the non-RPC surface."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from loadwarden.sdk._batching import LastKnownSizes
from loadwarden.sdk._convert import outcome_to_proto
from loadwarden.sdk._errors import LoadwardenError, is_transport_failure
from loadwarden.sdk._outcomes import OutcomeBuffer
from loadwarden.sdk._route import Route
from loadwarden.sdk._types import BatchSize, OutcomeStats
from loadwarden.v1 import decision_pb2 as _pb

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """A client's settings, validated once; errors name the constructor parameter.

    Attributes:
        target: Service address, "host:port".
        timeout_s: Deadline of every call that names none, seconds, > 0.
        outcome_batch_size: Queued outcomes that are sent at once without waiting, count, >= 1.
        outcome_flush_interval_s: Longest an outcome waits before it is sent, seconds, > 0.
        outcome_buffer_size: Outcomes held at most; beyond it the oldest are dropped,
            count, >= outcome_batch_size.
    """

    target: str
    timeout_s: float
    outcome_batch_size: int
    outcome_flush_interval_s: float
    outcome_buffer_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"target must be a non-empty 'host:port' string, got {self.target!r}")
        _check_positive_seconds("timeout_s", self.timeout_s)
        _check_positive_seconds("outcome_flush_interval_s", self.outcome_flush_interval_s)
        _check_positive_count("outcome_batch_size", self.outcome_batch_size)
        _check_positive_count("outcome_buffer_size", self.outcome_buffer_size)
        if self.outcome_buffer_size < self.outcome_batch_size:
            raise ValueError(
                f"outcome_buffer_size must be >= outcome_batch_size ({self.outcome_batch_size}), "
                f"got {self.outcome_buffer_size}"
            )

    def call_timeout_s(self, timeout_s: float | None) -> float:
        """The deadline of one call, seconds: `timeout_s` when given, else the client's."""
        if timeout_s is None:
            return self.timeout_s
        _check_positive_seconds("timeout_s", timeout_s)
        return timeout_s

    def new_outcome_buffer(self) -> OutcomeBuffer:
        return OutcomeBuffer(
            capacity=self.outcome_buffer_size,
            batch_size=self.outcome_batch_size,
            interval_s=self.outcome_flush_interval_s,
        )


def check_wait_timeout(timeout_s: float | None) -> None:
    """Checks an optional wait bound (None waits until done), seconds."""
    if timeout_s is not None:
        _check_positive_seconds("timeout_s", timeout_s)


class _OutcomeSender(Protocol):
    buffer: OutcomeBuffer

    def add(self, outcome: _pb.Outcome) -> None: ...


class ClientBase:
    """The part of the client surface that makes no RPC, identical in sync and async."""

    _options: ClientOptions
    _outcomes: _OutcomeSender
    _batch_sizes: LastKnownSizes

    def report_outcome(self, decision_id: str, *, success: bool, latency_ms: float, status: str = "") -> None:
        """Queues how a request routed by `select` went; sent in the background.

        Never makes an RPC on the caller's path. Outcomes that cannot be sent are
        counted in `outcome_stats`, never raised.

        Args:
            decision_id: `Selection.decision_id` of the request's selection.
            success: True when the request succeeded.
            latency_ms: Request latency as the caller saw it, milliseconds, 0-86,400,000.
            status: Optional detail, e.g. "503"; at most 64 printable ASCII characters.

        Raises:
            ValueError: An argument is out of range (it would make the service
                reject the whole batch it travels in).
        """
        self._outcomes.add(outcome_to_proto(decision_id, success=success, latency_ms=latency_ms, status=status))

    def outcome_stats(self) -> OutcomeStats:
        """Counters of background outcome reporting since the client started."""
        return self._outcomes.buffer.stats()

    def _local_batch_size(self, operation: str, default: int | None, err: LoadwardenError) -> BatchSize | None:
        """The size to answer without the service after GetBatchSize failed with `err`.

        None (re-raise `err`) unless the service could not be reached: a business
        answer (NOT_FOUND, INVALID_ARGUMENT, ...) is never masked.
        """
        if not is_transport_failure(err):
            return None
        return self._batch_sizes.local_answer(operation, default, err)

    def _finish_route(self, route: Route, exc: BaseException | None) -> None:
        # Never raises: an exception escaping the block must propagate unchanged.
        outcome = route._outcome(exc)
        if outcome is not None:
            self._outcomes.add(outcome)


def _check_positive_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _check_positive_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
