"""Starts and stops a real ``loadwarden serve`` for a benchmark (bench/memory.py, watch_load.py, shared_store.py)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

STARTUP_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"^loadwarden listening on (\S+)$")


def start_service(workdir: Path, config: str) -> tuple[subprocess.Popen[str], str]:
    """Runs ``loadwarden serve`` next to this interpreter with ``config`` (TOML text) on a free
    loopback port, its stderr in ``workdir/service.stderr``; returns it and its address."""
    path = workdir / "loadwarden.toml"
    path.write_text(config, encoding="utf-8")
    command = Path(sys.executable).parent / "loadwarden"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADWARDEN_")}
    stderr = (workdir / "service.stderr").open("w")
    proc = subprocess.Popen(
        [str(command), "serve", "--config", str(path), "--listen", "127.0.0.1:0", "--log-level", "WARNING"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:  # drains stdout for the process's whole life, so it never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        match = _LISTENING.match(line.strip())
        if match:
            return proc, match.group(1)
    proc.kill()
    raise SystemExit(f"loadwarden did not start within {STARTUP_TIMEOUT_S} s; see {workdir / 'service.stderr'}")


def stop_service(proc: subprocess.Popen[str], timeout_s: float = 15.0) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it has not exited within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
