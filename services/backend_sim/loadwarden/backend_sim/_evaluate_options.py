"""What ``evaluate`` adds to the scenario format, read by ``_scenario_file`` when a file loads.

``check_batch`` validates the ``[batch]`` table (mode batch; see ``_batch_mode``),
so a bad key fails the load naming ``batch.<key>`` before anything starts;
``BATCH_TABLE`` describes it in the scenario file's JSON Schema.
Per-controller checks (``[params.<controller>]`` merged over ``[batch]``) run in
``evaluate`` before it starts a process, with ``parse_batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._batch_mode import BATCH_TABLE, parse_batch

__all__ = ["BATCH_TABLE", "OPTIONS", "check_batch"]

# Extra [evaluate] options: name -> check(value, key) -> value; none beyond the scenario file's own.
OPTIONS: dict[str, Callable[[Any, str], Any]] = {}


def check_batch(table: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """Validates the ``[batch]`` table alone; returns it unchanged.

    Raises:
        ValueError: ``"batch.<key>: problem"``.
    """
    del key  # parse_batch names its keys batch.<key>
    parse_batch(table, pool="sim", controllers=(), params={})
    return table
