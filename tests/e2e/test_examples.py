"""The examples run as documented against a real ``loadwarden serve`` and say what they claim."""

from __future__ import annotations

import re
import sys
import time

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


def test_seed001_ml_app_meets_the_cache_target_with_two_models_and_a_celery_task(processes: Processes) -> None:
    out = run_example(processes, "seed001_ml_app.py", "--requests", "200", "--texts", "20", "--load-ms", "5")

    assert re.search(r"^requests: 200 in [\d.]+ s, 200 answered 200$", out, re.MULTILINE), out
    hit_rate = re.search(r"^cache hit rate: ([\d.]+)% \(target 80%: met\)$", out, re.MULTILINE)
    assert hit_rate is not None and float(hit_rate.group(1)) >= 80.0, out
    assert number(r"^cache: \d+ hits, \d+ misses \([\d.]+% hit rate\), (\d+) computes", out) == 20  # once per text
    assert number(r"at most (\d+) resident \(limit 2\)$", out) <= 2
    assert number(r"^models: (\d+) loads", out) >= 3  # three models through two places
    assert re.search(r'^health: 200 \{"status":"ready"', out, re.MULTILINE), out
    assert '"model_pool":{"state":"ok"' in out
    assert re.search(r"^bad request: 400 model must be one of", out, re.MULTILINE), out
    assert number(r"^active leases after: (\d+)$", out) == 0
    assert re.search(r'^celery task: \{"text": "a late job", "held_lease": true\}$', out, re.MULTILINE), out


def test_seed001_ml_app_shares_its_cache_between_processes_on_redis(processes: Processes) -> None:
    redis = processes.redis()
    args = ("--requests", "60", "--texts", "10", "--load-ms", "1", "--redis", redis.url)
    first = run_example(processes, "seed001_ml_app.py", *args)
    second = run_example(processes, "seed001_ml_app.py", *args)

    assert number(r"(\d+) computes", first) == 10
    assert number(r"(\d+) computes", second) == 0  # every result came from the first process's entries
    assert re.search(r"^cache hit rate: 100\.0%", second, re.MULTILINE), second


def test_seed001_ml_app_serves_its_health_endpoint_for_curl(processes: Processes) -> None:
    import json
    import urllib.request

    from ._harness import free_loopback_port

    service = processes.serve(None)
    port = free_loopback_port()
    app = processes.spawn(
        [sys.executable, EXAMPLES / "seed001_ml_app.py", "--target", service.target, "--serve", str(port)]
    )
    assert app.stdout.wait_for(re.compile(r"^serving on ", re.MULTILINE), EXAMPLE_TIMEOUT_S), app.describe()
    deadline = time.monotonic() + EXAMPLE_TIMEOUT_S
    while True:  # uvicorn binds just after the line
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/", timeout=5) as answer:
                document = json.loads(answer.read())
            break
        except OSError:
            assert time.monotonic() < deadline, app.describe()
            time.sleep(0.05)
    assert document["status"] == "ready" and document["checks"]["control_plane"]["state"] == "ok"
