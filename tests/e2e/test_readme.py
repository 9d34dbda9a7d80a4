"""The README's commands are the ones that work: run them against a real service."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import sys
from typing import Any

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


def test_readme_local_decisions_snippet_decides_in_the_client(processes: Processes) -> None:
    service = processes.serve()  # pool "api" with api-1..3
    snippet = code_block_after("Deciding in the client", "python").replace("127.0.0.1:50051", service.target)
    head, lines = snippet.split("\n\n", 1)[0], snippet.split("\n\n", 1)[1].splitlines()
    # The snippet routes once; repeated, its later requests are decided from the pushed table.
    body = "\n".join(["    for _ in range(400):", *("    " + line for line in lines[1:])])
    program = (
        "import time\n"
        "local = []\n"
        "def call_backend(address):\n"
        "    local.append(route.selection.local)\n"
        "    time.sleep(0.002)\n"
        f"{head}\n{lines[0]}\n{body}\n"
        "assert not local[0] and local[-1], local[:3]  # central until the first table, then local\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
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


def test_readme_replicas_commands_start_redis_and_three_replicas_that_share_configuration(tmp_path: Any) -> None:
    import os
    import signal
    import time

    import grpc
    import redis

    from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2, decision_pb2, decision_pb2_grpc

    from ._harness import clean_env, free_loopback_port, redis_server_binary

    redis_server_binary()
    block = code_block_after("Several replicas on Redis", "sh")
    redis_port, ports = free_loopback_port(), [free_loopback_port() for _ in range(3)]
    script = block.replace("6379", str(redis_port)).replace("127.0.0.1:5005$i", "127.0.0.1:${PORTS[$i]}")
    script = f"PORTS=(x {' '.join(map(str, ports))})\n{script}\nwait\n"
    env = clean_env({"PATH": f"{tool('loadwarden').parent}{os.pathsep}{os.environ['PATH']}"})
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    client = redis.Redis(port=redis_port)
    channels: list[grpc.Channel] = []
    try:
        targets = [f"127.0.0.1:{p}" for p in ports]
        stubs = []
        for target in targets:
            channel = grpc.insecure_channel(target)
            channels.append(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            stubs.append((admin_pb2_grpc.AdminServiceStub(channel), decision_pb2_grpc.DecisionServiceStub(channel)))
        pool = common_pb2.PoolConfig(name="shared", servers=[common_pb2.ServerSpec(id="s1", address="127.0.0.1:9")])
        stubs[0][0].ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=pool), timeout=5)
        deadline = time.monotonic() + 5
        while True:
            status = stubs[2][1].GetLoadStatus(decision_pb2.GetLoadStatusRequest(), timeout=5).status
            if any(p.name == "shared" for p in status.pools):
                break
            assert time.monotonic() < deadline, "the pool made on replica 1 never reached replica 3"
            time.sleep(0.02)
    finally:
        for channel in channels:
            channel.close()
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(30)
        with contextlib.suppress(redis.ConnectionError):  # shutting down closes the connection mid-reply
            client.shutdown(nosave=True)
        client.close()


def test_readme_schema_commands_give_an_editor_a_schema_the_file_still_passes(tmp_path: Any) -> None:
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README, re.DOTALL) if "config-schema -o" in b)
    config = tmp_path / "loadwarden.toml"
    config.write_text('[pools.api]\nstrategy = "p2c"\nservers = [{ id = "a", address = "127.0.0.1:1" }]\n')
    bin_dir = str(REPO / ".venv" / "bin")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert config.read_text().splitlines()[0] == "#:schema ./loadwarden.schema.json"
    assert (
        '"$schema": "https://json-schema.org/draft/2020-12/schema"' in (tmp_path / "loadwarden.schema.json").read_text()
    )
    checked = subprocess.run(
        [f"{bin_dir}/loadwarden", "check-config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    assert "valid (1 pools, 1 servers" in checked.stdout
