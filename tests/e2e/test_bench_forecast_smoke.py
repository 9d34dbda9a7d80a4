"""The forecast backtest keeps running on the shipped trace; its numbers are read by people
(README, issue 21), and here only its shape and its own consistency are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e


def test_forecast_backtest_prints_every_model_and_the_ratio_to_seasonal_naive() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "forecast_backtest.py"), "--repeat", "1", "--walk-forward", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    models = report["models"]
    assert {"ewma", "holt", "seasonal_naive/86400", "seasonal_naive/604800"} <= set(models)
    assert report["chosen"] in models and report["best_seasonal_naive"] in models
    naive = models[report["best_seasonal_naive"]]["mape"]
    assert report["mape_ratio_to_seasonal_naive"] == pytest.approx(models[report["chosen"]]["mape"] / naive)
    for cell in models.values():
        assert cell["origins"] > 0 and 0 <= cell["coverage"] <= 1 and cell["mape"] >= 0
