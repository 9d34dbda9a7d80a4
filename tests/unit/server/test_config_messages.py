"""Every config error message, word for word, against those of the hand-written parser.

``data/config_messages.json`` was written by the parser before validation moved to
pydantic (commit 7b44a46), with this module run as a script over the same corpus:
every key of every section with wrong types, out-of-range and odd values. The
pydantic tables must give the same message for each case. Three answers changed on
purpose and are pinned here as they are now (``CHANGED``); keys added since (
``service.readiness_interval_ms``) are in the golden file's lists of valid keys.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from loadwarden.server import ConfigError
from loadwarden.server.app._config import parse_config

GOLDEN = Path(__file__).with_name("data") / "config_messages.json"
_BAD: list[Any] = ["x", 1.5, True, -1, 0, 2**70, [], {}, "\0", "", ["a:1"], 5, 100_000_000, "127.0.0.1:1"]
_KEYS = {
    "service": ["listen", "shutdown_grace_ms", "expiry_interval_ms", "seed", "auto_register_operations", "nope"],
    "limits": ["decision_ttl_ms", "max_pools", "max_message_bytes", "max_connections", "nope"],
    "monitor": [
        *("enabled", "interval_ms", "cpu_weight", "memory_weight", "load_average_weight", "stale_after_ms", "nope")
    ],
    "admin": ["listen", "token", "history_path", "history_interval_ms", "history_retention_s", "nope"],
    "tls": ["cert_file", "key_file", "client_ca_file", "require_client_cert", "nope"],
    "auth": ["client_token", "clients", "nope"],
    "logging": ["format", "nope"],
    "state": ["store", "path", "save_interval_ms", "url", "key_prefix", "nope"],
}
_REDIS = [
    "url", "key_prefix", "pool_size", "connect_timeout_ms", "command_timeout_ms", "sentinels", "sentinel_master",
    "cluster", "on_failure", "rate_limit_on_failure", "replicas", "exchange_interval_ms", "merge_interval_ms",
    "nope", "path",
]  # fmt: skip
# Better now: a NUL in an unknown key names the unknown key, a NUL where a bool goes says
# "true or false", a long value is cut as every other message cuts it; with several
# mistakes, the first in the file's section order is named.
CHANGED = {
    "tls.nope='\\x00'": "tls.nope: unknown key; valid keys: cert_file, client_ca_file, key_file, require_client_cert",
    "tls.require_client_cert='\\x00'": "tls.require_client_cert: must be true or false, got '\\x00'",
    "two": "service.listen: must be a string host:port, got 1",
}


def corpus() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for section, keys in _KEYS.items():
        for value in _BAD:
            cases[f"{section}={value!r}"] = {section: value}
        for key in keys:
            for value in _BAD:
                cases[f"{section}.{key}={value!r}"] = {section: {key: value}}
    for key in _REDIS:
        for value in [*_BAD, "redis://h:1/0", "{x}:", "local", "fail_open"]:
            cases[f"redis.{key}={value!r}"] = {"state": {"store": "redis", key: value}}
            cases[f"redis-cluster.{key}={value!r}"] = {"state": {"store": "redis", "cluster": True, key: value}}
    for value in _BAD:
        cases[f"pools={value!r}"] = {"pools": value}
        cases[f"pools.a={value!r}"] = {"pools": {"a": value}}
        cases[f"operations={value!r}"] = {"operations": value}
        cases[f"top={value!r}"] = {"nope": value}
    cases["admin.listen without a token"] = {"admin": {"listen": "127.0.0.1:0"}}
    cases["admin.token short"] = {"admin": {"token": "short"}}
    cases["tls key without cert"] = {"tls": {"key_file": "k"}}
    cases["monitor weights all zero"] = {"monitor": {"cpu_weight": 0, "memory_weight": 0, "load_average_weight": 0}}
    cases["file store without path"] = {"state": {"store": "file"}}
    cases["two"] = {"service": {"listen": 1, "seed": "x"}, "limits": {"max_pools": 0}}
    cases["operation reads a missing pool"] = {"operations": {"o": {"load_source": "pool", "pool": "zz"}}}
    cases["admin token as client token"] = {"admin": {"token": "a" * 20}, "auth": {"client_token": "a" * 20}}
    cases["client name"] = {"auth": {"clients": {"a b": "x" * 20}}}
    return cases


def messages() -> dict[str, str]:
    answers = {}
    for name, raw in corpus().items():
        try:
            parse_config(raw)
        except ConfigError as exc:
            answers[name] = str(exc)
        else:
            answers[name] = "OK"
    return answers


def test_every_message_is_the_hand_written_parsers() -> None:
    expected = {**json.loads(GOLDEN.read_text(encoding="utf-8")), **CHANGED}
    got = messages()
    assert got.keys() == expected.keys()
    differ = {name: (expected[name], got[name]) for name in expected if got[name] != expected[name]}
    assert not differ
    assert sum(answer != "OK" for answer in got.values()) > 1_000  # the corpus is mostly mistakes


if __name__ == "__main__":  # python tests/unit/server/test_config_messages.py > data/config_messages.json
    json.dump(messages(), sys.stdout, indent=0, sort_keys=True, ensure_ascii=True)
    sys.stdout.write("\n")
