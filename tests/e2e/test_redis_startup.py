"""``loadwarden serve`` on the Redis store: every way the store can be wrong at start is one
clear line naming the key to fix (exit code 2), never a traceback; a unix socket works.

Real processes throughout: the service, a real redis-server, and plain TCP listeners that
are not Redis (one silent, one answering like a web server).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ._harness import Processes, free_loopback_port, redis_server_binary

pytestmark = pytest.mark.e2e

POOL = """
[pools.p]
max_concurrency = 1
servers = [{ id = "s1", address = "127.0.0.1:9001" }]
"""


def config(url: str, prefix: str = "{e2e}:") -> str:
    state = f'store = "redis"\nurl = "{url}"\nkey_prefix = "{prefix}"\n'
    return f"[state]\n{state}connect_timeout_ms = 1000\ncommand_timeout_ms = 300\n{POOL}"


def one_line_error(processes: Processes, text: str) -> str:
    proc = processes.loadwarden(text)
    assert processes.expect_exit(proc) == 2
    proc.stderr.join()
    lines = [line for line in proc.stderr.text.splitlines() if line.strip()]
    assert lines, proc.describe()
    assert "Traceback" not in proc.stderr.text, proc.describe()
    return lines[-1]


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener that is not Redis: it answers every connection with ``replies[0]`` (if any)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    replies: list[bytes] = []
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            if replies:
                with contextlib.suppress(OSError):
                    conn.sendall(replies[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], replies
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_an_unreachable_redis_names_state_url(processes: Processes) -> None:
    port = free_loopback_port()
    line = one_line_error(processes, config(f"redis://127.0.0.1:{port}/0"))
    assert line.startswith("loadwarden: state.url: cannot reach Redis at redis://127.0.0.1:") or (
        "state.url: cannot reach Redis" in line
    ), line


def test_a_silent_listener_that_is_not_redis_names_state_url(
    processes: Processes, listener: tuple[int, list[bytes]]
) -> None:
    port, _ = listener
    line = one_line_error(processes, config(f"redis://127.0.0.1:{port}/0"))
    assert "state.url" in line and "is it a Redis server?" in line, line


def test_a_web_server_is_not_redis(processes: Processes, listener: tuple[int, list[bytes]]) -> None:
    port, replies = listener
    replies.append(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    line = one_line_error(processes, config(f"redis://127.0.0.1:{port}/0"))
    assert "state.url" in line and "does not speak the Redis protocol" in line, line


def test_a_password_in_the_url_is_never_printed(processes: Processes) -> None:
    port = free_loopback_port()
    line = one_line_error(processes, config(f"redis://app:hunter2@127.0.0.1:{port}/0"))
    assert "hunter2" not in line and "app:***@" in line, line


def test_keys_of_another_version_under_the_prefix_name_state_key_prefix(processes: Processes) -> None:
    server = processes.redis()
    client = redis.Redis.from_url(server.url)
    try:
        client.set("{old}:schema", "loadwarden.redis/0")
        line = one_line_error(processes, config(server.url, "{old}:"))
        assert "state.key_prefix" in line and "another version" in line and "loadwarden.redis/0" in line, line
        client.set("{other}:jobs", "not ours")
        line = one_line_error(processes, config(server.url, "{other}:"))
        assert "state.key_prefix" in line and "did not write" in line, line
        assert client.get("{other}:jobs") == b"not ours"  # nothing of theirs is touched
    finally:
        client.close()


def test_a_unix_socket_url_serves(processes: Processes, tmp_path: object) -> None:
    sock = f"/tmp/lw-redis-{free_loopback_port()}.sock"
    proc = processes.spawn(
        [redis_server_binary(), "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"]
    )
    assert proc.stdout.wait_for("(?i)ready to accept connections", 10) is not None, proc.describe()
    service = processes.serve(config(f"unix://{sock}?db=0"))
    client = redis.Redis(unix_socket_path=sock)
    try:
        assert client.get("{e2e}:schema") == b"loadwarden.redis/1"
    finally:
        client.close()
    assert service.stop() == 0


def test_a_rediss_url_serves_over_tls_and_an_unknown_ca_names_state_url(processes: Processes, tmp_path: Path) -> None:
    from tests._certs import make_certs

    certs = make_certs(tmp_path / "certs")
    port = free_loopback_port()
    proc = processes.spawn(
        [
            *(redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)),
            *("--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no"),
        ]
    )
    assert proc.stdout.wait_for("(?i)ready to accept connections", 10) is not None, proc.describe()
    url = f"rediss://127.0.0.1:{port}/0"
    service = processes.serve(config(f"{url}?ssl_ca_certs={certs.ca}"))
    assert service.stop() == 0
    line = one_line_error(processes, config(url))  # the system's CAs do not know the test CA
    assert "state.url" in line and "certificate verify failed" in line, line


def test_the_master_is_found_through_a_real_sentinel(processes: Processes, tmp_path: Path) -> None:
    master = processes.redis()
    sentinel_port = free_loopback_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor lw 127.0.0.1 {master.port} 1\n", encoding="utf-8"
    )
    sentinel = processes.spawn([redis_server_binary(), str(conf), "--sentinel"])
    assert sentinel.stdout.wait_for(r"\+monitor master lw", 10) is not None, sentinel.describe()
    text = config("redis://127.0.0.1/0").replace(
        'url = "redis://127.0.0.1/0"\n', f'url = "redis:///0"\nsentinels = ["127.0.0.1:{sentinel_port}"]\n'
    )
    text = text.replace("[state]\n", '[state]\nsentinel_master = "lw"\n')
    service = processes.serve(text)
    client = redis.Redis(port=master.port)
    try:
        assert client.get("{e2e}:schema") == b"loadwarden.redis/1"  # written to the master sentinel named
    finally:
        client.close()
    assert service.stop() == 0
    wrong = text.replace('sentinel_master = "lw"', 'sentinel_master = "nope"')
    line = one_line_error(processes, wrong)
    assert "state.url" in line and "nope" in line, line
