"""Learned state survives kill -9 during saves: every restart loads a valid state or
starts fresh with a warning, and never crashes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from loadwarden.sdk import Client

from ._harness import Processes, run_grpcurl

pytestmark = pytest.mark.e2e

KILLS = 12


def config(state_dir: Path) -> str:
    return f"""
[service]
shutdown_grace_ms = 500

[state]
store = "file"
path = "{state_dir}"
save_interval_ms = 10

[pools.api]
strategy = "q_learning"
servers = [
  {{ id = "a", address = "127.0.0.1:9001" }},
  {{ id = "b", address = "127.0.0.1:9002" }},
  {{ id = "c", address = "127.0.0.1:9003" }},
]
"""


def table_size(target: str) -> float:
    status = run_grpcurl(target, "loadwarden.v1.DecisionService/GetLoadStatus", data={"pool": "api"}).json()
    return float(status["status"]["pools"][0].get("strategy_stats", {}).get("table_size", 0))


def test_kill_minus_9_during_saves_never_breaks_a_restart(processes: Processes, tmp_path: Path) -> None:
    rng = random.Random(11)
    state_dir = tmp_path / "state"
    text = config(state_dir)
    restored = 0
    for round_ in range(KILLS):
        service = processes.serve(text)
        stderr = service.process.stderr
        assert stderr.wait_for("loadwarden serving on", 10), service.process.describe()  # logged after restore
        assert "Traceback" not in stderr.text, service.process.describe()
        if "restored learned state for 1 pools" in stderr.text:
            restored += 1
            assert table_size(service.target) >= 1  # what was learned before the kill is back
        elif round_ > 0:
            assert "moved aside" in stderr.text or "learned state" not in stderr.text, service.process.describe()
        with Client(service.target, timeout_s=2.0, outcome_flush_interval_s=0.001) as client:
            for _ in range(rng.randint(20, 60)):
                with client.route("api") as route:
                    if rng.random() < 0.3:
                        route.fail("503")
            client.flush_outcomes(2.0)
            # Keep deciding while the 10 ms saver runs, then kill without warning mid-stream.
            for _ in range(rng.randint(0, 40)):
                client.select("api")
            service.process.kill()
    assert restored >= KILLS // 2, f"learned state restored only {restored} of {KILLS} times"
    leftovers = [p.name for p in state_dir.iterdir() if p.name.endswith(".tmp")]
    service = processes.serve(text)  # one more start cleans crash leftovers
    assert service.process.stderr.wait_for("loadwarden serving on", 10)
    assert "Traceback" not in service.process.stderr.text
    assert not [p for p in leftovers if (state_dir / p).exists()]


def test_corrupt_state_file_is_moved_aside_and_learning_starts_fresh(processes: Processes, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "learned-state.json").write_bytes(b'{"format": "loadwarden.learned/1", "pools": {"api": ')
    service = processes.serve(config(state_dir))
    assert service.process.stderr.wait_for("loadwarden serving on", 10)
    assert "moved aside" in service.process.stderr.text, service.process.describe()
    assert table_size(service.target) == 0
    assert [p.name for p in state_dir.iterdir() if ".corrupt-" in p.name]
    assert service.stop() == 0, service.process.describe()
