"""The real grpcurl binary against real ``loadwarden serve`` processes configured with TLS and mutual TLS.

Certificates come from trustme (a CA, a server certificate for 127.0.0.1/localhost,
client certificates from that CA and from another one). Refusals are told apart
from slowness: each refused command is paired with the same command, credentials
fixed, succeeding against the same process.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .._certs import Certs, make_certs
from ._harness import API_CONFIG, API_SERVERS, GRPCURL_MAX_TIME_S, GrpcurlResult, Processes, Service, clean_env, tool

pytestmark = pytest.mark.e2e

SELECT = "loadwarden.v1.DecisionService/SelectServer"
CONFIGURE_POOL = "loadwarden.v1.AdminService/ConfigurePool"
ADMIN_TOKEN = "e2e-admin-token-3f9a61d2c8"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_config(certs: Certs, *, mutual: bool) -> str:
    lines = [API_CONFIG, "[tls]", f'cert_file = "{certs.server_cert}"', f'key_file = "{certs.server_key}"']
    if mutual:
        lines += [f'client_ca_file = "{certs.ca}"', "require_client_cert = true"]
    return "\n".join(lines) + "\n"


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str, config: str, **kwargs: Any) -> Iterator[Service]:
    procs = Processes(tmp_path_factory.mktemp(name))
    try:
        yield procs.serve(config, **kwargs)
    finally:
        procs.close()


@pytest.fixture(scope="module")
def tls_service(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Service]:
    yield from _serve(tmp_path_factory, "tls", tls_config(certs, mutual=False))


@pytest.fixture(scope="module")
def mtls_service(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Service]:
    # The admin token from the environment, as an operator would pass it.
    yield from _serve(
        tmp_path_factory, "mtls", tls_config(certs, mutual=True), env={"LOADWARDEN_ADMIN__TOKEN": ADMIN_TOKEN}
    )


def grpcurl(target: str, *args: str, flags: Sequence[str | Path], data: Any = None) -> GrpcurlResult:
    """``grpcurl <flags> -max-time ... [-d data] target args``; unlike ``run_grpcurl``, no ``-plaintext``
    unless ``flags`` say so."""
    argv = [str(tool("grpcurl")), *map(str, flags), "-max-time", str(GRPCURL_MAX_TIME_S)]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [target, *args]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=GRPCURL_MAX_TIME_S + 10, env=clean_env(), check=False
    )
    return GrpcurlResult(argv, done.returncode, done.stdout, done.stderr)


# A refused handshake looks temporary to grpcurl's dialer, which retries until this deadline, seconds.
REFUSED_CONNECT_TIMEOUT_S = 2


def refused(target: str, flags: Sequence[str | Path]) -> GrpcurlResult:
    """Asks SelectServer expecting no answer: the connection itself fails (grpcurl says so before any
    RPC status)."""
    result = grpcurl(
        target, SELECT, flags=[*flags, "-connect-timeout", str(REFUSED_CONNECT_TIMEOUT_S)], data={"pool": "api"}
    )
    assert result.returncode != 0 and not result.stdout.strip(), str(result)
    assert "Failed to dial target host" in result.stderr, str(result)
    return result


def test_select_server_over_tls_with_cacert(tls_service: Service, certs: Certs) -> None:
    answer = grpcurl(tls_service.target, SELECT, flags=["-cacert", certs.ca], data={"pool": "api"}).json()
    assert answer["server_id"] in API_SERVERS and answer["decision_id"]
    listed = grpcurl(tls_service.target, "list", flags=["-cacert", certs.ca])  # reflection over TLS too
    assert "loadwarden.v1.DecisionService" in listed.stdout.split(), str(listed)


def test_plaintext_to_a_tls_port_fails(tls_service: Service) -> None:
    refused(tls_service.target, ["-plaintext"])


def test_a_client_that_does_not_trust_the_certificate_fails(tls_service: Service, certs: Certs) -> None:
    result = refused(tls_service.target, ["-cacert", certs.rogue_ca])
    assert "x509" in result.stderr, str(result)


def test_select_server_over_mutual_tls_with_cert_and_key(mtls_service: Service, certs: Certs) -> None:
    flags: list[str | Path] = ["-cacert", certs.ca, "-cert", certs.client_cert, "-key", certs.client_key]
    answer = grpcurl(mtls_service.target, SELECT, flags=flags, data={"pool": "api"}).json()
    assert answer["server_id"] in API_SERVERS


@pytest.mark.parametrize("client", ["no certificate", "certificate from another CA", "plaintext"])
def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    mtls_service: Service, certs: Certs, client: str
) -> None:
    by_client: dict[str, list[str | Path]] = {
        "no certificate": ["-cacert", certs.ca],
        "certificate from another CA": [
            "-cacert",
            certs.ca,
            "-cert",
            certs.rogue_client_cert,
            "-key",
            certs.rogue_client_key,
        ],
        "plaintext": ["-plaintext"],
    }
    refused(mtls_service.target, by_client[client])
    good: list[str | Path] = ["-cacert", certs.ca, "-cert", certs.client_cert, "-key", certs.client_key]
    assert grpcurl(mtls_service.target, SELECT, flags=good, data={"pool": "api"}).returncode == 0  # still serving


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "Unauthenticated"),
        (f"authorization: Bearer not-{ADMIN_TOKEN}", "PermissionDenied"),
        (f"authorization: Bearer {ADMIN_TOKEN}", "OK"),
    ],
)
def test_admin_rpc_over_mutual_tls_needs_the_admin_token(
    mtls_service: Service, certs: Certs, header: str | None, code: str
) -> None:
    flags: list[str | Path] = ["-cacert", certs.ca, "-cert", certs.client_cert, "-key", certs.client_key]
    if header is not None:
        flags += ["-rpc-header", header]
    result = grpcurl(mtls_service.target, CONFIGURE_POOL, flags=flags, data={"pool": {"name": "e2e-pool"}})
    assert result.code == code, str(result)
    assert f"Bearer {ADMIN_TOKEN}" not in result.stdout + result.stderr  # never echoed


def test_plaintext_off_loopback_warns_naming_the_address(processes: Processes) -> None:
    service = processes.serve(listen="0.0.0.0:0")
    warning = service.process.stderr.wait_for(
        r"WARNING loadwarden\.server: gRPC listens on (\S+), not a loopback "
        r"address, without TLS",
        10.0,
    )
    assert warning is not None and warning.group(1) == "0.0.0.0:0", service.process.describe()


def test_a_missing_certificate_file_stops_the_start_naming_the_key(processes: Processes, tmp_path: Path) -> None:
    config = f'[tls]\ncert_file = "{tmp_path / "nope.pem"}"\nkey_file = "{tmp_path / "nope.key"}"\n'
    process = processes.loadwarden(config)
    assert processes.expect_exit(process) == 2
    assert re.search(r"invalid configuration: tls\.cert_file: cannot read .*nope\.pem", process.stderr.text), (
        process.describe()
    )
