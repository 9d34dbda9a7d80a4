"""Saving and restoring what strategies learned, through a StateStore.

The snapshot is taken in the event loop (strategies return fresh copies); JSON
encoding and the write happen in a worker thread so the loop never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from typing import Any

from .._errors import ConfigError
from ..engine._core import DecisionCore
from ._store import StateStore

log = logging.getLogger("loadwarden.server")

LEARNED_KEY = "learned-state"
FORMAT = "loadwarden.learned/1"
_PROBLEM_MAX_LEN = 300


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
    except CorruptState:  # from no_constants
        raise
    except RecursionError:
        raise CorruptState("not JSON this service reads: arrays or objects nested too deeply") from None
    except ValueError:  # the only ValueError json lets through: an integer too long to convert
        raise CorruptState(
            f"not JSON this service reads: an integer has more than {sys.get_int_max_str_digits()} digits"
        ) from None
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

    A blob that cannot be read or parsed for any reason (unreadable, too large,
    not JSON, nested too deeply, wrong shapes) is moved aside with a warning and
    every pool starts fresh. A pool whose saved entry does not fit its strategy
    starts fresh while the other pools keep theirs, and the blob is moved aside
    too, kept for inspection. A pool whose strategy changed since the save starts
    fresh. Never raises for bad data.

    Raises:
        ConfigError: naming ``state.path`` when an unusable blob cannot be moved aside
            (the service would otherwise read it again at every start).
    """
    try:
        blob = store.load(LEARNED_KEY)
        if blob is None:
            return 0
        data = decode(blob)
    except (OSError, CorruptState) as exc:
        _set_aside(store, f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc), "learning starts fresh")
        return 0
    restored = 0
    unusable = []
    for name, entry in data["pools"].items():
        pool = next((p for p in core.pools() if p.name == name), None)
        if pool is None or pool.settings.strategy != entry["strategy"]:
            log.info(
                "learned state for pool %s (%s) not restored: pool gone or strategy changed", name, entry["strategy"]
            )
            continue
        try:
            pool.strategy.restore(entry["state"])
        except RecursionError:
            unusable.append(f"pool {name!r}: nested too deeply")
        except Exception as exc:  # noqa: BLE001 - any shape restore() does not expect: that pool starts fresh, the service lives
            unusable.append(f"pool {name!r}: {type(exc).__name__}: {exc}")
        else:
            restored += 1
    if unusable:
        _set_aside(store, "; ".join(unusable), f"those pools start fresh, {restored} restored")
    else:
        log.info("restored learned state for %d pools", restored)
    return restored


def _set_aside(store: StateStore, problem: str, outcome: str) -> None:
    if len(problem) > _PROBLEM_MAX_LEN:  # a message quoting a huge bad value stays one readable line
        problem = f"{problem[:_PROBLEM_MAX_LEN]}..."
    try:
        aside = store.quarantine(LEARNED_KEY)
    except OSError as exc:
        raise ConfigError(
            "state.path",
            f"saved learned state is unusable ({problem}) and cannot be moved aside: {exc.strerror or exc}",
        ) from None
    log.warning("saved learned state is unusable (%s); moved aside to %s; %s", problem, aside, outcome)


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

    async def final_save(self) -> None:
        """The save at shutdown: a store that cannot take it is logged, never raised (the
        service is stopping either way)."""
        try:
            await self.save()
        except (OSError, ValueError) as exc:
            log.error("saving learned state at shutdown failed: %s", exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.save()
            except (OSError, ValueError):
                log.exception("saving learned state failed; will retry in %.1f s", self._interval_s)
