"""Batch-size controllers, chosen per operation by its ``mode``.
May import the standard library and the kernel's own modules only.

Adding a controller means one file with a class (``name``, a frozen ``Params``
dataclass, ``needs_load``, ``target``, ``observe``) and one entry in ``BATCH_CONTROLLERS``.
A ``LoadOutlook`` (the capacity planner's forecast of the load score) lets an operation
whose controller reads the load size ahead of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._registry import Registry
from ._base import BatchController
from ._outlook import LoadOutlook
from .latency_target import LatencyTargetController, LatencyTargetParams
from .threshold import ThresholdController, ThresholdParams

BATCH_CONTROLLERS: Registry[type[Any]] = Registry(
    ("batch mode", "modes"), "mode", "mode_params", [ThresholdController, LatencyTargetController]
)
# The operation modes, in the order the config documents them.
MODES = BATCH_CONTROLLERS.names()


def build_controller(mode: str, params: Mapping[str, Any], start: int, where: str) -> BatchController:
    """Builds the controller registered as ``mode``, starting from the size ``start``.

    Raises:
        InvalidArgument: unknown mode (the message lists the valid ones) or bad parameters.
    """
    cls, parsed = BATCH_CONTROLLERS.params(mode, params, where)
    controller: BatchController = cls(parsed, start)
    return controller


__all__ = [
    "BATCH_CONTROLLERS",
    "MODES",
    "BatchController",
    "LatencyTargetController",
    "LatencyTargetParams",
    "LoadOutlook",
    "ThresholdController",
    "ThresholdParams",
    "build_controller",
]
