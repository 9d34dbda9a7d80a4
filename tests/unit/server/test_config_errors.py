"""Bad config and state files: each ends in one ConfigError naming the key or file, never a traceback.

The parsers are fed every kind of bad input an operator (or an attacker with
write access to a file) can produce; the state file is moved aside whatever is
wrong with it. tests/e2e/test_bad_files.py runs the same inputs through the
real ``loadwarden serve`` process.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from loadwarden.policy._errors import NotFound
from loadwarden.server import (
    ConfigError,
    CoreLimits,
    DecisionCore,
    ManualClock,
    OperationSettings,
    PoolSettings,
    PoolSpec,
    ServerSpec,
    ServiceConfig,
    load_config,
)
from loadwarden.server.app import _cli, _config
from loadwarden.server.app._config import parse_config
from loadwarden.server.app._persistence import LEARNED_KEY, decode, restore
from loadwarden.server.app._store import FileStore, MemoryStore

TOKEN = "t" * 24


def write_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "loadwarden.toml"
    path.write_bytes(data)
    return path


# --- the file itself -----------------------------------------------------------------

DEEP_ARRAY = b"a = " + b"[" * 5000 + b"]" * 5000
DEEP_TABLE = b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff\xfe[\x00s\x00]\x00", "UTF-16"),
        ('[service]\nlisten = "caf\xe9"\n'.encode("latin-1"), "not UTF-8 text: byte 0xe9 at line 2"),
        (bytes(range(256)) * 4, "not UTF-8 text"),
        (b"[service]\x00\n", "invalid TOML"),
        (DEEP_ARRAY, "nested too deeply"),
        (DEEP_TABLE, "nested too deeply"),
        (b"[service]\nseed = " + b"9" * 5000 + b"\n", "an integer has more than"),
        (b"[service\n", "invalid TOML"),
    ],
    ids=["utf16", "latin1", "binary", "nul", "deep-array", "deep-table", "huge-int", "syntax"],
)
def test_unreadable_file_contents_name_the_file(tmp_path: Path, data: bytes, problem: str) -> None:
    path = write_bytes(tmp_path, data)
    with pytest.raises(ConfigError, match=problem) as err:
        load_config(path, {})
    assert err.value.key == str(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b'\xef\xbb\xbf[service]\nlisten = "127.0.0.1:7"\n')
    assert load_config(path, {}).listen == "127.0.0.1:7"


def test_files_that_are_not_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would block the start forever
    cases = {
        tmp_path: "a directory",
        fifo: "a named pipe",
        Path("/dev/zero"): "a device",
        tmp_path / "missing.toml": "No such file",
    }
    for path, problem in cases.items():
        with pytest.raises(ConfigError, match=problem) as err:
            load_config(path, {})
        assert err.value.key == str(path)


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with open(path, "wb") as handle:
        handle.truncate(_config.MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ConfigError, match="bytes; at most") as err:
        load_config(path, {})
    assert err.value.key == str(path)


# --- every level of the mapping -------------------------------------------------------

POOL = {"servers": [{"id": "a", "address": "h:1"}]}
ADMIN = {"listen": "127.0.0.1:0", "token": TOKEN}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"nope": {}}, "nope"),
        ({"service": 1}, "service"),
        ({"service": {"x": 1}}, "service.x"),
        ({"service": {"listen": 1}}, "service.listen"),
        ({"service": {"listen": ""}}, "service.listen"),
        ({"service": {"listen": "h:99999999999999999999"}}, "service.listen"),
        ({"service": {"shutdown_grace_ms": float("nan")}}, "service.shutdown_grace_ms"),
        ({"service": {"shutdown_grace_ms": float("inf")}}, "service.shutdown_grace_ms"),
        ({"service": {"expiry_interval_ms": True}}, "service.expiry_interval_ms"),
        ({"service": {"seed": 10**4000}}, "service.seed"),
        ({"service": {"seed": -1}}, "service.seed"),
        ({"service": {"auto_register_operations": "yes"}}, "service.auto_register_operations"),
        ({"limits": [1]}, "limits"),
        ({"limits": {"x": 1}}, "limits.x"),
        ({"limits": {"max_pools": 2**63}}, "limits.max_pools"),
        ({"limits": {"max_pools": {}}}, "limits.max_pools"),
        ({"pools": 1}, "pools"),
        ({"pools": {"api": 1}}, "pools.api"),
        ({"pools": {"a b": {}}}, "pools.a b"),
        ({"pools": {"": {}}}, "pools."),
        ({"pools": {"api": {"x": 1}}}, "pools.api.x"),
        ({"pools": {"api": {"strategy": ["a"]}}}, "pools.api.strategy"),
        ({"pools": {"api": {"strategy": "nope"}}}, "pools.api.strategy"),
        ({"pools": {"api": {"strategy_params": 1}}}, "pools.api.strategy_params"),
        ({"pools": {"api": {"max_concurrency": float("nan")}}}, "pools.api.max_concurrency"),
        ({"pools": {"api": {"max_concurrency": 2**63}}}, "pools.api.max_concurrency"),
        ({"pools": {"api": {"lease_ttl_ms": float("inf")}}}, "pools.api.lease_ttl_ms"),
        (
            {"pools": {"api": {"limit_algorithm": "aimd", "limit_params": {"backoff_ratio": float("nan")}}}},
            "pools.api.limit_params.backoff_ratio",
        ),
        ({"pools": {"api": {"outlier_detection": 1}}}, "pools.api.outlier_detection"),
        ({"pools": {"api": {"servers": "a"}}}, "pools.api.servers"),
        ({"pools": {"api": {"servers": [1]}}}, "pools.api.servers[0]"),
        ({"pools": {"api": {"servers": [{"id": "a", "address": ["h:1"]}]}}}, "pools.api.servers[0].address"),
        (
            {"pools": {"api": {"servers": [{"id": "a", "address": "h:1", "weight": float("nan")}]}}},
            "pools.api.servers[0].weight",
        ),
        ({"operations": 1}, "operations"),
        ({"operations": {"x": 1}}, "operations.x"),
        ({"operations": {"x": {"min_batch_size": float("inf")}}}, "operations.x.min_batch_size"),
        ({"operations": {"x": {"max_batch_size": 1e300}}}, "operations.x.max_batch_size"),
        ({"operations": {"x": {"low_threshold_percent": float("nan")}}}, "operations.x.low_threshold_percent"),
        ({"operations": {"x": {"mode": ["x"]}}}, "operations.x.mode"),
        ({"monitor": {"cpu_weight": float("nan")}}, "monitor.cpu_weight"),
        ({"monitor": {"enabled": "x"}}, "monitor.enabled"),
        ({"state": {"store": ["file"]}}, "state.store"),
        ({"state": {"store": "file", "path": 1}}, "state.path"),
        ({"state": {"store": "file", "path": "a\0b"}}, "state.path"),
        ({"state": {"store": "file", "path": ""}}, "state.path"),
        ({"state": {"save_interval_ms": float("nan")}}, "state.save_interval_ms"),
        ({"admin": {"listen": 1}}, "admin.listen"),
        ({"admin": {"history_path": "a\0b"}}, "admin.history_path"),
        ({"admin": {"history_retention_s": "x"}}, "admin.history_retention_s"),
        ({"admin": {"listen": "127.0.0.1:0"}}, "admin.token"),
        ({"tls": {"cert_file": "a\0b", "key_file": "k"}}, "tls.cert_file"),
        ({"tls": {"cert_file": [1]}}, "tls.cert_file"),
        ({"auth": {"clients": 1}}, "auth.clients"),
        ({"auth": {"client_token": 1}}, "auth.client_token"),
        ({"logging": {"format": "xml"}}, "logging.format"),
        ({"logging": {"format": 1}}, "logging.format"),
        ({"logging": {"level": "DEBUG"}}, "logging.level"),
        ({"logging": 1}, "logging"),
    ],
)
def test_bad_values_name_their_key(raw: Mapping[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.key == key
    assert len(str(err.value)) < 1_000  # a huge bad value is cut, never echoed whole


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"LOADWARDEN_NOPE__X": "1"}, "LOADWARDEN_NOPE__X"),
        ({"LOADWARDEN_SERVICE_LISTEN": "127.0.0.1:1"}, "LOADWARDEN_SERVICE_LISTEN"),
        ({"LOADWARDEN_AUTH_CLIENT_TOKEN": "x" * 32}, "LOADWARDEN_AUTH_CLIENT_TOKEN"),
        ({"LOADWARDEN_": "1"}, "LOADWARDEN_"),
        ({"LOADWARDEN_SERVICE__SEED": "[" * 5000}, "service.seed"),
        ({"LOADWARDEN_SERVICE__SEED": "[" * 3000 + "]" * 3000}, "service.seed"),
        ({"LOADWARDEN_SERVICE__SEED": "9" * 5000}, "service.seed"),
        ({"LOADWARDEN_SERVICE__SEED": "nan"}, "service.seed"),
        ({"LOADWARDEN_SERVICE__SEED": "1\nx = 2"}, "service.seed"),
        ({"LOADWARDEN_SERVICE": "5"}, "service"),
        ({"LOADWARDEN_POOLS__API": "5"}, "pools.api"),
        ({"LOADWARDEN_STATE__STORE": "[1]"}, "state.store"),
        ({"LOADWARDEN_ADMIN__TOKEN": "x"}, "admin.token"),
        (
            {"LOADWARDEN_OPERATIONS__X__LOAD_SOURCE": "pool", "LOADWARDEN_OPERATIONS__X__POOL": "nope"},
            "operations.x.pool",
        ),
    ],
)
def test_bad_environment_overrides_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env)
    assert err.value.key == key


def test_a_one_underscore_service_setting_is_told_its_spelling() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"LOADWARDEN_SERVICE_LISTEN": "127.0.0.1:1"})
    assert "LOADWARDEN_SERVICE__LISTEN" in str(err.value)


def test_applications_loadwarden_names_are_left_to_them() -> None:
    """The service's settings are LOADWARDEN_<SECTION>__<KEY>; the SDK's examples and the
    test tools use LOADWARDEN_TARGET, LOADWARDEN_CLIENT_TOKEN, LOADWARDEN_SOAK_S..."""
    names = ("LOADWARDEN_TARGET", "LOADWARDEN_CLIENT_TOKEN", "LOADWARDEN_TOKEN", "LOADWARDEN_SOAK_S", "LOADWARDEN_NOPE")
    config = load_config(None, dict.fromkeys(names, "x") | {"LOADWARDEN_SERVICE__SEED": "3"})
    assert config.seed == 3


def test_an_environment_value_never_sets_two_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown strategy 'round_robin\\nmax_concurrency = 5'") as err:
        load_config(None, {"LOADWARDEN_POOLS__API__STRATEGY": "round_robin\nmax_concurrency = 5"})
    assert err.value.key == "pools.api.strategy"  # one (invalid) string, never a second setting


# --- operations reading a pool --------------------------------------------------------


def test_an_operation_reading_a_missing_pool_is_refused() -> None:
    raw = {"pools": {"api": POOL}, "operations": {"x": {"load_source": "pool", "pool": "nope"}}}
    with pytest.raises(ConfigError, match="no pool named 'nope' is configured; configured pools: api") as err:
        parse_config(raw)
    assert err.value.key == "operations.x.pool"
    ok = parse_config({**raw, "operations": {"x": {"load_source": "pool", "pool": "api"}}})
    assert ok.operations[0].pool == "api"


def test_service_config_built_in_code_checks_the_pool_too() -> None:
    operation = OperationSettings(name="x", load_source="pool", pool="api")
    with pytest.raises(ConfigError) as err:
        ServiceConfig(operations=(operation,))
    assert err.value.key == "operations.x.pool"
    ServiceConfig(pools=(PoolSpec(PoolSettings(name="api")),), operations=(operation,))


def test_configure_operation_needs_the_pool_and_survives_its_deletion() -> None:
    core = DecisionCore(CoreLimits(), clock=ManualClock(), rng=random.Random(1))
    operation = OperationSettings(name="x", default_batch_size=7, max_batch_size=10, load_source="pool", pool="api")
    with pytest.raises(NotFound) as err:
        core.configure_operation(operation)
    assert err.value.field == "operation.pool" and "no pool named 'api'" in str(err.value)
    assert "x" not in core.operations
    core.configure_pool(PoolSettings(name="api"), [ServerSpec("a", "h:1")])
    core.configure_operation(operation)
    core.delete_pool("api")  # allowed: the answer says why it is the default size
    answer = core.batch_size("x")
    assert answer.fallback and answer.size == 7 and "no pool named 'api'" in answer.reason
    with pytest.raises(NotFound):  # reconfiguring it while the pool is gone is refused too
        core.configure_operation(operation)


# --- the CLI's one line ---------------------------------------------------------------


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_cli.main`` without its process-wide logging and tracing setup (which would outlive the test)."""
    for name in ("configure_logging", "configure_tracing", "shutdown_tracing"):
        monkeypatch.setattr(_cli, name, lambda *args: None)


def test_cli_prints_exactly_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], quiet_cli: None) -> None:
    path = write_bytes(tmp_path, b'[service]\n"x\\ny\\u001b[31m" = 1\n')
    assert _cli.main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("loadwarden: invalid configuration: service.x\\ny\\x1b[31m: unknown key")


def test_cli_turns_an_unexpected_parser_failure_into_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, quiet_cli: None
) -> None:
    def broken(path: object, environ: object) -> None:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(_cli, "load_config", broken)
    assert _cli.main(["serve", "--config", "x.toml"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "loadwarden: invalid configuration: x.toml: cannot be read (TypeError: unhashable type: 'list'); "
        "run with --log-level DEBUG for details\n"
    )


# --- check-config ------------------------------------------------------------------------

GOOD = b"""
[pools.api]
strategy = "p2c"
servers = [{ id = "a", address = "127.0.0.1:1" }, { id = "b", address = "127.0.0.1:2" }]

[operations.import]
pool = "api"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[bogus]\nx = 1\n", "bogus: unknown section"),
        (b'[pools.api]\nstrategy = "nope"\n', "pools.api.strategy"),
        # Checked only when the core is built (serve's second step), and by check-config too:
        (
            b'[pools.api]\nstrategy = "p2c"\nstrategy_params = { choice_count = 99 }\n',
            "pools.api.strategy_params.choice_count: must be 2-16, got 99",
        ),
        (b"[limits]\nmax_servers = 1\n" + GOOD, "limits.max_servers"),
        (b'[tls]\ncert_file = "/nonexistent/c.pem"\nkey_file = "/nonexistent/k.pem"\n', "tls.cert_file"),
        (b"[service\n", "invalid TOML"),
    ],
)
def test_check_config_refuses_what_serve_refuses_with_the_same_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quiet_cli: None, text: bytes, message: str
) -> None:
    path = write_bytes(tmp_path, text)
    assert _cli.main(["check-config", str(path)]) == 2
    checked = capsys.readouterr()
    assert checked.out == "" and checked.err.count("\n") == 1 and message in checked.err, checked.err
    if b"strategy_params" in text or b"max_servers" in text:
        return  # serve would go on to build the core and report it there: the same words, checked below
    assert _cli.main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err == checked.err


def test_check_config_and_serve_word_a_build_time_error_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, quiet_cli: None
) -> None:
    path = write_bytes(tmp_path, b'[pools.api]\nstrategy = "p2c"\nstrategy_params = { choice_count = 99 }\n')
    assert _cli.main(["check-config", str(path)]) == 2
    checked = capsys.readouterr().err

    async def serve_without_binding(config: _config.ServiceConfig) -> None:
        _cli.build_core(config)  # what start_service does first with the pools

    monkeypatch.setattr(_cli, "serve", serve_without_binding)
    assert _cli.main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err == checked


def test_check_config_accepts_a_good_file_and_says_what_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quiet_cli: None
) -> None:
    path = write_bytes(tmp_path, GOOD)
    assert _cli.main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid (1 pools, 2 servers, 1 operations, state in memory)\n"


def test_check_config_applies_the_environment_as_serve_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, quiet_cli: None
) -> None:
    path = write_bytes(tmp_path, GOOD)
    monkeypatch.setenv("LOADWARDEN_LIMITS__MAX_SERVERS", "1")
    assert _cli.main(["check-config", str(path)]) == 2
    assert "limits.max_servers" in capsys.readouterr().err


# --- the state file -------------------------------------------------------------------

FORMAT = "loadwarden.learned/1"


def q_core(*pools: str) -> DecisionCore:
    core = DecisionCore(CoreLimits(), clock=ManualClock(), rng=random.Random(1))
    for name in pools:
        core.configure_pool(PoolSettings(name=name, strategy="q_learning"), [ServerSpec("a", "h:1")])
    return core


def envelope(pools: dict[str, Any]) -> bytes:
    return json.dumps({"format": FORMAT, "saved_at": 1.0, "pools": pools}).encode()


def good_state() -> Any:
    return q_core("p").pool("p").strategy.snapshot()


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (b'{"format": "loadwarden.learned/1", "saved_at": ' + b"9" * 5000 + b', "pools": {}}', "more than"),
        ("{}".encode("utf-16"), "not JSON"),
        (b"", "not JSON"),
        (b"null", "not a loadwarden.learned/1 document"),
        (b'"x"', "not a loadwarden.learned/1 document"),
    ],
    ids=["deep-array", "deep-object", "huge-int", "utf16", "empty", "null", "string"],
)
def test_decode_refuses_what_json_cannot_describe(blob: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode(blob)


def bad_q_states() -> list[Any]:
    state = good_state()
    deep: Any = 1
    for _ in range(500):  # parses, then restore() meets a shape it never expected
        deep = [deep]
    return [
        1,
        [1],
        {},
        {**state, "q_table": [1]},
        {**state, "q_table": {"s": {"a": "x"}}},
        {**state, "q_table": {"s": deep}},
        {**state, "epsilon": 1e308},
        {**state, "episodes": -1},
    ]


@pytest.mark.parametrize("state", bad_q_states(), ids=lambda s: type(s).__name__)
def test_wrong_shapes_inside_valid_json_are_moved_aside(
    state: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path)
    store.save(LEARNED_KEY, envelope({"p": {"strategy": "q_learning", "state": state}}))
    core = q_core("p")
    with caplog.at_level(logging.WARNING, logger="loadwarden.server"):
        assert restore(core, store) == 0
    assert "moved aside" in caplog.text and "pool 'p'" in caplog.text
    assert core.pool("p").strategy.snapshot() == good_state()  # fresh, not half-restored
    assert store.load(LEARNED_KEY) is None


def test_one_bad_pool_leaves_the_others_restored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileStore(tmp_path)
    state = {**good_state(), "episodes": 5}
    store.save(
        LEARNED_KEY,
        envelope({"good": {"strategy": "q_learning", "state": state}, "bad": {"strategy": "q_learning", "state": [1]}}),
    )
    core = q_core("good", "bad")
    with caplog.at_level(logging.WARNING, logger="loadwarden.server"):
        assert restore(core, store) == 1
    assert "pool 'bad'" in caplog.text and "1 restored" in caplog.text
    restored = core.pool("good").strategy.snapshot()
    assert restored is not None and restored["episodes"] == 5
    assert any(p.name.startswith(f"{LEARNED_KEY}.json.corrupt-") for p in tmp_path.iterdir())


def test_a_state_path_that_is_a_directory_or_too_big_is_moved_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    (tmp_path / f"{LEARNED_KEY}.json").mkdir()
    assert restore(q_core("p"), store) == 0
    assert store.load(LEARNED_KEY) is None
    monkeypatch.setattr(FileStore, "max_bytes", 10)
    store.save(LEARNED_KEY, envelope({}))
    with pytest.raises(OSError, match="more than the 10 allowed"):
        store.load(LEARNED_KEY)
    assert restore(q_core("p"), store) == 0
    assert store.load(LEARNED_KEY) is None
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name]) == 2


def test_a_blob_that_cannot_be_moved_aside_is_a_config_error() -> None:
    class Stuck(MemoryStore):
        def quarantine(self, key: str) -> str | None:
            raise PermissionError(13, "Permission denied")

    store = Stuck()
    store.save(LEARNED_KEY, b"garbage")
    with pytest.raises(ConfigError, match="cannot be moved aside: Permission denied") as err:
        restore(q_core("p"), store)
    assert err.value.key == "state.path"


def test_state_path_problems_name_state_path(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    for path in (afile, afile / "below"):
        with pytest.raises(ConfigError) as err:
            FileStore(path)
        assert err.value.key == "state.path"
    (tmp_path / "dir" / ".x.tmp").mkdir(parents=True)  # a leftover we cannot unlink is only logged
    FileStore(tmp_path / "dir")


def test_logging_format_json_is_read_from_the_file_and_the_environment() -> None:
    assert parse_config({"logging": {"format": "json"}}).logging.format == "json"
    assert load_config(None, {"LOADWARDEN_LOGGING__FORMAT": "json"}).logging.format == "json"
    with pytest.raises(ConfigError, match=r"logging.format: unknown format 'xml'; valid formats: text, json"):
        parse_config({"logging": {"format": "xml"}})
