"""Plots: every PNG is written, is a PNG, and is not empty; without matplotlib, a clear error."""

from __future__ import annotations

import builtins
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from loadwarden.backend_sim import PlotsUnavailable, Report, RequestRecord, StrategyRun, parse_scenario, write_plots
from loadwarden.backend_sim._plots import PLOT_FILES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report(servers: int) -> Report:
    spec = parse_scenario(
        {
            "name": "plots",
            "strategies": ["round_robin", "q_linear"],
            "warmup_s": 1,
            "traffic": {"rate_per_s": 50, "requests": 2_000},
            "backends": [{"id": "s", "count": servers}],
        },
        "plots.toml",
    )
    ids = tuple(s.id for s in spec.servers)
    rng = random.Random(1)
    runs = []
    for name, scale in (("round_robin", 40.0), ("q_linear", 20.0)):
        records = [
            RequestRecord(
                i * 0.02,
                ids[rng.randrange(len(ids))] if i % 50 else "",
                rng.expovariate(1 / scale),
                i % 13 != 0,
                name == "q_linear" and i % 10 == 0,
            )
            for i in range(2_000)
        ]
        runs.append(StrategyRun(name, records, ids))
    return Report(spec, tuple(runs))


@pytest.mark.parametrize("servers", [3, 40])
def test_every_plot_is_a_valid_png(tmp_path: Path, servers: int) -> None:
    paths = write_plots(report(servers), tmp_path / "plots")

    assert [p.name for p in paths] == list(PLOT_FILES)
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, path.name
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
        assert data[12:16] == b"IHDR" and width >= 400 and height >= 300
        assert len(data) > 10_000, f"{path.name} is suspiciously small ({len(data)} bytes)"


def test_without_matplotlib_plots_fail_clearly_and_write_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PlotsUnavailable, match=r"^plots skipped: install loadwarden\[eval\]"):
        write_plots(report(3), tmp_path / "plots")
    assert not (tmp_path / "plots").exists()
