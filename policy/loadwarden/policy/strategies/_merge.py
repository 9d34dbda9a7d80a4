"""Merging what several replicas of one strategy learned: a weighted average of snapshots.

Replicas that share a pool each learn from the decisions they make. Every so often
each one publishes its snapshot with a weight (the updates it learned since the last
merge), and each sets its state to the weighted average of all of them: federated
averaging. Between merges the replicas drift apart by what they learned alone; at a
merge they agree again. Numbers are averaged where present (a state only one replica
has seen keeps that replica's values), ``epsilon`` too, and the counters take their
largest value (they are statistics, and a sum would count each merge again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._state import COUNTERS


def merge_snapshots(entries: Sequence[tuple[Mapping[str, Any], float]]) -> dict[str, Any]:
    """The weighted average of learning snapshots of one strategy.

    Args:
        entries: ``(snapshot, weight)`` pairs, weight >= 0; all weights 0 counts each alike.

    Raises:
        ValueError: ``entries`` is empty.
    """
    if not entries:
        raise ValueError("entries: at least one snapshot is needed")
    if len(entries) == 1:
        return dict(entries[0][0])
    total = sum(max(0.0, w) for _, w in entries)
    weighted = [(s, max(0.0, w) if total > 0 else 1.0) for s, w in entries]
    head = weighted[0][0]
    merged = _merge([(s, w) for s, w in weighted])
    assert isinstance(merged, dict)
    merged["strategy"], merged["version"] = head["strategy"], head["version"]
    for counter in COUNTERS:
        values = [s[counter] for s, _ in weighted if isinstance(s.get(counter), int)]
        if values:
            merged[counter] = max(values)
    return merged


def _merge(values: list[tuple[Any, float]]) -> Any:
    first = values[0][0]
    if isinstance(first, Mapping):
        maps = [(v, w) for v, w in values if isinstance(v, Mapping)]
        keys: dict[str, None] = {}
        for mapping, _ in maps:
            keys.update(dict.fromkeys(mapping))
        return {key: _merge([(m[key], w) for m, w in maps if key in m]) for key in keys}
    if _number(first):
        numbers = [(float(v), w) for v, w in values if _number(v)]
        weight = sum(w for _, w in numbers)
        if weight <= 0:
            return sum(v for v, _ in numbers) / len(numbers)
        mean = sum(v * w for v, w in numbers) / weight
        return round(mean) if isinstance(first, int) else mean
    return first


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
