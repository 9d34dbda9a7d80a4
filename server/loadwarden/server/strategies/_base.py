"""The routing-strategy interface and the parameter parsing every strategy shares."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TypeVar

from .._clock import Clock
from .._errors import InvalidArgument
from .._model import Backend

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclasses.dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a strategy may depend on besides its parameters.

    Attributes:
        clock: Monotonic time source.
        rng: Seeded randomness; the only source of randomness a strategy may use.
        servers: The pool's live server map (id -> Backend), for strategies whose
            state spans the whole pool; read it, never change it.
    """

    clock: Clock
    rng: random.Random
    servers: Mapping[str, Backend] = dataclasses.field(default_factory=dict)


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


P = TypeVar("P", bound="DataclassInstance")


def parse_params(params_type: type[P], values: Mapping[str, Any], where: str) -> P:
    """Builds a frozen params dataclass from config/Struct values.

    Unknown names, wrong types and values the dataclass rejects raise
    InvalidArgument naming ``where.<name>``. Integral floats are accepted for int
    fields, because a protobuf Struct carries every number as a float.
    """
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        field = fields.get(key)
        if field is None:
            valid = ", ".join(sorted(fields)) or "none"
            raise InvalidArgument(f"{where}.{key}", f"unknown parameter; valid parameters: {valid}")
        kwargs[key] = _coerce(value, field.type, f"{where}.{key}")
    try:
        return params_type(**kwargs)
    except ValueError as exc:
        # __post_init__ raises ValueError("name: problem"); re-anchor it under `where`.
        name, _, problem = str(exc).partition(": ")
        raise InvalidArgument(f"{where}.{name}", problem or str(exc)) from None


def _coerce(value: Any, type_name: Any, field: str) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "")
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str" and isinstance(value, str):
        return value
    raise InvalidArgument(field, f"must be of type {kind}, got {value!r}")
