"""``loadwarden evaluate`` as a real process: reports, the simulator's agreement, and no stray processes.

Every child evaluate starts carries ``LW_EVAL_RUN=<run id>`` in its environment;
the tests give evaluate the run id and scan every process on the machine
(psutil) for it, so a child left behind by any path (done, Ctrl-C, SIGTERM, a
child dying, evaluate itself SIGKILLed) is found.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ._harness import REPO, Proc, Processes, tool

pytestmark = pytest.mark.e2e

MARKER = "LW_EVAL_RUN"
WAIT_S = 60.0

TINY = """\
name = "tiny"
seed = 3
mode = "route"
strategies = ["round_robin", "least_connections"]
warmup_s = 0.5
timeout_ms = 2000
load_report_interval_ms = 200

[traffic]
kind = "open"
load = 0.6
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


def marked(run_id: str, *, exclude: int | None = None) -> list[psutil.Process]:
    """Every live process whose environment carries the run id (zombies and ``exclude`` left out)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == exclude:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARKER) == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
        except psutil.Error:
            out.append(str(p.pid))
    return "\n".join(out)


def evaluate(processes: Processes, scenario: Path, *args: str, run_id: str) -> Proc:
    return processes.spawn([tool("loadwarden"), "evaluate", str(scenario), *args], env={MARKER: run_id})


def tiny(tmp_path: Path, duration: float) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(duration=duration), encoding="utf-8")
    return path


def test_evaluate_writes_the_table_json_csv_and_plots_and_leaves_no_process(
    processes: Processes, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex
    out = tmp_path / "out"

    proc = evaluate(processes, tiny(tmp_path, 3), "--out", str(out), run_id=run_id)

    assert proc.wait(WAIT_S * 2) == 0, proc.describe()
    assert not marked(run_id), describe(marked(run_id))
    table = proc.stdout.text
    assert re.search(r"^\| round_robin \| [\d,]+ \|", table, re.MULTILINE), table
    assert re.search(r"^\| least_connections \| [\d,]+ \|", table, re.MULTILINE), table
    assert "sim p99 ms" in table and "Simulator vs real" in table
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["kind"] == "evaluate"
    for run in report["runs"]:
        assert run["summary"]["requests"] > 100
        assert set(run["summary"]["share"]) == {"slow", "fast"}
        assert run["sim_summary"]["p99_ms"] > 0
    for name in ("report.md", "summary.csv", "requests.csv", "summary.png", "latency_over_time.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "requests.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "request_id,strategy,timestamp_s,server,latency_ms,success,explored" and len(rows) > 200
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert len(logs) == 4 and all("service" in n or "backends" in n for n in logs)  # two fresh processes per run


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_a_signal_mid_run_stops_every_process_it_started(
    processes: Processes, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    run_id = uuid.uuid4().hex
    proc = evaluate(processes, tiny(tmp_path, 60), "--out", str(tmp_path / "out"), run_id=run_id)
    wait_until(lambda: len(marked(run_id, exclude=proc.proc.pid)) >= 2, "service and backends running")
    assert proc.stderr.wait_for("round_robin: .* sending traffic", WAIT_S), proc.describe()

    proc.signal(sig)

    assert proc.wait(WAIT_S) == code, proc.describe()
    assert f"interrupted by {sig.name}" in proc.stderr.text
    assert "process(es) it started are stopped" in proc.stderr.text
    assert not marked(run_id), describe(marked(run_id))
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_child_dying_mid_run_fails_the_run_and_stops_the_rest(processes: Processes, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    proc = evaluate(processes, tiny(tmp_path, 60), "--out", str(tmp_path / "out"), run_id=run_id)
    wait_until(lambda: len(marked(run_id, exclude=proc.proc.pid)) >= 2, "service and backends running")
    assert proc.stderr.wait_for("round_robin: .* sending traffic", WAIT_S), proc.describe()
    [service] = [p for p in marked(run_id, exclude=proc.proc.pid) if "serve" in p.cmdline()]

    service.kill()

    assert proc.wait(WAIT_S) == 1, proc.describe()
    assert re.search(r"round_robin-service exited with code -9", proc.stderr.text), proc.describe()
    assert not marked(run_id), describe(marked(run_id))


def test_a_service_that_is_not_ready_in_time_fails_the_run_and_is_stopped(processes: Processes, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex

    proc = evaluate(
        processes, tiny(tmp_path, 3), "--startup-timeout-s", "0.001", "--out", str(tmp_path / "out"), run_id=run_id
    )

    assert proc.wait(WAIT_S) == 1, proc.describe()
    assert "round_robin-service did not start" in proc.stderr.text, proc.describe()
    assert "process(es) it started are stopped" in proc.stderr.text
    assert not marked(run_id), describe(marked(run_id))


def test_children_stop_even_when_evaluate_is_killed(processes: Processes, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    proc = evaluate(processes, tiny(tmp_path, 60), "--out", str(tmp_path / "out"), run_id=run_id)
    wait_until(lambda: len(marked(run_id, exclude=proc.proc.pid)) >= 2, "service and backends running")

    proc.proc.kill()  # no cleanup runs in evaluate: the kernel's parent-death signal stops the children
    proc.wait(WAIT_S)

    wait_until(lambda: not marked(run_id), "children gone after evaluate was SIGKILLed", timeout_s=20)


def _cut_backends(text: str) -> str:
    return text[: text.index("[[backends]]")]


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: t.replace('"least_connections"]', '"fastest"]'), "strategies[1]"),
        (lambda t: t.replace("load = 0.6", "rate_per_s = -5"), "traffic.rate_per_s"),
        (_cut_backends, "backends"),
    ],
    ids=["unknown-strategy", "negative-rate", "missing-backends"],
)
def test_a_bad_scenario_exits_2_naming_the_key_before_anything_starts(
    processes: Processes, tmp_path: Path, edit: Callable[[str], str], key: str
) -> None:
    path = tiny(tmp_path, 3)
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    run_id = uuid.uuid4().hex

    proc = evaluate(processes, path, "--out", str(tmp_path / "out"), run_id=run_id)

    assert proc.wait(WAIT_S) == 2, proc.describe()
    assert f"{key}:" in proc.stderr.text, proc.describe()
    assert not (tmp_path / "out").exists()


def test_simulator_and_real_evaluation_agree_the_best_strategy_beats_round_robin_on_p99(
    processes: Processes, tmp_path: Path
) -> None:
    """``heterogeneous`` at reduced size: round robin overloads the two slow backends (their queues
    grow until requests time out), least connections keeps them below capacity; both worlds must see it.

    Reduced size: 12 s of traffic per strategy, and every service time four times longer (so 40
    requests/s load the backends to the same 80 %): the machine's own per-request overhead, which the
    simulator does not model and a loaded CI machine inflates, stays small next to the service times.
    """
    text = (REPO / "scenarios" / "heterogeneous.toml").read_text(encoding="utf-8")
    assert text.count("base_ms = 50") == 3, "the scenario changed; adapt the reduced copy"
    scenario = tmp_path / "heterogeneous.toml"
    scenario.write_text(text.replace("base_ms = 50", "base_ms = 200"), encoding="utf-8")
    out = tmp_path / "out"
    run_id = uuid.uuid4().hex

    proc = evaluate(
        processes,
        scenario,
        "--strategies",
        "round_robin,least_connections",
        "--decisions",
        "central",  # the file also lists local; test_evaluate_local covers that, shorter
        "--duration-s",
        "12",
        "--no-plots",
        "--out",
        str(out),
        run_id=run_id,
    )

    assert proc.wait(WAIT_S * 2) == 0, proc.describe()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    real = {run["strategy"]: run["summary"]["p99_ms"] for run in report["runs"]}
    sim = {run["strategy"]: run["sim_summary"]["p99_ms"] for run in report["runs"]}
    assert real["least_connections"] < 0.8 * real["round_robin"], (real, proc.stdout.text)
    assert sim["least_connections"] < 0.8 * sim["round_robin"], (sim, proc.stdout.text)
    assert report["best_p99"] == "least_connections"
    # The report states how far the two worlds' p99 figures differ.
    for run in report["runs"]:
        expected = (real[run["strategy"]] - sim[run["strategy"]]) / sim[run["strategy"]]
        assert run["p99_real_vs_sim"] == pytest.approx(expected, abs=1e-4)  # the JSON's p99s are rounded to µs
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "p99 real vs sim" in markdown
    assert re.search(r"Simulator vs real: p99 differs by \d+% on average", markdown), markdown
    assert not marked(run_id), describe(marked(run_id))


@pytest.mark.parametrize(
    ("name", "strategy", "files"),
    [
        ("overload", "aimd", ()),
        ("batch-ramp", "threshold", ("batches.csv",)),
    ],
    ids=["slot", "batch"],
)
def test_the_slot_and_batch_scenarios_run_at_reduced_size(
    processes: Processes, tmp_path: Path, name: str, strategy: str, files: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    run_id = uuid.uuid4().hex

    proc = evaluate(
        processes,
        REPO / "scenarios" / f"{name}.toml",
        "--strategies",
        strategy,
        "--duration-s",
        "4",
        "--no-plots",
        "--out",
        str(out),
        run_id=run_id,
    )

    assert proc.wait(WAIT_S * 2) == 0, proc.describe()
    [run] = json.loads((out / "report.json").read_text(encoding="utf-8"))["runs"]
    assert run["summary"]["requests"] > 50
    if name == "overload":  # twice the capacity: some slots are refused, and those reach no backend
        assert run["counters"]["rejected"] > 0
        assert run["summary"]["unrouted"] > 0
    else:
        batch = run["extra"]["batch"]
        assert batch["batches"] > 0 and batch["items"] > 0
        assert "| threshold |" in proc.stdout.text.split("Batches")[1]
    for file in files:
        assert (out / file).stat().st_size > 0
    assert not marked(run_id), describe(marked(run_id))
