"""The routing-strategy interface."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

from .._clock import Clock
from .._model import Backend


@dataclasses.dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a strategy may depend on besides its parameters.

    Attributes:
        clock: Monotonic time source.
        rng: Seeded randomness; the only source of randomness a strategy may use.
        servers: The pool's live server map (id -> Backend), for strategies whose
            state spans the whole pool; read it, never change it.
        local: True in a client deciding from a pushed routing table (the SDK's local
            mode), whose view of the other clients' load lags by a push.
    """

    clock: Clock
    rng: random.Random
    servers: Mapping[str, Backend] = dataclasses.field(default_factory=dict)
    local: bool = False


class Choice(NamedTuple):
    """A strategy's answer.

    Attributes:
        server: One of the candidates.
        explored: True when a learning strategy explored instead of exploiting.
        memo: Anything the strategy wants back with this decision's feedback
            (e.g. the encoded state); kept with the pending decision.
    """

    server: Backend
    explored: bool = False
    memo: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Feedback:
    """How a routed request went.

    Attributes:
        server: The server the decision chose.
        success: False for a reported failure and for an expired decision.
        latency_ms: Reported latency; for an expired decision, the decision TTL.
        memo: What ``choose`` returned with the decision.
        expired: True when no outcome arrived within the decision TTL.
    """

    server: Backend
    success: bool
    latency_ms: float
    memo: Any = None
    expired: bool = False


class Strategy(Protocol):
    """Chooses one server among eligible candidates and learns from outcomes."""

    name: ClassVar[str]
    # Largest pool the strategy can serve; None means no limit.
    max_servers: ClassVar[int | None]

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        """Returns one of ``candidates`` (never empty)."""
        ...

    def observe(self, feedback: Feedback) -> None:
        """Learns from the outcome of a decision this strategy made."""
        ...

    def forget(self, server_id: str) -> None:
        """Drops any state kept for a server that left the pool."""
        ...

    def snapshot(self) -> dict[str, Any] | None:
        """Learned state as JSON-serialisable data; None when there is nothing to keep."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Takes back a ``snapshot``; raises ValueError when it does not fit."""
        ...

    def stats(self) -> dict[str, float]:
        """Numbers that explain the strategy's behaviour (episodes, epsilon, ...)."""
        ...

    # Deciding in the client: the service's instance learns and publishes; a client's
    # instance of the same class adopts what was published and decides with it.

    def published(self) -> dict[str, Any] | None:
        """What a client needs to decide as this instance does (JSON-serialisable, bounded
        in size); None when the strategy learns nothing a client could use."""
        ...

    def adopt(self, published: Mapping[str, Any]) -> None:
        """Takes what the service's instance ``published``; raises ValueError (and keeps its
        state) when it does not fit."""
        ...

    def finished(self, feedback: Feedback) -> None:
        """A decision this client instance made has ended. What ``choose`` counts in flight
        is settled here, and what the client measures itself (peak_ewma's latencies) is
        learned; learned values that come from the service are left to ``adopt``."""
        ...

    def memo_wire(self, memo: Any) -> tuple[tuple[float, ...], str]:
        """A choice's memo as the contract carries it back (LocalDecision features and state)."""
        ...

    def memo_from_wire(self, features: Sequence[float], state: str) -> Any:
        """The memo ``observe`` takes for a decision a client made, from what it sent; None
        when it does not fit this instance (then ``observe`` learns only what needs no memo)."""
        ...


class StrategyBase:
    """Defaults for strategies that keep nothing worth persisting: override only ``choose``."""

    name: ClassVar[str]
    max_servers: ClassVar[int | None] = None

    def observe(self, feedback: Feedback) -> None:
        return None

    def forget(self, server_id: str) -> None:
        return None

    def snapshot(self) -> dict[str, Any] | None:
        return None

    def restore(self, state: Mapping[str, Any]) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {}

    def published(self) -> dict[str, Any] | None:
        return None

    def adopt(self, published: Mapping[str, Any]) -> None:
        return None

    def finished(self, feedback: Feedback) -> None:
        return None

    def memo_wire(self, memo: Any) -> tuple[tuple[float, ...], str]:
        return (), ""

    def memo_from_wire(self, features: Sequence[float], state: str) -> Any:
        return None
