from __future__ import annotations

import logging

import pytest

from loadwarden.observability import configure_logging


def test_configure_logging_sets_level_and_rejects_unknown() -> None:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        configure_logging("WARNING")
        assert root.level == logging.WARNING
        with pytest.raises(ValueError, match="level must be one of"):
            configure_logging("LOUD")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
