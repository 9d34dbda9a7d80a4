"""Helpers for end-to-end tests: real ``loadwarden serve`` processes, real grpcurl.

Tools are the ones installed next to the running interpreter (``.venv/bin``); a
missing one fails the test, it never skips it. Every process started here has a
deadline and is stopped (SIGTERM, then SIGKILL after 10 s) at teardown. Waiting
is on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent

STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
GRPCURL_MAX_TIME_S = 5.0

_LISTENING = re.compile(r"^loadwarden listening on (\S+)$", re.MULTILINE)

API_CONFIG = """\
[service]
shutdown_grace_ms = 1000

[pools.api]
strategy = "round_robin"
servers = [
  { id = "api-1", address = "127.0.0.1:9001" },
  { id = "api-2", address = "127.0.0.1:9002" },
  { id = "api-3", address = "127.0.0.1:9003" },
]
"""
API_SERVERS = {"api-1": "127.0.0.1:9001", "api-2": "127.0.0.1:9002", "api-3": "127.0.0.1:9003"}


def tool(name: str) -> Path:
    """Path of a required executable next to ``sys.executable``; fails the test if absent."""
    path = BIN_DIR / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"required tool {name!r} not found at {path}; install the dev extra "
            f"({sys.executable} -m pip install -e '.[dev]')",
            pytrace=False,
        )
    return path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without LOADWARDEN_* variables and PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADWARDEN_") and k != "PYTHONPATH"}
    env.update(extra or {})
    return env


class StreamReader:
    """Collects a pipe's output on a thread so tests can wait on it with a deadline."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._chunks: list[str] = []
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self._pipe.readline, b""):
            with self._cond:
                self._chunks.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self._chunks)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout_s: float) -> re.Match[str] | None:
        """Waits until ``pattern`` occurs in the output; None on EOF or deadline."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                match = regex.search("".join(self._chunks))
                remaining = deadline - time.monotonic()
                if match or self._closed or remaining <= 0:
                    return match
                self._cond.wait(remaining)

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)


@dataclass
class Proc:
    """A started subprocess with its stdout and stderr being collected."""

    args: Sequence[str]
    proc: subprocess.Popen[bytes]
    stdout: StreamReader
    stderr: StreamReader

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Waits for exit; fails the test (after killing it) if it does not exit in time."""
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.args[0]} did not exit within {timeout_s} s\n{self.describe()}")
        self.stdout.join()
        self.stderr.join()
        return rc

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
        self.stdout.join()
        self.stderr.join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def describe(self) -> str:
        return (
            f"command: {' '.join(map(str, self.args))}\nreturncode: {self.proc.poll()}\n"
            f"--- stdout ---\n{self.stdout.text}--- stderr ---\n{self.stderr.text}"
        )


@dataclass
class Service:
    """A ``loadwarden serve`` process that announced its address."""

    target: str
    process: Proc

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Sends ``sig`` and returns the exit code; fails if the process does not exit in time."""
        self.process.signal(sig)
        return self.process.wait(timeout_s)


@dataclass
class Processes:
    """Starts subprocesses and stops every one of them at teardown."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def spawn(self, args: Sequence[str | Path], *, env: Mapping[str, str] | None = None) -> Proc:
        argv = [str(a) for a in args]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.workdir,
            env=clean_env(env),
        )
        started = Proc(argv, proc, StreamReader(proc.stdout), StreamReader(proc.stderr))
        self.started.append(started)
        return started

    def loadwarden(
        self,
        config: str | None = None,
        *,
        listen: str | None = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> Proc:
        """Runs ``loadwarden serve`` with ``config`` (TOML text) written to a file, if given."""
        args: list[str | Path] = [tool("loadwarden"), "serve"]
        if config is not None:
            path = self.workdir / f"loadwarden-{len(self.started)}.toml"
            path.write_text(config, encoding="utf-8")
            args += ["--config", path]
        if listen is not None:
            args += ["--listen", listen]
        return self.spawn([*args, *extra_args], env=env)

    def serve(self, config: str | None = API_CONFIG, **kwargs: Any) -> Service:
        """Starts ``loadwarden serve`` and waits for its ``listening on`` line."""
        process = self.loadwarden(config, **kwargs)
        match = process.stdout.wait_for(_LISTENING, STARTUP_TIMEOUT_S)
        if match is None:
            process.stop()
            pytest.fail(f"loadwarden did not announce its address within {STARTUP_TIMEOUT_S} s\n{process.describe()}")
        return Service(match.group(1), process)

    def redis(self) -> RedisServer:
        """Starts a real ``redis-server`` (the Debian package) on a free loopback port, in memory only."""
        server = RedisServer(self, free_loopback_port())
        server.start()
        return server

    def expect_exit(self, process: Proc, timeout_s: float = STARTUP_TIMEOUT_S) -> int:
        """Waits for a process that must exit without serving; fails fast if it serves instead."""
        match = process.stdout.wait_for(_LISTENING, timeout_s)
        if match is not None:
            process.stop()
            pytest.fail(f"expected loadwarden to exit, but it is serving on {match.group(1)}\n{process.describe()}")
        return process.wait(timeout_s)

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def run_bench(script: str, *args: str, timeout_s: float = 180) -> Any:
    """Runs ``bench/<script>`` with ``args`` as a clean environment would; returns its JSON."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def free_cluster_port() -> int:
    """A free loopback port for a Redis Cluster node: at most 55535, with its bus port (+10000) free too."""
    for _ in range(200):
        port = free_loopback_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise AssertionError("no loopback port pair (port, port + 10000) was free for a Redis Cluster node")


def redis_server_binary() -> str:
    """The ``redis-server`` executable; fails the test if it is not installed (./scripts/test installs it)."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("required tool 'redis-server' not found; ./scripts/test installs the Debian package", pytrace=False)
    return found


_REDIS_READY = re.compile(r"Ready to accept connections")


@dataclass
class RedisServer:
    """A real ``redis-server`` on ``127.0.0.1:port``, without persistence. ``kill`` and
    ``start`` again keep the address, so a test can take Redis away and bring it back empty."""

    processes: Processes
    port: int
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Starts (or restarts) the server and waits until it accepts connections."""
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "",
        ]
        self.proc = self.processes.spawn(args)
        if self.proc.stdout.wait_for(_REDIS_READY, STARTUP_TIMEOUT_S) is None:
            self.proc.stop()
            pytest.fail(f"redis-server did not become ready within {STARTUP_TIMEOUT_S} s\n{self.proc.describe()}")

    def kill(self) -> None:
        """SIGKILL: Redis is gone at once, with nothing saved."""
        assert self.proc is not None
        self.proc.kill()


@dataclass(frozen=True)
class GrpcurlResult:
    """One grpcurl run. ``code`` is the gRPC status name ("OK" on success)."""

    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def code(self) -> str:
        if self.returncode == 0:
            return "OK"
        match = re.search(r"^\s*Code: (\w+)$", self.stderr, re.MULTILINE)
        return match.group(1) if match else f"<no status, exit {self.returncode}>"

    @property
    def message(self) -> str:
        match = re.search(r"^\s*Message: (.*)$", self.stderr, re.MULTILINE)
        return match.group(1) if match else ""

    def json(self) -> Any:
        assert self.returncode == 0, f"grpcurl failed:\n{self}"
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}\nexit {self.returncode}\n{self.stdout}{self.stderr}"


Grpcurl = Callable[..., GrpcurlResult]


def run_grpcurl(target: str, *args: str, data: Any = None, max_time_s: float = GRPCURL_MAX_TIME_S) -> GrpcurlResult:
    """Runs ``grpcurl -plaintext -max-time`` against ``target``: ``run_grpcurl(t, "list")``,
    ``run_grpcurl(t, "pkg.Service/Method", data={...})``."""
    argv = [str(tool("grpcurl")), "-plaintext", "-max-time", str(max_time_s)]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [target, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=max_time_s + 10, env=clean_env(), check=False)
    return GrpcurlResult(argv, done.returncode, done.stdout, done.stderr)
