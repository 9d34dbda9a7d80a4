"""The README's commands are the ones that work: run them against a real service."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from ._harness import REPO, Processes, tool

pytestmark = pytest.mark.e2e

README = (REPO / "README.md").read_text(encoding="utf-8")


def code_block_after(heading: str, language: str) -> str:
    section = README.split(f"## {heading}", 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no ```{language} block under '## {heading}'"
    return match.group(1)


def test_quick_start_has_exactly_the_two_commands_and_ci_runs_the_test_one() -> None:
    commands = [line.split("#")[0].strip() for line in code_block_after("Quick start", "sh").splitlines()]
    assert [c for c in commands if c] == ["./scripts/serve", "./scripts/test"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "./scripts/test" in ci


def test_readme_grpcurl_lines_work_against_a_real_service(processes: Processes) -> None:
    service = processes.serve(config=None)
    lines = [line for line in code_block_after("Ask it with grpcurl", "sh").splitlines() if line.strip()]
    assert len(lines) >= 5
    outputs = []
    for line in lines:
        argv = shlex.split(line.replace("127.0.0.1:50051", service.target))
        assert argv[0] == "grpcurl"
        done = subprocess.run(
            [str(tool("grpcurl")), "-max-time", "5", *argv[1:]], capture_output=True, text=True, timeout=20
        )
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        outputs.append(done.stdout)
    assert '"server_id": "api-' in outputs[2]  # SelectServer chose one of the configured servers
    assert '"SERVING"' in outputs[-1]


def test_readme_sdk_snippet_runs(processes: Processes) -> None:
    service = processes.serve()  # pool "api" with api-1..3
    snippet = code_block_after("The SDK in five lines", "python").replace("127.0.0.1:50051", service.target)
    program = (
        "called = []\n"
        "def call_backend(address):\n"
        "    called.append(address)\n"
        f"{snippet}\n"
        "assert called and called[0].startswith('127.0.0.1:900'), called\n"
        "assert client.outcome_stats().sent == 1, client.outcome_stats()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_quick_start_serve_command_starts_the_service(processes: Processes) -> None:
    # ./scripts/serve re-checks the install in .venv (already there when tests run), then serves.
    proc = processes.spawn([REPO / "scripts" / "serve", "--listen", "127.0.0.1:0"])
    match = proc.stdout.wait_for(re.compile(r"^loadwarden listening on (\S+)$", re.MULTILINE), 120)
    assert match, proc.describe()
    done = subprocess.run(
        [str(tool("grpcurl")), "-plaintext", "-max-time", "5", match.group(1), "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert '"SERVING"' in done.stdout, done.stderr
