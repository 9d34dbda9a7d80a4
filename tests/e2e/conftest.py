"""Fixtures for end-to-end tests: real ``loadwarden serve`` processes, real grpcurl.

Every process started here is stopped at teardown (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._harness import API_CONFIG, Grpcurl, Processes, Service, run_grpcurl, tool


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service with pool ``api`` (api-1..3, round robin) for tests that do not stop it."""
    procs = Processes(tmp_path_factory.mktemp("shared-service"))
    try:
        yield procs.serve(API_CONFIG)
    finally:
        procs.close()


@pytest.fixture
def grpcurl() -> Grpcurl:
    """``grpcurl(target, *args, data=None)`` -> GrpcurlResult; the binary must exist."""
    tool("grpcurl")
    return run_grpcurl
