"""``loadwarden evaluate`` with local decisions: client processes beside central ones, in one report.

A tiny scenario, short on purpose: p2c decided centrally and locally by three
client processes each, two seconds of traffic per run. Every child carries the
run id (``LW_EVAL_RUN``), so a process left behind by any path is found.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import psutil
import pytest

from ._harness import Processes
from .test_evaluate import WAIT_S, describe, evaluate, marked, wait_until

pytestmark = pytest.mark.e2e

TINY = """\
name = "tiny-local"
seed = 3
strategies = ["p2c"]
decisions = ["central", "local"]
clients = 3
warmup_s = 0.5
timeout_ms = 2000
load_report_interval_ms = 200

[traffic]
load = 0.5
duration_s = {duration}

[[backends]]
id = "slow"
base_ms = 40
workers = 2

[[backends]]
id = "fast"
speed = 4
base_ms = 40
workers = 2
"""


def tiny(tmp_path: Path, duration: float) -> Path:
    path = tmp_path / "tiny-local.toml"
    path.write_text(TINY.format(duration=duration), encoding="utf-8")
    return path


def test_central_and_local_runs_share_the_report_and_local_ones_decide_in_the_clients(
    processes: Processes, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex
    out = tmp_path / "out"

    proc = evaluate(processes, tiny(tmp_path, 2), "--no-plots", "--out", str(out), run_id=run_id)

    assert proc.wait(WAIT_S * 2) == 0, proc.describe()
    assert not marked(run_id), describe(marked(run_id))
    table = proc.stdout.text
    assert re.search(r"^\| p2c \| central \| [\d,]+ \|", table, re.MULTILINE), table
    assert re.search(r"^\| p2c \| local \| [\d,]+ \|", table, re.MULTILINE), table
    assert "Local against central decisions:" in table
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    central, local = report["runs"]
    assert (central["label"], central["decisions"]) == ("p2c", "central")
    assert (local["label"], local["decisions"]) == ("p2c (local)", "local")
    assert central["records"] == local["records"] > 100  # the same seeded arrivals, split over the clients
    # Every local request was decided in a client from a pushed table, none by the service.
    assert local["counters"]["local"] == local["records"] and local["counters"]["stale"] == 0
    assert central["counters"]["local"] == 0
    for run in (central, local):
        clients = run["extra"]["clients"]
        assert [c["client"] for c in clients] == [0, 1, 2]
        assert sum(c["requests"] for c in clients) == run["records"]
        assert all(c["requests"] > 0 and c["outcomes"]["pending"] == 0 for c in clients)
    assert sum(c["route_tables"]["decisions"] for c in local["extra"]["clients"]) == local["records"]
    assert all(c["route_tables"]["pools"] == 0 for c in central["extra"]["clients"])
    [versus] = report["local_vs_central"]
    assert versus["strategy"] == "p2c" and versus["p99_ratio"] > 0
    assert local["sim_summary"]["p99_ms"] > 0  # the simulator ran local mode too
    rows = (out / "requests.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "request_id,strategy,decisions,timestamp_s,server,latency_ms,success,explored"
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert len(logs) == 10 and sum("client" in n for n in logs) == 6, logs  # per run: service, backends, 3 clients


def test_a_client_dying_mid_run_fails_the_run_and_stops_the_rest(processes: Processes, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    proc = evaluate(processes, tiny(tmp_path, 60), "--out", str(tmp_path / "out"), run_id=run_id)
    assert proc.stderr.wait_for(r"p2c: .* 3 central clients ready; sending traffic", WAIT_S), proc.describe()
    wait_until(lambda: len(clients(run_id)) == 3, "three client processes")

    clients(run_id)[1].kill()

    assert proc.wait(WAIT_S) == 1, proc.describe()
    assert re.search(r"p2c-central-client\d exited with code -9", proc.stderr.text), proc.describe()
    assert not marked(run_id), describe(marked(run_id))
    assert not (tmp_path / "out" / "report.json").exists()


def clients(run_id: str) -> list[psutil.Process]:
    found = []
    for p in marked(run_id):
        try:
            if any("_evaluate_client" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("--decisions", "central,edge"), "decisions[1]"),
        (("--decisions", "central", "--clients", "3"), "clients"),
        (("--clients", "0"), "clients"),
        (("--clients", "65"), "clients"),
    ],
    ids=["unknown-mode", "clients-with-central-only", "no-clients", "too-many-clients"],
)
def test_bad_decision_options_exit_2_naming_the_key(
    processes: Processes, tmp_path: Path, args: tuple[str, ...], key: str
) -> None:
    run_id = uuid.uuid4().hex

    proc = evaluate(processes, tiny(tmp_path, 2), *args, "--out", str(tmp_path / "out"), run_id=run_id)

    assert proc.wait(WAIT_S) == 2, proc.describe()
    assert f": {key}: " in proc.stderr.text, proc.describe()
    assert not (tmp_path / "out").exists()
