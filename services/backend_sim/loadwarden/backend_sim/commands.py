"""The simulator's subcommands of ``loadwarden``: ``simulate``, ``evaluate``, ``backend-sim``.

``add_commands`` is the ``loadwarden.commands`` entry point (pyproject.toml): the
``loadwarden`` command calls it while it builds its parser; each subcommand module
adds its parser and sets ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Any

# Modules with ``add_command(subparsers)``.
_SUBCOMMANDS = (
    "loadwarden.backend_sim._simulate_cli",
    "loadwarden.backend_sim._evaluate_cli",
    "loadwarden.backend_sim._backend_cli",
)


# What each needs beyond the service: the ``eval`` extra (pyproject.toml).
_NEEDS = ("numpy",)
_COMMANDS = ("simulate", "evaluate", "backend-sim")


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Adds every simulator subcommand to ``commands``; without the ``eval`` extra, each
    subcommand says what to install (``loadwarden serve`` works without it)."""
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        for command in _COMMANDS:
            parser = commands.add_parser(command, help="(needs the 'eval' extra)", add_help=False)
            parser.add_argument("rest", nargs=argparse.REMAINDER)
            parser.set_defaults(run=lambda args, missing=missing: _needs_eval(args.command, missing))
        return
    for name in _SUBCOMMANDS:
        importlib.import_module(name).add_command(commands)


def _needs_eval(command: str, missing: list[str]) -> int:
    print(
        f"loadwarden {command}: needs the 'eval' extra, which is not installed (missing: {', '.join(missing)}): "
        "pip install 'loadwarden[eval]'",
        file=sys.stderr,
    )
    return 2
