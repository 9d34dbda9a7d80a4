"""State stores and learned-state persistence: atomic saves, corrupt files moved aside."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from loadwarden.policy import strategies as strategies_module
from loadwarden.policy._model import Backend
from loadwarden.policy.strategies import Choice, Feedback, StrategyBase, StrategyContext
from loadwarden.server import ConfigError, DecisionCore, ManualClock, PoolSettings, ServerSpec, load_config
from loadwarden.server.app._persistence import LEARNED_KEY, Persister, decode, encode, restore, snapshot
from loadwarden.server.app._store import FileStore, MemoryStore


class Counting(StrategyBase):
    """A learning strategy in miniature: counts outcomes per server, picks the first candidate."""

    name = "counting"
    Params: Any = None

    def __init__(self, params: Any, context: StrategyContext) -> None:
        self.counts: dict[str, int] = {}

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        return Choice(candidates[0])

    def observe(self, feedback: Feedback) -> None:
        self.counts[feedback.server.id] = self.counts.get(feedback.server.id, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def restore(self, state: Mapping[str, Any]) -> None:
        counts = state["counts"]
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            raise ValueError("counts must map ids to ints")
        self.counts = dict(counts)


@pytest.fixture(autouse=True)
def counting_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    params = dataclasses.make_dataclass("CountingParams", [], frozen=True)
    monkeypatch.setattr(Counting, "Params", params)
    monkeypatch.setitem(strategies_module.STRATEGIES, "counting", Counting)


def core_with(strategy: str = "counting") -> DecisionCore:
    core = DecisionCore(clock=ManualClock(), rng=random.Random(1))
    core.configure_pool(PoolSettings(name="p", strategy=strategy), [ServerSpec("a", "h:1")])
    return core


def learn(core: DecisionCore, n: int) -> None:
    from loadwarden.server.engine._core import OutcomeReport

    for _ in range(n):
        d = core.select("p")
        core.report_outcomes([OutcomeReport(d.decision_id, True, 1.0)])


def test_file_store_saves_atomically_and_reloads(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state")
    assert store.load("k") is None
    store.save("k", b"one")
    store.save("k", b"two")
    assert store.load("k") == b"two"
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["k.json"]  # no temp files left


def test_file_store_removes_crash_leftovers(tmp_path: Path) -> None:
    (tmp_path / ".k.1234.tmp").write_bytes(b"half")
    FileStore(tmp_path)
    assert not (tmp_path / ".k.1234.tmp").exists()


def test_quarantine_moves_aside(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.save("k", b"junk")
    aside = store.quarantine("k")
    assert aside is not None and Path(aside).read_bytes() == b"junk"
    assert store.load("k") is None and store.quarantine("k") is None
    memory = MemoryStore()
    memory.save("k", b"x")
    assert memory.quarantine("k") and memory.load("k") is None


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as err:
        FileStore(blocker / "sub")
    assert err.value.key == "state.path"


def test_snapshot_restore_round_trip() -> None:
    core = core_with()
    learn(core, 7)
    store = MemoryStore()
    store.save(LEARNED_KEY, encode(snapshot(core, 123.0)))
    fresh = core_with()
    assert restore(fresh, store) == 1
    strategy = fresh.pool("p").strategy
    assert isinstance(strategy, Counting) and strategy.counts == {"a": 7}


def test_pools_without_learned_state_are_left_out() -> None:
    core = core_with("round_robin")
    assert snapshot(core, 1.0)["pools"] == {}


@pytest.mark.parametrize(
    "blob",
    [
        b"\x00\xff garbage",
        b'{"format": "loadwarden.learned/1", "saved_at": 1, "pools": {"p": {"strategy": "counting", "state"',
        b'{"format": "something-else", "saved_at": 1, "pools": {}}',
        b'{"format": "loadwarden.learned/1", "saved_at": NaN, "pools": {}}',
        b'{"format": "loadwarden.learned/1", "saved_at": 1, "pools": []}',
        b'{"format": "loadwarden.learned/1", "saved_at": 1, "pools": {"p": {"strategy": "counting"}}}',
        (
            b'{"format": "loadwarden.learned/1", "saved_at": 1, '
            b'"pools": {"p": {"strategy": "counting", "state": {"counts": {"a": "x"}}}}}'
        ),
    ],
    ids=["binary", "truncated", "other-format", "nan", "pools-list", "no-state", "bad-state"],
)
def test_corrupt_state_is_moved_aside_and_learning_starts_fresh(
    blob: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path)
    store.save(LEARNED_KEY, blob)
    core = core_with()
    with caplog.at_level(logging.WARNING, logger="loadwarden.server"):
        assert restore(core, store) == 0
    assert "moved aside" in caplog.text
    strategy = core.pool("p").strategy
    assert isinstance(strategy, Counting) and strategy.counts == {}
    assert store.load(LEARNED_KEY) is None
    assert any(p.name.startswith(f"{LEARNED_KEY}.json.corrupt-") for p in tmp_path.iterdir())


def test_changed_strategy_is_not_restored() -> None:
    core = core_with()
    learn(core, 3)
    store = MemoryStore()
    store.save(LEARNED_KEY, encode(snapshot(core, 1.0)))
    assert restore(core_with("round_robin"), store) == 0
    assert store.load(LEARNED_KEY) is not None  # not corrupt: kept


def test_decode_rejects_non_finite_numbers() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        decode(b'{"format": "loadwarden.learned/1", "saved_at": Infinity, "pools": {}}')
    with pytest.raises(ValueError):
        encode({"x": float("nan")})


async def test_persister_saves_off_the_loop(tmp_path: Path) -> None:
    core = core_with()
    learn(core, 4)
    store = FileStore(tmp_path)
    persister = Persister(core, store, interval_s=3600)
    await persister.save()
    data = json.loads(store.load(LEARNED_KEY) or b"")
    assert data["pools"]["p"] == {"strategy": "counting", "state": {"counts": {"a": 4}}}
    assert persister.saves == 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[state]\nstore = 'disk'", "state.store"),
        ("[state]\nstore = 'file'", "state.path"),
        ("[state]\nsave_interval_ms = 1", "state.save_interval_ms"),
        ("[state]\npaht = '/x'", "state.paht"),
    ],
)
def test_state_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert err.value.key == key


def test_state_config_file_store(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[state]\nstore = 'file'\npath = '{tmp_path}/s'\nsave_interval_ms = 50\n")
    state = load_config(path, {}).state
    assert (state.store, state.path, state.save_interval_ms) == ("file", f"{tmp_path}/s", 50)
