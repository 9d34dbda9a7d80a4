"""``loadwarden evaluate`` through a control-plane outage: the service SIGKILLed mid-run and restarted.

The traffic goes through the SDK with its default breakers, retries and local
fallback, so applications keep working while the service is gone; with them off
(``[evaluate.client]``) every request of the outage fails. The tests read what the
report says about each outage and watch the processes themselves (psutil, by the
run's marker) to see the service die and another take its place.
"""

from __future__ import annotations

import csv
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from ._harness import Processes
from .test_evaluate import WAIT_S, describe, evaluate, marked

pytestmark = pytest.mark.e2e

OUTAGE = """\
name = "outage"
seed = 5
mode = "route"
strategies = ["p2c"]
timeout_ms = 5000
load_report_interval_ms = 200
{decisions}

[traffic]
kind = "open"
rate_per_s = 60
# Long enough after the restart for a loaded machine's new service to listen, and decide again.
duration_s = 10

[[backends]]
id = "b"
count = 3
base_ms = 20
workers = 2

[[evaluate.faults]]
kind = "kill_service"
at_s = 2.5
restart_after_s = 2
{client}
"""
OFF = "\n[evaluate.client]\nbreaker = false\nretry = false\nfallback = false\n"


def scenario(tmp_path: Path, *, decisions: str = "", client: str = "") -> Path:
    path = tmp_path / "outage.toml"
    path.write_text(OUTAGE.format(decisions=decisions, client=client), encoding="utf-8")
    return path


@contextmanager
def services_seen(run_id: str) -> Iterator[set[int]]:
    """The pids of every ``loadwarden serve`` process of the run seen alive while the block runs."""
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            for proc in marked(run_id):
                try:
                    if "serve" in proc.cmdline():
                        seen.add(proc.pid)
                except psutil.Error:
                    continue

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(5)


def outage_of(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's one outage as evaluate recorded it (``extra``) and as the report figures it."""
    [recorded] = run["extra"]["outages"]
    [figures] = run["outages"]
    return recorded, figures


def test_requests_keep_succeeding_through_a_killed_service_thanks_to_the_sdk(
    processes: Processes, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex
    out = tmp_path / "out"
    path = scenario(tmp_path, decisions='decisions = ["central", "local"]\nclients = 2')

    with services_seen(run_id) as seen:
        proc = evaluate(processes, path, "--out", str(out), "--no-plots", run_id=run_id)
        assert proc.wait(WAIT_S * 3) == 0, proc.describe()

    assert not marked(run_id), describe(marked(run_id))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["client"] == {"breaker": True, "retry": True, "fallback": True}
    central, local = report["runs"]
    for run in (central, local):
        recorded, figures = outage_of(run)
        # The service really died (SIGKILL) and another process took its place on its address.
        assert recorded["exit_code"] == -9 and recorded["pid"] not in (None, recorded["killed_pid"])
        assert {recorded["killed_pid"], recorded["pid"]} <= seen, (recorded, seen)
        assert recorded["killed_s"] >= 2.5 and recorded["restarted_s"] >= 4.5 and recorded["ready_s"] is not None
        assert figures["requests"] > 20 and figures["success_rate"] == 1.0, figures
    # Central: the SDK answered every request of the outage itself, then went back to the service.
    _, figures = outage_of(central)
    # (Decisions are counted in 10 ms bins by when they were asked for: one asked as the kill
    # went out may still have been the service's.)
    assert figures["decisions"]["fallback"] > 20 and figures["decisions"]["service"] <= 2, figures
    assert figures["back_to_service_s"] is not None
    assert central["counters"]["fallbacks"] >= figures["decisions"]["fallback"]
    assert central["extra"]["decision_sources"]["service"] > 0
    # Local: the clients went on deciding from the last table the service pushed.
    _, figures = outage_of(local)
    assert figures["decisions"]["local"] > 20 and figures["decisions"]["fallback"] == 0, figures
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert (
        "Outages (the Decision service SIGKILLed" in markdown and "SDK breaker on, retries on, fallback on" in markdown
    )
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert sum("service" in name for name in logs) == 4, logs  # per run: the first service and its successor


def test_without_breaker_retries_and_fallback_the_outage_fails_every_request(
    processes: Processes, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex
    out = tmp_path / "out"

    with services_seen(run_id) as seen:
        proc = evaluate(processes, scenario(tmp_path, client=OFF), "--out", str(out), "--no-plots", run_id=run_id)
        assert proc.wait(WAIT_S * 2) == 0, proc.describe()

    assert not marked(run_id), describe(marked(run_id))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["client"] == {"breaker": False, "retry": False, "fallback": False}
    [run] = report["runs"]
    recorded, figures = outage_of(run)
    assert recorded["exit_code"] == -9 and {recorded["killed_pid"], recorded["pid"]} <= seen
    # Every request of the outage reached no backend: the SDK's fallback answer was refused.
    assert figures["requests"] > 20 and figures["success_rate"] == 0.0, figures
    assert figures["decisions"]["refused"] >= 0.95 * figures["requests"] and figures["decisions"]["fallback"] == 0
    assert run["counters"]["unavailable"] >= figures["requests"] and run["counters"]["fallbacks"] == 0
    # Before the kill the service decided, and every request succeeded.
    with (out / "requests.csv").open(encoding="utf-8") as rows:
        before = [row for row in csv.DictReader(rows) if float(row["timestamp_s"]) < recorded["killed_s"] - 0.1]
    assert len(before) > 50 and all(row["success"] == "1" and row["server"] for row in before)
    assert figures["back_to_service_s"] is not None  # and it decided again once it was back
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "SDK breaker off, retries off, fallback off" in markdown
