"""``loadwarden evaluate`` on a short batch-surges scenario: three runs, one a variant with the
service's capacity planning on, and the figures through the peaks beside the overall ones.

The scenario is ``scenarios/batch-surges.toml`` at a compressed scale (a surge every 4 s,
8 s per run), so it finishes in about half a minute; the full one is measured in
``scenarios/README.md``.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from pathlib import Path

import pytest

from ._harness import REPO, Processes
from .test_evaluate import WAIT_S, describe, evaluate, marked

pytestmark = pytest.mark.e2e

SHORT = """\
name = "batch-surges-short"
seed = 2
mode = "batch"
strategies = ["threshold", "latency_target", "threshold_predictive"]
warmup_s = 1
timeout_ms = 2000
load_report_interval_ms = 200

[pool]
outlier_detection = { disabled = true }

[params.latency_target]
target_latency_ms = 200

[batch]
operation = "import"
workers = 2
item_cost = 0.05
max_batch_size = 30
default_batch_size = 10
cooldown_ms = 500
peak_before_s = 1

[traffic]
load = 0.2
surge_load = 0.9
surge_every_s = 4
surge_duration_s = 1.5
surge_start_s = 2
duration_s = 8

[[backends]]
id = "b"
count = 2
workers = 2
base_ms = 40

[variants.threshold_predictive]
strategy = "threshold"

[variants.threshold_predictive.service_config.admin]
history_interval_ms = 250
history_retention_s = 60

[variants.threshold_predictive.service_config.planning]
enabled = true
step_s = 1
interval_s = 1
horizon_s = 3
history_s = 60
seasons_s = [4]

[variants.threshold_predictive.service_config.planning.operations.import]
predictive = true
"""
RUNS = ("threshold", "latency_target", "threshold_predictive")


def test_three_runs_with_the_peaks_beside_the_whole_run(processes: Processes, tmp_path: Path) -> None:
    scenario = tmp_path / "batch-surges-short.toml"
    scenario.write_text(SHORT, encoding="utf-8")
    out = tmp_path / "out"
    run_id = uuid.uuid4().hex

    proc = evaluate(processes, scenario, "--no-plots", "--out", str(out), run_id=run_id)

    assert proc.wait(WAIT_S) == 0, proc.describe()
    assert not marked(run_id), describe(marked(run_id))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [run["strategy"] for run in report["runs"]] == list(RUNS)
    surges = report["scenario"]["traffic"]["surges"]  # capacity 2 x 2 workers x 25 req/s
    assert surges == {"rate_per_s": pytest.approx(90.0), "every_s": 4, "duration_s": 1.5, "start_s": 2}
    for run in report["runs"]:
        peaks = run["extra"]["batch_peaks"]
        assert peaks["windows"] == [[1.0, 3.5], [5.0, 7.5]]  # 1 s before each surge that ends by 8 s
        assert peaks["batch"]["batches"] > 0 and peaks["requests"] > 0
        for key in ("items_per_s", "p99_item_ms", "p99_batch_ms", "forecast_batches"):
            assert key in peaks["batch"], key
        assert run["extra"]["batch"]["batches"] >= peaks["batch"]["batches"]
    variant = report["runs"][2]["extra"]["variant"]
    assert variant["strategy"] == "threshold"
    assert variant["service_config"]["planning"]["operations"] == {"import": {"predictive": True}}
    # The variant's service ran threshold sizing with planning on; the others without.
    configs = {name: tomllib.loads((out / "runs" / name / "loadwarden.toml").read_text()) for name in RUNS}
    assert configs["threshold_predictive"]["operations"]["import"]["mode"] == "threshold"
    assert configs["threshold_predictive"]["planning"]["enabled"] is True
    assert "planning" not in configs["threshold"]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "Through the peaks: 2 surges after the warm-up" in markdown
    header = next(line for line in markdown.splitlines() if "sized by forecast" in line)
    assert "p99 ms/batch" in header and "items/s" in header and "requests p99 ms" in header
    batch_tables = markdown.split("Batches (")[1]
    for name in RUNS:
        assert len(re.findall(rf"^\| {name} \| \d+ \|", batch_tables, re.MULTILINE)) == 2, name  # whole run, peaks
    rows = (out / "batches.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].endswith(",load_score,forecast")
    assert (REPO / "scenarios" / "batch-surges.toml").is_file()
