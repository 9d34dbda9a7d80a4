"""Bad config and state files against the real ``loadwarden serve`` process.

A bad config file (or LOADWARDEN_* variable) ends the start with exit status 2
and one ``loadwarden: invalid configuration: <key or file>: <problem>`` line on
stderr, never a traceback. A state file that cannot be used for any reason is
moved aside and the service starts and serves.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ._harness import Grpcurl, Processes, tool

TOKEN = "t" * 24
POOL = '[pools.api]\nstrategy = "q_learning"\nservers = [{ id = "a-1", address = "127.0.0.1:9001" }]\n'
ADMIN = f'[admin]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n'
# Startup log lines may come before the failure (e.g. "pool api created"): they are not the error.
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


def expect_one_line(processes: Processes, args: list[str | Path], env: dict[str, str] | None = None) -> str:
    """Runs ``loadwarden serve args``; asserts exit 2, no traceback, one error line (the last); returns it."""
    process = processes.spawn([tool("loadwarden"), "serve", "--listen", "127.0.0.1:0", *args], env=env)
    rc = processes.expect_exit(process)
    err = process.stderr.text
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if not _LOG_LINE.match(line)]
    assert rc == 2, process.describe()
    assert "Traceback" not in err, process.describe()
    assert len(errors) == 1 and errors[0] == lines[-1], process.describe()
    assert errors[0].startswith("loadwarden: invalid configuration: "), process.describe()
    return errors[0]


def config_file(tmp_path: Path, data: bytes | str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


BAD_CONFIGS: list[tuple[str, bytes | str, str]] = [
    ("utf16", "[service]\n".encode("utf-16"), "bad.toml: config file is UTF-16"),
    ("latin1", '[service]\nlisten = "caf\xe9"\n'.encode("latin-1"), "bad.toml: config file is not UTF-8"),
    ("binary", bytes(range(256)) * 4, "bad.toml: config file is not UTF-8"),
    ("deep-array", "a = " + "[" * 5000 + "]" * 5000, "bad.toml: invalid TOML: arrays or tables nested too deeply"),
    ("deep-table", "a = " + "{b = " * 3000 + "1" + "}" * 3000, "bad.toml: invalid TOML: arrays or tables nested"),
    ("huge-int", "[service]\nseed = " + "9" * 5000, "bad.toml: invalid TOML: an integer has more than"),
    ("syntax", "[service\n", "bad.toml: invalid TOML"),
    ("unknown-section", "[nope]\n", "nope: unknown section"),
    ("unknown-key", "[service]\nx = 1\n", "service.x: unknown key"),
    ("key-with-newline", '[service]\n"x\\ny" = 1\n', "service.x\\ny: unknown key"),
    ("huge-key", '"' + "k" * 100_000 + '" = 1\n', "(100"),
    ("section-not-table", "service = 1\n", "service: must be a table"),
    ("grace-nan", "[service]\nshutdown_grace_ms = nan\n", "service.shutdown_grace_ms: must be an integer"),
    ("grace-inf", "[service]\nshutdown_grace_ms = inf\n", "service.shutdown_grace_ms: must be an integer"),
    ("seed-float", "[service]\nseed = 1.5\n", "service.seed"),
    ("auto-string", '[service]\nauto_register_operations = "yes"\n', "service.auto_register_operations"),
    ("limit-huge", "[limits]\nmax_pools = 9223372036854775807\n", "limits.max_pools"),
    ("limit-table", "[limits.max_pools]\n", "limits.max_pools"),
    ("pool-not-table", "[pools]\napi = 1\n", "pools.api: must be a table"),
    ("pool-bad-name", '[pools."a b"]\n', "pools.a b"),
    ("pool-empty-name", '[pools.""]\n', "pools.: is required"),
    ("strategy-list", '[pools.api]\nstrategy = ["a"]\n', "pools.api.strategy: must be a string"),
    ("strategy-unknown", '[pools.api]\nstrategy = "nope"\n', "pools.api.strategy: unknown strategy"),
    ("params-not-table", "[pools.api]\nstrategy_params = 1\n", "pools.api.strategy_params"),
    ("concurrency-nan", "[pools.api]\nmax_concurrency = nan\n", "pools.api.max_concurrency"),
    (
        "limit-param-nan",
        '[pools.api]\nlimit_algorithm = "aimd"\nlimit_params = { backoff_ratio = nan }\n',
        "pools.api.limit_params.backoff_ratio",
    ),
    ("servers-string", '[pools.api]\nservers = "a"\n', "pools.api.servers"),
    ("server-int", "[pools.api]\nservers = [1]\n", "pools.api.servers[0]"),
    (
        "server-weight-inf",
        '[pools.api]\nservers = [{ id = "a", address = "h:1", weight = inf }]\n',
        "pools.api.servers[0].weight",
    ),
    (
        "server-duplicate",
        '[pools.api]\nservers = [{ id = "a", address = "h:1" }, { id = "a", address = "h:2" }]\n',
        "pools.api.servers[1].id",
    ),
    ("operation-min-inf", "[operations.x]\nmin_batch_size = inf\n", "operations.x.min_batch_size"),
    ("operation-mode-list", '[operations.x]\nmode = ["x"]\n', "operations.x.mode"),
    (
        "operation-missing-pool",
        '[operations.x]\nload_source = "pool"\npool = "nope"\n',
        "operations.x.pool: no pool named 'nope' is configured",
    ),
    ("monitor-weight-nan", "[monitor]\ncpu_weight = nan\n", "monitor.cpu_weight"),
    ("state-store-list", '[state]\nstore = ["file"]\n', "state.store: unknown store"),
    ("state-path-nul", '[state]\nstore = "file"\npath = "a\\u0000b"\n', "state.path"),
    ("state-path-a-file", '[state]\nstore = "file"\npath = "bad.toml"\n', "state.path: cannot create directory"),
    ("admin-no-token", '[admin]\nlisten = "127.0.0.1:0"\n', "admin.token: is required"),
    ("admin-history-nul", ADMIN + 'history_path = "a\\u0000"\n', "admin.history_path: must not contain a NUL"),
    (
        "admin-history-directory",
        ADMIN + 'history_path = "."\n',
        "admin.history_path: cannot open the history database: [Errno 21] . is a directory",
    ),
    (
        "admin-history-not-sqlite",
        ADMIN + 'history_path = "bad.toml"\n',
        "admin.history_path: cannot open the history database: bad.toml is not an SQLite",
    ),
    ("tls-nul", '[tls]\ncert_file = "a\\u0000"\nkey_file = "k"\n', "tls.cert_file: must not contain a NUL"),
    ("tls-directory", '[tls]\ncert_file = "."\nkey_file = "."\n', "tls.cert_file"),
    ("auth-clients-int", "[auth]\nclients = 1\n", "auth.clients"),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_file_ends_in_one_line(
    processes: Processes, tmp_path: Path, data: bytes | str, expected: str
) -> None:
    line = expect_one_line(processes, ["--config", config_file(tmp_path, data)])
    assert expected in line
    assert len(line) < 2_200  # a huge key is cut


def test_the_config_file_itself_cannot_be_read(processes: Processes, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # tests run as root, so chmod 000 would still be readable: a fifo would block instead
    cases = {
        tmp_path / "missing.toml": "No such file or directory",
        tmp_path: "it is a directory",
        fifo: "it is a named pipe",
        Path("/dev/zero"): "it is a device",
    }
    for path, problem in cases.items():
        line = expect_one_line(processes, ["--config", path])
        assert line.startswith(f"loadwarden: invalid configuration: {path}: cannot read config file: ")
        assert problem in line


BAD_ENV = [
    ({"LOADWARDEN_NOPE__X": "1"}, "LOADWARDEN_NOPE__X: unknown setting"),
    ({"LOADWARDEN_SERVICE_LISTEN": "127.0.0.1:1"}, "LOADWARDEN_SERVICE_LISTEN: unknown setting; a service setting"),
    ({"LOADWARDEN_SERVICE__SEED": "[" * 5000}, "service.seed: must be an integer"),
    ({"LOADWARDEN_SERVICE__SEED": "9" * 5000}, "service.seed: must be an integer"),
    ({"LOADWARDEN_SERVICE__SEED": "nan"}, "service.seed: must be an integer"),
    ({"LOADWARDEN_SERVICE": "5"}, "service: must be a table"),
    ({"LOADWARDEN_POOLS__API__STRATEGY": "round_robin\nmax_concurrency = 5"}, "pools.api.strategy"),
    ({"LOADWARDEN_STATE__STORE": "[1]"}, "state.store"),
    ({"LOADWARDEN_ADMIN__TOKEN": "short"}, "admin.token"),
    ({"LOADWARDEN_OPERATIONS__X__LOAD_SOURCE": "pool", "LOADWARDEN_OPERATIONS__X__POOL": "nope"}, "operations.x.pool"),
]


@pytest.mark.parametrize(("env", "expected"), BAD_ENV, ids=[next(iter(e)) + str(i) for i, (e, _) in enumerate(BAD_ENV)])
def test_bad_environment_override_ends_in_one_line(processes: Processes, env: dict[str, str], expected: str) -> None:
    assert expected in expect_one_line(processes, [], env=env)


# --- the state file -------------------------------------------------------------------

FORMAT = "loadwarden.learned/1"


def envelope(pools: object) -> bytes:
    return json.dumps({"format": FORMAT, "saved_at": 1.0, "pools": pools}).encode()


BAD_STATES: list[tuple[str, bytes | None]] = [
    ("truncated", b'{"format": "loadwarden.learned/1", "saved_at": 1, "po'),
    ("empty", b""),
    ("binary", bytes(range(256)) * 10),
    ("deep-array", b"[" * 100_000 + b"]" * 100_000),
    ("deep-object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("huge-int", b'{"format": "loadwarden.learned/1", "saved_at": ' + b"9" * 5000 + b', "pools": {}}'),
    ("list-top", b"[1, 2, 3]"),
    ("wrong-format", b'{"format": "other"}'),
    ("pools-list", json.dumps({"format": FORMAT, "saved_at": 1, "pools": []}).encode()),
    ("state-list", envelope({"api": {"strategy": "q_learning", "state": [1]}})),
    (
        "state-deep",
        envelope({"api": {"strategy": "q_learning", "state": 0}}).replace(
            b'"state": 0', b'"state": ' + b"[" * 500 + b"]" * 500
        ),
    ),
    ("directory", None),
    ("huge", b"huge"),
]


@pytest.mark.parametrize("blob", [c[1] for c in BAD_STATES], ids=[c[0] for c in BAD_STATES])
def test_unusable_state_file_is_moved_aside_and_the_service_serves(
    processes: Processes, tmp_path: Path, grpcurl: Grpcurl, blob: bytes | None
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = state / "learned-state.json"
    if blob is None:
        target.mkdir()
    elif blob == b"huge":
        with open(target, "wb") as handle:
            handle.truncate(600 * 1024 * 1024)  # sparse: over the 512 MiB limit, never read
    else:
        target.write_bytes(blob)
    service = processes.serve(POOL + f'[state]\nstore = "file"\npath = "{state}"\n')
    health = grpcurl(service.target, "grpc.health.v1.Health/Check", data={})
    assert health.json() == {"status": "SERVING"}, health
    assert not target.exists()
    assert [p for p in state.iterdir() if p.name.startswith("learned-state.json.corrupt-")]
    err = service.process.stderr.text
    assert "saved learned state is unusable" in err and "moved aside" in err and "Traceback" not in err
    assert service.stop() == 0


def test_operation_reading_a_missing_pool_is_refused_by_admin_service(processes: Processes, grpcurl: Grpcurl) -> None:
    service = processes.serve(POOL)
    method = "loadwarden.v1.AdminService/ConfigureOperation"
    missing = grpcurl(
        service.target, method, data={"operation": {"name": "x", "load_source": "LOAD_SOURCE_POOL", "pool": "nope"}}
    )
    assert missing.code == "NotFound" and missing.message.startswith("operation.pool: no pool named 'nope'"), missing
    ok = grpcurl(
        service.target,
        method,
        data={
            "operation": {
                "name": "x",
                "load_source": "LOAD_SOURCE_POOL",
                "pool": "api",
                "default_batch_size": 3,
                "max_batch_size": 10,
            }
        },
    )
    assert ok.code == "OK", ok
    assert grpcurl(service.target, "loadwarden.v1.AdminService/DeletePool", data={"pool": "api"}).code == "OK"
    answer = grpcurl(service.target, "loadwarden.v1.DecisionService/GetBatchSize", data={"operation": "x"}).json()
    assert answer["batch_size"] == 3 and answer["fallback"] is True and "no pool named 'api'" in answer["reason"]
