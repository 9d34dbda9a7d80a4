"""The SDK is typed for its users: an application checked with ``mypy --strict`` and with
pyright sees the SDK's types (``py.typed`` in every part of the namespace) and the
generated gRPC stubs' (the ``_pb2_grpc.pyi`` files: a sync stub for a ``grpc.Channel``,
an async one for a ``grpc.aio.Channel``), and the three mistakes planted in it are
reported, nothing else.

The application is written to a temporary folder, outside the repository, so the checkers
find ``loadwarden`` as an application does: installed in the environment.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PARTS = (
    "policy/loadwarden/policy",
    "sdk/loadwarden/sdk",
    "sdk/loadwarden/v1",
    "server/loadwarden/server",
    "services/backend_sim/loadwarden/backend_sim",
    "observability/loadwarden/observability",
)

APP = '''\
"""A small application using the SDK and the generated stubs, sync and async."""

import asyncio

import grpc

from loadwarden.sdk import AsyncClient, Client, Selection
from loadwarden.v1 import decision_pb2, decision_pb2_grpc


def handle_sync(client: Client) -> str:
    with client.route("api") as route:
        address: str = route.address
    selection: Selection = client.select("api", exclude=["a-1"])
    with client.slot("jobs", priority=1, wait_s=0.5) as lease:
        lease_id: str = lease.lease_id
    return address + selection.server_id + lease_id


async def handle_async(client: AsyncClient) -> str:
    async with client.route("api") as route:
        return route.server_id


def request() -> decision_pb2.SelectServerRequest:
    return decision_pb2.SelectServerRequest(pool="api")


def pick_sync(channel: grpc.Channel) -> str:
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    return stub.SelectServer(request(), timeout=1.0).address


async def pick_async() -> int:
    async with grpc.aio.insecure_channel("127.0.0.1:50051") as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        response = await stub.SelectServer(request(), timeout=1.0)
        ttl_ms: int = response.decision_ttl_ms
        await stub.SelectServer(decision_pb2.AcquireSlotRequest(pool="jobs"))  # MISTAKE wrong request message
        return ttl_ms


def main() -> None:
    with Client("127.0.0.1:50051") as client:
        print(handle_sync(client))

    async def run() -> None:
        async with AsyncClient("127.0.0.1:50051", decisions="local") as client:
            print(await handle_async(client))
        print(await pick_async())

    with grpc.insecure_channel("127.0.0.1:50051") as channel:
        print(pick_sync(channel))

    asyncio.run(run())
    port: int = Client("127.0.0.1:50051").select("api").server_id  # MISTAKE str assigned to int
    Client(timeout_s="1s")  # MISTAKE str for a float parameter
'''

MISTAKES = [number for number, line in enumerate(APP.splitlines(), 1) if "# MISTAKE" in line]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def test_every_part_of_the_namespace_is_marked_typed() -> None:
    missing = [part for part in PARTS if not (REPO / part / "py.typed").is_file()]
    assert not missing, f"no py.typed in {missing}"


def test_mypy_strict_sees_the_sdks_types(app: Path) -> None:
    result = subprocess.run(
        [str(BIN / "mypy"), "--strict", "--no-incremental", "--cache-dir", str(app.parent / ".mypy"), app.name],
        cwd=app.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = re.findall(r"^app\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.MULTILINE)
    assert errors == [
        (str(MISTAKES[0]), "arg-type"),
        (str(MISTAKES[1]), "assignment"),
        (str(MISTAKES[2]), "arg-type"),
    ], result.stdout


def test_pyright_sees_the_sdks_types(app: Path) -> None:
    result = subprocess.run(
        [str(BIN / "pyright"), "--pythonpath", sys.executable, app.name],
        cwd=app.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # An error's message may take several lines; its rule ends it.
    errors = re.findall(r"app\.py:(\d+):\d+ - error: .*?\((report[A-Za-z]+)\)", result.stdout, re.DOTALL)
    assert errors == [
        (str(MISTAKES[0]), "reportArgumentType"),
        (str(MISTAKES[1]), "reportAssignmentType"),
        (str(MISTAKES[2]), "reportArgumentType"),
    ], result.stdout
