"""The load history (per-interval aggregates in an embedded SQLite file), without the admin
port's HTTP dependencies: the capacity planner reads it with or without the admin port."""

from ._history import History

__all__ = ["History"]
