"""``loadwarden serve`` as an operator runs it: config, environment, listen address, signals."""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest

from ._harness import API_CONFIG, Grpcurl, Processes, tool

pytestmark = pytest.mark.e2e

DECISION = "loadwarden.v1.DecisionService"
HEALTH = "grpc.health.v1.Health"


@pytest.mark.parametrize(
    ("listen", "env"),
    [
        pytest.param("127.0.0.1:0", {}, id="listen-flag"),
        pytest.param(None, {"LOADWARDEN_SERVICE__LISTEN": "127.0.0.1:0"}, id="no-arguments"),
    ],
)
def test_serve_without_config_has_zero_pools(
    processes: Processes, grpcurl: Grpcurl, listen: str | None, env: dict[str, str]
) -> None:
    service = processes.serve(config=None, listen=listen, env=env)

    status = grpcurl(service.target, f"{DECISION}/GetLoadStatus", data={}).json()["status"]

    assert status.get("pools", []) == []
    assert status["generated_at"]


def test_environment_overrides_the_pool_strategy(processes: Processes, grpcurl: Grpcurl) -> None:
    service = processes.serve(API_CONFIG, env={"LOADWARDEN_POOLS__API__STRATEGY": "least_connections"})

    (pool,) = grpcurl(service.target, f"{DECISION}/GetLoadStatus", data={"pool": "api"}).json()["status"]["pools"]
    choice = grpcurl(service.target, f"{DECISION}/SelectServer", data={"pool": "api"}).json()

    assert pool["strategy"] == "least_connections"
    assert len(pool["servers"]) == 3
    assert choice["strategy"] == "least_connections"


@pytest.mark.parametrize(
    ("config", "env", "key"),
    [
        pytest.param('[pools.api]\nstrategy = "fastest"\n', {}, "pools.api.strategy", id="unknown-strategy"),
        pytest.param('[pools.api]\nstrategy = "round_robin"\nbogus = 1\n', {}, "pools.api.bogus", id="unknown-key"),
        pytest.param("[bogus]\nx = 1\n", {}, "bogus", id="unknown-section"),
        pytest.param(
            '[pools.api]\nservers = [ { id = "a", address = "h:1" }, { id = "a", address = "h:2" } ]\n',
            {},
            "pools.api.servers[1].id",
            id="duplicate-server-id",
        ),
        pytest.param("[service]\nshutdown_grace_ms = -1\n", {}, "service.shutdown_grace_ms", id="negative-grace"),
        pytest.param(API_CONFIG, {"LOADWARDEN_POOLS__API__STRATEGY": "nope"}, "pools.api.strategy", id="env-strategy"),
        pytest.param(
            '[pools.api]\nstrategy = "p2c"\nstrategy_params = { choice_count = 1 }\n',
            {},
            "pools.api.strategy_params.choice_count",
            id="strategy-param-range",
        ),
        pytest.param(
            '[pools.api]\nstrategy = "q_learning"\nstrategy_params = { alpha = "fast" }\n',
            {},
            "pools.api.strategy_params.alpha",
            id="strategy-param-type",
        ),
        pytest.param(
            '[pools.api]\nstrategy = "peak_ewma"\nstrategy_params = { decay = 5 }\n',
            {},
            "pools.api.strategy_params.decay",
            id="strategy-param-unknown",
        ),
        pytest.param(
            '[pools.api]\nstrategy = "q_learning"\nservers = ['
            + ", ".join(f'{{ id = "s{i}", address = "h:{i}" }}' for i in range(11))
            + "]\n",
            {},
            "pools.api.strategy",
            id="q-learning-pool-too-large",
        ),
        pytest.param('[state]\nstore = "file"\n', {}, "state.path", id="file-store-without-path"),
    ],
)
def test_invalid_config_exits_2_naming_the_key(
    processes: Processes, config: str, env: dict[str, str], key: str
) -> None:
    process = processes.loadwarden(config, env=env)

    rc = processes.expect_exit(process)

    assert rc == 2, process.describe()
    assert f"loadwarden: invalid configuration: {key}: " in process.stderr.text, process.describe()
    assert "Traceback" not in process.stderr.text, process.describe()


def test_listen_on_a_port_in_use_exits_1(processes: Processes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"

        process = processes.loadwarden(None, listen=address)
        rc = processes.expect_exit(process)

    assert rc == 1, process.describe()
    assert f"loadwarden: cannot listen on {address}" in process.stderr.text, process.describe()
    assert "Traceback" not in process.stderr.text, process.describe()


@pytest.mark.parametrize("port", ["65536", "99999"])
def test_listen_port_out_of_range_is_rejected(processes: Processes, port: str) -> None:
    # Exposes a bug: gRPC wraps the port modulo 65536 (99999 -> 34463, 65536 -> 0 = any
    # free port) and the service starts on a port nobody asked for.
    process = processes.loadwarden(None, listen=f"127.0.0.1:{port}")

    rc = processes.expect_exit(process)

    assert rc in (1, 2), process.describe()
    assert "service.listen" in process.stderr.text or f"127.0.0.1:{port}" in process.stderr.text, process.describe()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_ipv6_listen_announces_a_dialable_target(processes: Processes, grpcurl: Grpcurl) -> None:
    # Exposes a bug: RunningService.target strips the brackets, so the service
    # announces "::1:PORT", which no client can dial.
    service = processes.serve(config=None, listen="[::1]:0")

    assert re.fullmatch(r"\[::1\]:\d+", service.target), f"announced {service.target!r}, not [::1]:PORT"
    result = grpcurl(service.target, f"{HEALTH}/Check")
    assert result.returncode == 0, str(result)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_and_exits_0(processes: Processes, grpcurl: Grpcurl, sig: signal.Signals) -> None:
    service = processes.serve()
    assert grpcurl(service.target, f"{HEALTH}/Check").json() == {"status": "SERVING"}

    rc = service.stop(sig)

    assert rc == 0, service.process.describe()
    assert "loadwarden stopped" in service.process.stderr.text, service.process.describe()
    assert "Traceback" not in service.process.stderr.text, service.process.describe()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_right_after_the_ready_line_still_drains(processes: Processes, sig: signal.Signals) -> None:
    # Exposes a bug: serve() prints "listening on" before it installs its signal
    # handlers, so a supervisor that signals as soon as the service is ready kills
    # it without a drain (SIGTERM: exit -15; SIGINT: KeyboardInterrupt traceback).
    # The window is narrow, so a few starts make the test fail reliably while the bug
    # exists; a correct service passes every time.
    for _ in range(5):
        service = processes.serve()

        rc = service.stop(sig)

        assert rc == 0, service.process.describe()
        assert "loadwarden stopped" in service.process.stderr.text, service.process.describe()


def test_health_watch_sees_not_serving_before_exit(processes: Processes) -> None:
    service = processes.serve()
    watch = processes.spawn(
        [tool("grpcurl"), "-plaintext", "-max-time", "30", "-d", '{"service": ""}', service.target, f"{HEALTH}/Watch"]
    )
    assert watch.stdout.wait_for(r'"status": "SERVING"', 10), watch.describe()

    service.process.signal(signal.SIGTERM)

    # The drain reports NOT_SERVING to open watches before it stops the server.
    assert watch.stdout.wait_for(r'"status": "NOT_SERVING"', 10), watch.describe()
    assert service.process.wait() == 0, service.process.describe()
    assert watch.wait() != 0  # the stream ends when the server stops, after the grace period


def test_json_logging_writes_one_object_per_line(processes: Processes) -> None:
    service = processes.serve('[logging]\nformat = "json"\n\n[pools.api]\nservers = []\n')

    assert service.stop(signal.SIGTERM) == 0, service.process.describe()
    lines = service.process.stderr.text.splitlines()
    records = [json.loads(line) for line in lines]  # every line, or this raises
    assert records, service.process.describe()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), records
    assert any(r["message"].startswith("loadwarden stopped") and r["logger"] == "loadwarden.server" for r in records)
