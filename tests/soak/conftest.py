"""Fixtures for the soak and fault tests: real ``loadwarden serve`` processes.

Every process started here is stopped at teardown (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..e2e._harness import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Starts processes in ``tmp_path``; all are stopped at teardown."""
    procs = Processes(tmp_path)
    yield procs
    procs.close()
