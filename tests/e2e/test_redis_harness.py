"""The shared-state tests' Redis: a real redis-server the harness starts, kills and brings back.

Issue 16's replicas share their state on Redis, and its fault tests take Redis away
under load. This pins down the part they stand on: the Debian package is installed by
./scripts/test, the harness starts it on a free loopback port without persistence, a
SIGKILL takes it away at once, and a restart on the same address comes back empty.
"""

from __future__ import annotations

import pytest
import redis

from ._harness import Processes

pytestmark = pytest.mark.e2e


def test_the_harness_starts_a_real_redis_kills_it_and_brings_it_back_empty(processes: Processes) -> None:
    server = processes.redis()
    client = redis.Redis.from_url(server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        assert client.ping() is True
        assert client.info("server")["redis_version"].startswith("7.")
        client.set("loadwarden:probe", "1")
        assert client.get("loadwarden:probe") == b"1"
        assert client.config_get("save") == {"save": ""}  # nothing is persisted

        server.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()

        server.start()
        assert client.ping() is True  # the same address again
        assert client.get("loadwarden:probe") is None  # and empty, like a Redis restarted without persistence
    finally:
        client.close()


def test_two_servers_get_two_addresses(processes: Processes) -> None:
    first, second = processes.redis(), processes.redis()
    assert first.port != second.port
    for server in (first, second):
        client = redis.Redis.from_url(server.url, socket_timeout=2.0)
        try:
            assert client.ping() is True
        finally:
            client.close()
