"""Routing strategies, chosen per pool by name.
May import the standard library and the kernel's own modules only.

Adding a strategy means one file with a class (``name``, a frozen ``Params``
dataclass, ``choose``) and one entry in ``STRATEGIES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._registry import Registry
from ._base import Choice, Feedback, Strategy, StrategyBase, StrategyContext
from ._merge import merge_snapshots
from .least_connections import LeastConnections
from .p2c import P2C
from .peak_ewma import PeakEwma
from .prequal import Prequal
from .q_learning import QLearning
from .q_linear import QLinear
from .round_robin import RoundRobin

STRATEGIES: Registry[type[Any]] = Registry(
    ("strategy", "strategies"),
    "strategy",
    "strategy_params",
    [RoundRobin, LeastConnections, P2C, PeakEwma, QLearning, QLinear, Prequal],
)


def strategy_class(name: str, where: str) -> Any:
    """The class registered as ``name``; InvalidArgument naming ``<where>.strategy`` otherwise."""
    return STRATEGIES.get_entry(name, where)


def check_strategy(name: str, params: Mapping[str, Any], where: str) -> None:
    """Validates a strategy name and its parameters without building it."""
    STRATEGIES.params(name, params, where)


def build_strategy(name: str, params: Mapping[str, Any], context: StrategyContext, where: str) -> Strategy:
    """Builds the strategy registered as ``name``.

    Args:
        name: Registry name, e.g. ``"round_robin"``.
        params: Parameter values by name.
        context: Clock and seeded RNG.
        where: Field path of the pool config, used in error messages
            (``<where>.strategy``, ``<where>.strategy_params.<name>``).

    Raises:
        InvalidArgument: unknown name (the message lists the valid ones) or bad parameters.
    """
    cls, parsed = STRATEGIES.params(name, params, where)
    strategy: Strategy = cls(parsed, context)
    return strategy


__all__ = [
    "STRATEGIES",
    "Choice",
    "Feedback",
    "Strategy",
    "StrategyBase",
    "StrategyContext",
    "build_strategy",
    "check_strategy",
    "merge_snapshots",
    "strategy_class",
]
