"""The examples run as documented against a real ``loadwarden serve`` and say what they claim."""

from __future__ import annotations

import re
import sys

import pytest

from ._harness import REPO, Processes

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "examples"
EXAMPLE_TIMEOUT_S = 60.0


def run_example(processes: Processes, script: str, *args: str) -> str:
    """Runs an example against a fresh empty service (it configures its own pool); returns stdout."""
    service = processes.serve(None)
    example = processes.spawn([sys.executable, EXAMPLES / script, "--target", service.target, *args])
    rc = example.wait(EXAMPLE_TIMEOUT_S)
    assert rc == 0, example.describe()
    assert "Traceback" not in example.stderr.text, example.describe()
    return example.stdout.text


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return int(match.group(1))


def test_seed000_load_manager_turns_away_what_does_not_fit_and_releases_everything(processes: Processes) -> None:
    out = run_example(
        processes, "seed000_load_manager.py", "--requests", "7", "--max-connections", "4", "--work-ms", "50"
    )

    # The burst is concurrent by construction: exactly the capacity gets in, the rest is told when to retry.
    assert number(r"^processed: (\d+)$", out) == 4
    assert number(r"^turned away: (\d+)", out) == 3
    assert re.search(r"'system overloaded, retry in \d+ s' x3", out), out
    assert number(r"^max concurrent: (\d+) \(limit 4\)$", out) == 4
    servers = dict(re.findall(r"(medibot-\d)=(\d+)", out))
    assert set(servers) <= {"medibot-1", "medibot-2", "medibot-3"} and sum(map(int, servers.values())) == 4
    assert re.search(r"^after the burst: request late handled by medibot-\d$", out, re.MULTILINE), out
    assert number(r"^active connections after: (\d+)$", out) == 0


def test_seed001_ml_operations_never_run_more_than_three_at_once(processes: Processes) -> None:
    out = run_example(processes, "seed001_ml_operations.py", "--jobs", "8", "--work-ms", "100")

    assert number(r"^completed: (\d+) of 8", out) == 8
    assert 1 <= number(r"^max concurrent ML operations: (\d+) \(limit 3\)$", out) <= 3
    waits = [float(w) for w in re.findall(r"waited (\d+\.\d+) s in the queue", out)]
    assert len(waits) == 8
    # 8 jobs through 3 slots: at least 5 of them queued behind a running job.
    assert sum(w >= 0.05 for w in waits) >= 5, out
    assert re.search(r"^priority 9: queue wait median", out, re.MULTILINE), out
    assert number(r"^active leases after: (\d+)$", out) == 0
