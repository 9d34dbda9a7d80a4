"""Batch-size controllers, chosen per operation by mode."""

from ._base import BatchController
from .latency_target import LatencyTargetController
from .threshold import ThresholdController

MODES = (ThresholdController.mode, LatencyTargetController.mode)

__all__ = ["MODES", "BatchController", "LatencyTargetController", "ThresholdController"]
