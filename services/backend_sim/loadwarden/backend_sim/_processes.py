"""Child processes that never outlive the run that started them.

Every child starts in its own session (so a terminal's Ctrl-C reaches only the
parent, which then stops its children in order), with the marker variable
``LW_EVAL_RUN=<run id>`` in its environment (so a test, or an operator, can
find every process of a run with psutil), and on Linux with
``prctl(PR_SET_PDEATHSIG, SIGTERM)``, so it is told to stop even when the parent
dies without cleaning up (SIGKILL): a small launcher (``launch_argv``) sets it
and then execs the command, so the pid is the command's own. Stopping is
SIGTERM to the child's process group, then SIGKILL after a grace period
(``Child.kill`` is the SIGKILL alone: a crash, for ``evaluate``'s faults);
``ProcessGroup.close`` does it for every child, and is idempotent, so it can
sit in a ``finally``, a signal path and ``atexit`` at once.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so
children must be started from the main thread (the event loop's), never from a
worker thread. Where it is not available (not Linux), a SIGKILLed parent leaves
its children running until they are stopped by hand (find them by the marker).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self

_log = logging.getLogger("loadwarden.backend_sim")

# Environment variable set on every child: the run id. Not LOADWARDEN_-prefixed:
# ``loadwarden serve`` reads every LOADWARDEN_* variable as a config override.
MARKER_ENV = "LW_EVAL_RUN"
DEFAULT_GRACE_S = 5.0
_POLL_S = 0.02


class ChildFailed(RuntimeError):
    """A child exited (or never got ready) when it should have been running."""


# Runs first in every child (a fresh interpreter, no threads): asks the kernel for
# SIGTERM when the parent dies, exits if the parent is already gone, then execs the
# command. Doing this in a launcher instead of a ``preexec_fn`` keeps the fork free of
# Python code, so the parent's gRPC threads are never forked mid-call.
_LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
if os.getppid() != parent:
    os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def launch_argv(argv: Sequence[str], parent_pid: int | None = None) -> list[str]:
    """``argv`` behind the launcher: the same command, told to stop when this process dies."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid() if parent_pid is None else parent_pid), *argv]


class Child:
    """One started process: its stdout lines are collected; stderr goes to a log file.

    Attributes:
        name: Short name for messages, e.g. ``"service"``.
        argv: The command.
        popen: The process.
        log_path: Where its stderr goes.
    """

    def __init__(self, name: str, argv: Sequence[str], popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.popen = popen
        self.log_path = log_path
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(popen.stdout,), daemon=True, name=f"lw-{name}-stdout")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, pipe: IO[bytes] | None) -> None:
        if pipe is None:
            return
        for raw in iter(pipe.readline, b""):
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace"))
        pipe.close()

    def output(self) -> str:
        """Its stdout so far."""
        with self._cond:
            return "".join(self._lines)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its stderr log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def describe_exit(self) -> str:
        """``"<name> exited with code N"`` and the tail of its log."""
        code = self.popen.poll()
        tail = self.log_tail()
        return f"{self.name} exited with code {code} (log: {self.log_path})" + (f"\n{tail}" if tail else "")

    async def wait_for(self, pattern: str | re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """Waits until ``pattern`` occurs in its stdout.

        Raises:
            ChildFailed: it exited first, or ``timeout_s`` passed.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        while True:
            match = regex.search(self.output())
            if match:
                return match
            if self.popen.poll() is not None:
                self._reader.join(1.0)
                match = regex.search(self.output())
                if match:
                    return match
                raise ChildFailed(self.describe_exit())
            if time.monotonic() >= deadline:
                raise ChildFailed(f"{self.name} was not ready within {timeout_s:g} s (log: {self.log_path})")
            await asyncio.sleep(_POLL_S)

    def stop(self, grace_s: float = DEFAULT_GRACE_S) -> int | None:
        """SIGTERM to its process group, SIGKILL after ``grace_s``; returns the exit code.

        The group is signalled only while the child is unreaped, so its id cannot
        have been reused by an unrelated process.
        """
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                _log.warning("%s (pid %d) did not stop within %g s; killing it", self.name, self.pid, grace_s)
                _signal_group(self.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(grace_s)
        self._reader.join(1.0)
        return self.popen.poll()

    def kill(self) -> int | None:
        """SIGKILL to its process group at once, as a crash (no shutdown runs); returns the exit code.

        Its stdout stays readable (``output``); a stopped child is left as it is.
        """
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(DEFAULT_GRACE_S)
        return self.popen.poll()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessGroup:
    """Starts children for one run and stops every one of them at ``close``.

    Args:
        log_dir: Directory for the children's stderr logs (created).
        run_id: The marker value; a fresh UUID when None.
        grace_s: SIGTERM-to-SIGKILL grace per child, seconds.
    """

    def __init__(self, log_dir: Path, *, run_id: str | None = None, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.log_dir = Path(log_dir)
        self.run_id = run_id or uuid.uuid4().hex
        self.grace_s = grace_s
        self.children: list[Child] = []
        self._closed = False
        atexit.register(self.close)

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Child:
        """Starts ``argv`` in its own session, marked with the run id; stdin is /dev/null.

        Must be called from the main thread (see the module docstring).
        """
        if self._closed:
            raise RuntimeError("the process group is closed")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{len(self.children):02d}-{name}.log"
        child_env = dict(os.environ if env is None else env)
        child_env[MARKER_ENV] = self.run_id
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                launch_argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=child_env,
                start_new_session=True,
            )
        child = Child(name, argv, popen, log_path)
        self.children.append(child)
        return child

    @staticmethod
    async def watch(children: Sequence[Child], interval_s: float = 0.1) -> Child:
        """Returns the first of ``children`` to exit (for a watchdog task)."""
        while True:
            for child in children:
                if child.popen.poll() is not None:
                    return child
            await asyncio.sleep(interval_s)

    def stop(self, child: Child) -> int | None:
        """Stops one child; returns its exit code."""
        return child.stop(self.grace_s)

    def close(self) -> None:
        """Stops every child, newest first. Idempotent."""
        self._closed = True
        for child in reversed(self.children):
            child.stop(self.grace_s)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
