"""The routing-strategy interface and the parameter parsing every strategy shares."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from .._clock import Clock
from .._errors import InvalidArgument
from .._model import Backend


@dataclasses.dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a strategy may depend on besides its parameters."""

    clock: Clock
    rng: random.Random


class Strategy(Protocol):
    """Chooses one server among eligible candidates and learns from outcomes."""

    name: ClassVar[str]

    def choose(self, candidates: Sequence[Backend]) -> tuple[Backend, bool]:
        """Returns the chosen server (one of ``candidates``, never empty) and
        whether the choice was exploration rather than exploitation."""
        ...

    def observe(self, server: Backend, success: bool, latency_ms: float) -> None:
        """Learns from the outcome of a request routed to ``server``."""
        ...

    def forget(self, server_id: str) -> None:
        """Drops any state kept for a server that left the pool."""
        ...


class StrategyBase:
    """Bookkeeping defaults: strategies that do not learn override only ``choose``."""

    name: ClassVar[str]

    def observe(self, server: Backend, success: bool, latency_ms: float) -> None:
        return None

    def forget(self, server_id: str) -> None:
        return None


P = TypeVar("P")


def parse_params(params_type: type[P], values: Mapping[str, Any], where: str) -> P:
    """Builds a frozen params dataclass from config/Struct values.

    Unknown names, wrong types and values the dataclass rejects raise
    InvalidArgument naming ``where.<name>``. Integral floats are accepted for int
    fields, because a protobuf Struct carries every number as a float.
    """
    fields = {f.name: f for f in dataclasses.fields(params_type)}  # type: ignore[arg-type]
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
    elif kind == "str":
        if isinstance(value, str):
            return value
    raise InvalidArgument(field, f"must be of type {kind}, got {value!r}")
