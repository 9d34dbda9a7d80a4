"""Saving and restoring what strategies learned, through a StateStore.

The snapshot is taken in the event loop (strategies return fresh copies); JSON
encoding and the write happen in a worker thread so the loop never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from ._core import DecisionCore
from ._store import StateStore

log = logging.getLogger("loadwarden.server")

LEARNED_KEY = "learned-state"
FORMAT = "loadwarden.learned/1"


class CorruptState(ValueError):
    """A saved blob that cannot be used."""


def snapshot(core: DecisionCore, wall_now: float) -> dict[str, Any]:
    """What every pool's strategy learned, keyed by pool name; pools with nothing are left out."""
    pools = {}
    for pool in core.pools():
        state = pool.strategy.snapshot()
        if state is not None:
            pools[pool.name] = {"strategy": pool.settings.strategy, "state": state}
    return {"format": FORMAT, "saved_at": wall_now, "pools": pools}


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode(blob: bytes) -> dict[str, Any]:
    """Parses and checks the envelope; raises CorruptState."""

    def no_constants(name: str) -> Any:
        raise CorruptState(f"non-finite number {name}")

    try:
        data = json.loads(blob.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptState(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorruptState(f"not a {FORMAT} document")
    pools = data.get("pools")
    saved_at = data.get("saved_at")
    if not isinstance(pools, dict) or not isinstance(saved_at, (int, float)) or not math.isfinite(saved_at):
        raise CorruptState("missing or malformed 'pools' / 'saved_at'")
    for name, entry in pools.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("strategy"), str) or "state" not in entry:
            raise CorruptState(f"pool {name!r}: malformed entry")
    return data


def restore(core: DecisionCore, store: StateStore) -> int:
    """Loads the saved learned state into matching pools; returns how many pools took it.

    A blob that cannot be read is moved aside with a warning and every pool
    starts fresh; a pool whose strategy changed since the save starts fresh too.
    Never raises for bad data.
    """
    blob = store.load(LEARNED_KEY)
    if blob is None:
        return 0
    try:
        data = decode(blob)
        restored = 0
        for name, entry in data["pools"].items():
            pool = next((p for p in core.pools() if p.name == name), None)
            if pool is None or pool.settings.strategy != entry["strategy"]:
                log.info("learned state for pool %s (%s) not restored: pool gone or strategy changed",
                         name, entry["strategy"])
                continue
            try:
                pool.strategy.restore(entry["state"])
            except (ValueError, TypeError, KeyError) as exc:
                raise CorruptState(f"pool {name!r}: {exc}") from None
            restored += 1
    except CorruptState as exc:
        aside = store.quarantine(LEARNED_KEY)
        log.warning("saved learned state is unusable (%s); moved aside to %s; learning starts fresh", exc, aside)
        return 0
    log.info("restored learned state for %d pools", restored)
    return restored


class Persister:
    """Saves learned state every ``interval_s`` and once more on ``close``."""

    def __init__(self, core: DecisionCore, store: StateStore, interval_s: float) -> None:
        self._core = core
        self._store = store
        self._interval_s = interval_s
        self._lock = asyncio.Lock()
        self.saves = 0

    async def save(self) -> None:
        """Takes a snapshot now and writes it off the event loop."""
        async with self._lock:  # one write at a time; the newest snapshot wins
            data = snapshot(self._core, self._core.clock.wall())
            blob = await asyncio.to_thread(encode, data)
            await asyncio.to_thread(self._store.save, LEARNED_KEY, blob)
            self.saves += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.save()
            except (OSError, ValueError):
                log.exception("saving learned state failed; will retry in %.1f s", self._interval_s)
