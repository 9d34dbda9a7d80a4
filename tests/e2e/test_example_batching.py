"""Seed 003's batch-import example against a real ``loadwarden serve``.

Latency-target runs are deterministic: the target (5 s) is far above any batch
(at most 100 items x 1 ms), so every batch is under it and every next batch
grows by exactly the additive step until the max.
"""

from __future__ import annotations

import re
import sys

import pytest

from ._harness import REPO, Processes

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "examples" / "seed003_batch_import.py"
EXAMPLE_TIMEOUT_S = 60.0
_BATCH = re.compile(r"^batch +(\d+): +(\d+) items in +[\d.]+ ms  \((.*)\)$", re.MULTILINE)
_EVENT = re.compile(r"^  \d\d:\d\d:\d\d\.\d{3} +(\d+) -> (\d+) +(.+)$", re.MULTILINE)


def run_example(processes: Processes, config: str | None, *args: str) -> str:
    service = processes.serve(config)
    example = processes.spawn([sys.executable, SCRIPT, "--target", service.target, *args])
    rc = example.wait(EXAMPLE_TIMEOUT_S)
    assert rc == 0, example.describe()
    assert "Traceback" not in example.stderr.text, example.describe()
    return example.stdout.text


def batches(out: str) -> list[tuple[int, str]]:
    """(size, reason) of every batch line, in order; the numbering is checked to be 1..n."""
    found = _BATCH.findall(out)
    assert [int(n) for n, _, _ in found] == list(range(1, len(found) + 1)), out
    return [(int(size), reason) for _, size, reason in found]


def test_batches_grow_while_under_the_latency_target(processes: Processes) -> None:
    out = run_example(
        processes,
        None,
        "--items",
        "400",
        "--item-ms",
        "1",
        "--mode",
        "latency_target",
        "--target-ms",
        "5000",
        "--step",
        "5",
    )

    assert "operation 'data-import' registered: latency_target, sizes 5-100 (default 25)" in out, out
    sizes = [size for size, _ in batches(out)]
    # 25 + 30 + ... + 60 = 340 items; the last 60 of the 65 answered end the job.
    assert sizes == [25, 30, 35, 40, 45, 50, 55, 60, 60], out
    assert "(batch of 55 took " in out and "<= target 5000 ms: +5, the last 60 of 65)" in out, out
    assert re.search(r"^imported: 400 items in 9 batches", out, re.MULTILINE), out
    assert re.search(r"^adjustment events: 8 \(latest 8 shown\), size now 65$", out, re.MULTILINE), out
    events = _EVENT.findall(out)
    assert [(int(a), int(b)) for a, b, _ in events] == [(s, s + 5) for s in range(25, 65, 5)], out
    assert all(re.fullmatch(r"batch of \d+ took \d+ ms <= target 5000 ms: \+5", why) for _, _, why in events), out


def test_an_operation_from_the_service_config_is_used_as_configured(processes: Processes) -> None:
    config = """\
[operations.data-import]
min_batch_size = 10
max_batch_size = 50
default_batch_size = 20
mode = "latency_target"
target_latency_ms = 5000
additive_step = 10
"""
    out = run_example(processes, config, "--items", "200", "--item-ms", "1")

    assert "operation 'data-import' exists: latency_target, sizes 10-50 (default 20)" in out, out
    # Grows by 10 per batch and stops at the configured max: 20 + 30 + 40 + 50 + 50 + the last 10.
    assert [size for size, _ in batches(out)] == [20, 30, 40, 50, 50, 10], out
    events = [(int(a), int(b)) for a, b, _ in _EVENT.findall(out)]
    assert events == [(20, 30), (30, 40), (40, 50)], out


def test_threshold_mode_sizes_every_batch_from_the_host_load(processes: Processes) -> None:
    # The host's load is whatever it is: only the shape of the answers is checked.
    out = run_example(processes, None, "--items", "300", "--item-ms", "0.2")

    assert "operation 'data-import' registered: threshold, sizes 5-100 (default 25)" in out, out
    found = batches(out)
    assert sum(size for size, _ in found) == 300 and found, out
    for size, reason in found[:-1]:
        assert 5 <= size <= 100, out
        assert re.match(
            r"load [\d.]+ (<= low threshold 50: max size|>= high threshold 80: min size|"
            r"between thresholds 50 and 80: proportional)|fallback \(service\): load unknown",
            reason,
        ), out
    assert re.search(r"^adjustment events: \d+ \(latest \d+ shown\), size now \d+$", out, re.MULTILINE), out
