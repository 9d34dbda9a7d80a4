"""A hand-driven environment shared by the learning-strategy tests."""

from __future__ import annotations

import random
from typing import Any

from loadwarden.policy._model import Backend
from loadwarden.policy.strategies import Feedback


def route(strategy: Any, servers: dict[str, Backend], rng: random.Random, n: int) -> list[str]:
    """Drives choose/observe by hand: 'slow' answers 5x slower than the others."""
    picks = []
    for _ in range(n):
        choice = strategy.choose(list(servers.values()))
        server = choice.server
        server.in_flight += 1
        latency = (100.0 if server.id == "slow" else 20.0) * rng.uniform(0.5, 1.5)
        server.record_outcome(True, latency)
        strategy.observe(Feedback(server, True, latency, choice.memo))
        picks.append(server.id)
    return picks
