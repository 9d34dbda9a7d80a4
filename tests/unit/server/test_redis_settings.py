"""``[state] store = "redis"``: every key is checked at parse time and named when wrong."""

from __future__ import annotations

from typing import Any

import pytest

from loadwarden.server import ConfigError
from loadwarden.server.app._config import parse_config
from loadwarden.server.shared import RedisSettings, redacted


def state(**keys: Any) -> RedisSettings:
    config = parse_config({"state": {"store": "redis", **keys}})
    assert config.state.redis is not None
    return config.state.redis


def test_the_defaults_point_at_a_local_redis() -> None:
    settings = state()
    assert settings.url == "redis://127.0.0.1:6379/0"
    assert settings.key_prefix == "{loadwarden}:"
    assert (settings.pool_size, settings.connect_timeout_ms, settings.command_timeout_ms) == (32, 1_000, 1_000)
    assert parse_config({}).state.redis is None  # memory by default: no Redis at all


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@redis.internal:6380/2",
        "unix:///run/redis/redis.sock?db=1",
        "redis://[::1]:6379",
    ],
)
def test_redis_rediss_and_unix_urls_are_taken(url: str) -> None:
    assert state(url=url).url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:6379", "the scheme must be one of"),
        ("127.0.0.1:6379", "the scheme must be one of"),
        ("redis://127.0.0.1:99999/0", "does not parse"),
        ("redis:///0", "no host"),
        ("redis://127.0.0.1:6379/zero", "the database must be a number"),
        ("unix://", "needs a socket path"),
    ],
)
def test_a_bad_url_names_state_url(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        state(url=url)
    assert error.value.key == "state.url"
    assert problem in str(error.value)


def test_a_password_never_appears_in_an_error_or_repr() -> None:
    with pytest.raises(ConfigError) as error:
        state(url="redis://admin:hunter2@127.0.0.1:6379/x")
    assert "hunter2" not in str(error.value) and "admin:***@" in str(error.value)
    assert "hunter2" not in repr(state(url="redis://admin:hunter2@127.0.0.1:6379/0"))
    assert redacted("rediss://:s3cret@h:1/0") == "rediss://:***@h:1/0"


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"url": 6379}, "state.url"),
        ({"key_prefix": ""}, "state.key_prefix"),
        ({"key_prefix": "has space"}, "state.key_prefix"),
        ({"key_prefix": "x" * 65}, "state.key_prefix"),
        ({"pool_size": 0}, "state.pool_size"),
        ({"connect_timeout_ms": 5}, "state.connect_timeout_ms"),
        ({"command_timeout_ms": "fast"}, "state.command_timeout_ms"),
        ({"sentinels": "h:1"}, "state.sentinels"),
        ({"sentinels": ["h"]}, "state.sentinels"),
        ({"sentinels": ["h:26379"]}, "state.sentinel_master"),  # the missing half is named
        ({"sentinel_master": "mymaster"}, "state.sentinels"),
        ({"cluster": "yes"}, "state.cluster"),
        ({"cluster": True, "key_prefix": "lw:"}, "state.key_prefix"),  # no hash tag
        ({"cluster": True, "sentinels": ["h:1"], "sentinel_master": "m"}, "state.cluster"),
        ({"replicas": 0}, "state.replicas"),
        ({"on_failure": "retry"}, "state.on_failure"),
        ({"rate_limit_on_failure": "open"}, "state.rate_limit_on_failure"),
    ],
)
def test_each_bad_key_is_named(keys: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        state(**keys)
    assert error.value.key == key


def test_sentinel_and_cluster_settings_are_taken() -> None:
    sentinel = state(sentinels=["10.0.0.1:26379", "10.0.0.2:26379"], sentinel_master="mymaster")
    assert sentinel.sentinels == ("10.0.0.1:26379", "10.0.0.2:26379") and sentinel.sentinel_master == "mymaster"
    assert state(cluster=True, key_prefix="{lw}:").cluster is True


def test_redis_keys_without_the_redis_store_say_so() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"state": {"url": "redis://127.0.0.1:6379/0"}})
    assert error.value.key == "state.url" and 'store = "redis"' in str(error.value)


def test_an_unknown_store_lists_the_three() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"state": {"store": "etcd"}})
    assert error.value.key == "state.store" and "file, memory, redis" in str(error.value)
