"""``loadwarden simulate`` on a provisioning scenario as a real process: the shipped diurnal
scenario cut short, a tiny one of its own, and a bad trace refused before anything runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ._harness import Proc, Processes, tool

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 180.0
MODES = ("fixed", "reactive", "predictive")
TINY = """\
strategies = ["least_connections"]
timeout_ms = 2000

[pool]
outlier_detection = { disabled = true }

[traffic]
kind = "trace"
trace = "trace.csv"
time_scale = 600

[[backends]]
id = "srv"
workers = 2
base_ms = 100

[provisioning]
lead_time_s = 600
evaluate_last_s = 86400
"""


def _tiny_trace() -> str:
    """Three days of 15-minute points: 20 req/s at night, 100 at 14:00."""
    rows = ["t_s,rate"]
    for k in range(3 * 96 + 1):
        hour = (k * 0.25) % 24
        rows.append(f"{k * 900},{20 + 80 * math.exp(-0.5 * ((hour - 14) / 3) ** 2):.3f}")
    return "\n".join(rows) + "\n"


def simulate(processes: Processes, *args: str | Path) -> tuple[int, Proc]:
    proc = processes.spawn([tool("loadwarden"), "simulate", *args])
    return proc.wait(RUN_TIMEOUT_S), proc


def _check_report(out: Path, stdout: str) -> dict[str, object]:
    assert "| mode | server-hours | vs reactive | under-provisioned h |" in stdout
    for mode in MODES:
        assert f"| {mode} | " in stdout
    assert "Predictive against reactive: under-provisioned " in stdout
    report = json.loads((out / "report.json").read_text())
    assert [run["strategy"] for run in report["runs"]] == list(MODES)
    for run in report["runs"]:
        figures = run["extra"]["provisioning"]
        assert figures["mode"] == run["strategy"] and figures["server_hours"] > 0
        assert 0 <= figures["under_share"] <= 1 and run["summary"]["requests"] > 0
    assert report["provisioning"]["meets_bar"] in (True, False)
    return report


def test_the_shipped_diurnal_scenario_runs_cut_short(processes: Processes, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 720 simulated s: the first 3 trace days, all reported (evaluate_last_s is a week).
    rc, proc = simulate(
        processes, REPO / "scenarios" / "diurnal.toml", "--duration-s", "720", "--out", out, "--no-plots"
    )
    assert rc == 0, proc.describe()
    report = _check_report(out, proc.stdout.text)
    assert report["scenario"]["traffic"]["trace"] == "traces/diurnal.csv"  # type: ignore[index]  # JSON


def test_a_tiny_trace_of_its_own_with_the_plot(processes: Processes, tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text(_tiny_trace(), encoding="utf-8")
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY, encoding="utf-8")
    out = tmp_path / "out"
    rc, proc = simulate(processes, scenario, "--out", out)
    assert rc == 0, proc.describe()
    _check_report(out, proc.stdout.text)
    assert (out / "provisioning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_trace_exits_2_naming_the_key_and_the_line(processes: Processes, tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("t_s,rate\n0,10\n900,-1\n", encoding="utf-8")
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY, encoding="utf-8")
    out = tmp_path / "out"
    rc, proc = simulate(processes, scenario, "--out", out)
    assert rc == 2, proc.describe()
    assert "traffic.trace: " in proc.stderr.text and "line 3: rate: must be >= 0, got '-1'" in proc.stderr.text
    assert not out.exists()
