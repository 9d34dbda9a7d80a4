"""Claiming a key prefix on Redis while another replica claims it at the same moment.

A client stand-in replays the interleaving CI met: this replica reads no schema, the
other one writes it (and a key after it), then this replica's scan finds that key.
"""

from __future__ import annotations

from typing import Any

import pytest

from loadwarden.server import ConfigError
from loadwarden.server.shared._redis import SCHEMA, _claim_schema

PREFIX = "{lw}:"


class Racing:
    """A dict-backed client whose first GET of the schema runs before `other` writes."""

    def __init__(self, other_writes: dict[str, bytes]) -> None:
        self.data: dict[str, bytes] = {}
        self._other = other_writes
        self._gets = 0
        self.connection_pool = object()  # not a Cluster client: _some_key scans

    async def get(self, key: str) -> bytes | None:
        value = self.data.get(key)
        self._gets += 1
        if self._gets == 1:
            self.data.update(self._other)  # the other replica, between this GET and the scan
        return value

    async def set(self, key: str, value: Any, nx: bool = False) -> bool:
        if nx and key in self.data:
            return False
        self.data[key] = value.encode() if isinstance(value, str) else value
        return True

    async def scan(self, cursor: Any = 0, match: str = "", count: int = 0) -> tuple[int, list[bytes]]:
        return 0, [key.encode() for key in sorted(self.data)]


async def test_a_schema_another_replica_just_claimed_is_not_a_stray() -> None:
    client = Racing({f"{PREFIX}schema": SCHEMA.encode(), f"{PREFIX}secret": b"ab" * 32})
    secret = await _claim_schema(client, PREFIX, "redis://test")
    assert secret == bytes.fromhex("ab" * 32)  # the other replica's secret: both share it


async def test_keys_of_another_program_still_stop_the_start() -> None:
    client = Racing({f"{PREFIX}orders": b"1"})
    with pytest.raises(ConfigError) as stopped:
        await _claim_schema(client, PREFIX, "redis://test")
    assert stopped.value.key == "state.key_prefix" and "'{lw}:orders'" in str(stopped.value)
