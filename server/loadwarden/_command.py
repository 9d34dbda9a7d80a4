"""The ``loadwarden`` console script.

``pip install loadwarden`` installs the SDK alone; the service and its commands come
with the ``server`` extra. This module imports the service only once its needs are
installed, so with the SDK alone ``loadwarden`` says what to install instead of failing
with a traceback, and ``--version`` still answers.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence

from loadwarden._extras import missing_for_server, server_extra_message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``loadwarden``: the service's command line when it is installed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    missing = missing_for_server()
    if missing:
        if argv[:1] == ["--version"]:
            print(f"loadwarden {importlib.metadata.version('loadwarden')}")
            return 0
        print(f"loadwarden: {server_extra_message('the loadwarden command', missing)}", file=sys.stderr)
        return 2
    from loadwarden.server import main as run

    return run(argv)
