"""The simulator's subcommands of ``loadwarden``: ``simulate``, ``evaluate``, ``backend-sim``.

``add_commands`` is the ``loadwarden.commands`` entry point (pyproject.toml): the
``loadwarden`` command calls it while it builds its parser; each subcommand module
adds its parser and sets ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# Modules with ``add_command(subparsers)``.
_SUBCOMMANDS = (
    "loadwarden.backend_sim._simulate_cli",
    "loadwarden.backend_sim._evaluate_cli",
    "loadwarden.backend_sim._backend_cli",
)


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Adds every simulator subcommand to ``commands``."""
    for name in _SUBCOMMANDS:
        importlib.import_module(name).add_command(commands)
