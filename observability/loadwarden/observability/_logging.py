"""Process-wide logging setup for the ``loadwarden`` command."""

from __future__ import annotations

import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Sends log records of ``level`` and above to stderr, one line each.

    Args:
        level: One of DEBUG, INFO, WARNING, ERROR.

    Raises:
        ValueError: ``level`` is not one of those.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    logging.basicConfig(level=level, format=_FORMAT, stream=sys.stderr, force=True)
