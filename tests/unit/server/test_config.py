"""Config: TOML plus LOADWARDEN_* overrides; every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadwarden.server import ConfigError, ServiceConfig, load_config
from loadwarden.server.app._config import parse_config

GOOD = """
[service]
listen = "127.0.0.1:6000"
seed = 4

[limits]
decision_ttl_ms = 5000

[pools.api]
strategy = "least_connections"
load_report_ttl_ms = 2000
servers = [
  { id = "a", address = "10.0.0.1:80" },
  { id = "b", address = "10.0.0.2:80", weight = 3 },
]

[pools.batch]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loadwarden.toml"
    path.write_text(text)
    return path


def test_no_config_is_empty_and_usable() -> None:
    config = load_config(None, {})
    assert config == ServiceConfig()
    assert config.listen == "127.0.0.1:50051" and config.pools == ()


def test_full_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), {})
    assert config.listen == "127.0.0.1:6000" and config.seed == 4
    assert config.limits.decision_ttl_ms == 5000
    api, batch = config.pools
    assert api.settings.strategy == "least_connections" and api.settings.load_report_ttl_ms == 2000
    assert [(s.id, s.weight) for s in api.servers] == [("a", 1), ("b", 3)]
    assert batch.settings.strategy == "round_robin" and batch.servers == ()


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        "LOADWARDEN_SERVICE__LISTEN": "0.0.0.0:7000",
        "LOADWARDEN_POOLS__API__STRATEGY": "round_robin",
        "LOADWARDEN_LIMITS__MAX_POOLS": "9",
        "OTHER": "ignored",
    }
    config = load_config(write(tmp_path, GOOD), env)
    assert config.listen == "0.0.0.0:7000"
    assert config.pools[0].settings.strategy == "round_robin"
    assert config.limits.max_pools == 9


def test_env_can_create_a_pool() -> None:
    config = load_config(None, {"LOADWARDEN_POOLS__WEB__STRATEGY": "least_connections"})
    assert config.pools[0].settings.name == "web"


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[service]\nlisten = 5", {}, "service.listen"),
        ("[service]\nport = 5", {}, "service.port"),
        ("[servce]\n", {}, "servce"),
        ("[limits]\nmax_pools = 0", {}, "limits.max_pools"),
        ("[limits]\nmax_pool = 3", {}, "limits.max_pool"),
        ("[pools.api]\nstrategy = 'fastest'", {}, "pools.api.strategy"),
        ("[pools.api]\nstrategy_params = { choice_count = 2 }", {}, "pools.api.strategy_params.choice_count"),
        ("[pools.api]\nload_report_ttl_ms = 5", {}, "pools.api.load_report_ttl_ms"),
        ("[pools.api]\nload_report_ttl_ms = -5", {}, "pools.api.load_report_ttl_ms"),
        ("[pools.api]\nrate_limit = '30 per minute'", {}, "pools.api.rate_limit"),
        ("[pools.api]\nlimit_algorithm = 'magic'", {}, "pools.api.limit_algorithm"),
        ("[pools.api]\nservers = [{ id = 'a' }]", {}, "pools.api.servers[0].address"),
        ("[pools.api]\nservers = [{ id = 'a b', address = 'h:1' }]", {}, "pools.api.servers[0].id"),
        ("[pools.api]\nservers = [{ id = 'a', address = 'h:1', weight = 0.5 }]", {}, "pools.api.servers[0].weight"),
        ("[pools.api]\nservers = [{ id = 'a', address = 'h:1', weight = 5000 }]", {}, "pools.api.servers[0].weight"),
        (
            "[pools.api]\nservers = [{ id = 'a', address = 'h:1' }, { id = 'a', address = 'h:2' }]",
            {},
            "pools.api.servers[1].id",
        ),
        ("[pools.api]\nservers = [{ id = 'a', address = 'h:1', port = 3 }]", {}, "pools.api.servers[0].port"),
        ("[pools.api]\nbogus = 1", {}, "pools.api.bogus"),
        ("[pools]\napi = 3", {}, "pools.api"),
        ("", {"LOADWARDEN_NOPE__X": "1"}, "LOADWARDEN_NOPE__X"),
        ("", {"LOADWARDEN_SERVICE__": "1"}, "LOADWARDEN_SERVICE__"),
        ("", {"LOADWARDEN_POOLS__API__STRATEGY": "fastest"}, "pools.api.strategy"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env)
    assert err.value.key == key, str(err.value)


def test_long_or_odd_pool_names_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"pools": {"x" * 129: {}}})
    assert "at most 128" in str(err.value)
    with pytest.raises(ConfigError):
        parse_config({"pools": {"bad\x00name": {}}})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", {})
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[pools\n"), {})


def test_too_many_pools() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": {"max_pools": 1}, "pools": {"a": {}, "b": {}}})
    assert err.value.key == "pools"


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:65536", "nohost", ":50051", "h:port", "::1:5"])
def test_listen_must_be_host_and_valid_port(listen: str) -> None:
    with pytest.raises(ConfigError) as err:
        ServiceConfig(listen=listen)
    assert err.value.key == "service.listen"


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:65535", "[::1]:50051", "0.0.0.0:1"])
def test_valid_listen_addresses(listen: str) -> None:
    assert ServiceConfig(listen=listen).listen == listen
