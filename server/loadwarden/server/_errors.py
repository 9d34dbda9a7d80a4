"""Errors of the service's own configuration (the kernel's domain errors are in loadwarden.policy)."""

from __future__ import annotations


class ConfigError(ValueError):
    """The service configuration is invalid.

    Attributes:
        key: The offending key, e.g. ``pools.api.strategy`` or an environment variable name.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
