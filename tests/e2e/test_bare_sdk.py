"""`pip install loadwarden` is the SDK alone (issue 18): the wheel built from this repo,
installed with its dependencies from the package registry into a fresh venv, routes and
admits against a service from the full install; the service's command says what to add;
and pyright scores the installed SDK's public interface completely typed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ._harness import API_SERVERS, REPO, Processes, clean_env, tool

pytestmark = pytest.mark.e2e

# Distributions of the `server`, `eval` and `redis` extras: none may come with the SDK.
NOT_WITH_THE_SDK = {
    "aiohttp",
    "grpcio-reflection",
    "matplotlib",
    "numpy",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-prometheus",
    "opentelemetry-sdk",
    "prometheus-client",
    "pydantic",
    "redis",
    "xds-protos",
}
OFFLINE = ("--quiet", "--no-deps", "--no-build-isolation", "--no-index")
PIP_TIMEOUT_S = 600  # downloads from the registry when pip's cache is cold


def _run(args: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 120):
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this repo and only its declared dependencies."""
    root = tmp_path_factory.mktemp("bare-sdk")
    # Built offline with the dev venv's hatchling, as test_packaging does.
    built = _run(
        [sys.executable, "-m", "pip", "wheel", *OFFLINE, "-w", root / "wheel", REPO],
        cwd=root,
        timeout_s=180,
    )
    assert built.returncode == 0, f"building the wheel failed:\n{built.stdout}{built.stderr}"
    (wheel,) = (root / "wheel").glob("loadwarden-*.whl")
    made = _run([sys.executable, "-m", "venv", root / "venv"], cwd=root)
    assert made.returncode == 0, made.stderr
    python = root / "venv" / "bin" / "python"
    installed = _run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
        cwd=root,
        timeout_s=PIP_TIMEOUT_S,
    )
    assert installed.returncode == 0, f"pip install of the bare wheel failed:\n{installed.stdout}{installed.stderr}"
    return root / "venv"


def _distributions(venv: Path) -> set[str]:
    listed = _run([venv / "bin" / "python", "-m", "pip", "list", "--format", "json"], cwd=venv)
    assert listed.returncode == 0, listed.stderr
    return {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}


def test_the_bare_install_brings_none_of_the_services_dependencies(bare: Path) -> None:
    installed = _distributions(bare)

    assert "loadwarden" in installed
    assert {"grpcio", "grpcio-health-checking", "protobuf", "psutil", "tenacity", "opentelemetry-api"} <= installed
    assert not installed & NOT_WITH_THE_SDK, installed & NOT_WITH_THE_SDK
    site = next((bare / "lib").glob("python3.*/site-packages"))
    size_mb = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6
    print(f"bare SDK install: {size_mb:.0f} MB of site-packages, {sorted(installed)}")


# Run by the bare venv's python: both clients against the full install's service, from
# every module an application imports, and not one module of the service's extras loaded.
_APP = """
import asyncio, json, sys, time
from loadwarden.sdk import AsyncClient, Client

target = sys.argv[1]
out = {}
with Client(target) as client:
    out["select"] = client.select("api").server_id
    with client.route("api") as route:
        out["route"] = route.server_id
    with client.slot("api") as lease:
        out["slot"] = bool(lease.lease_id) and not lease.fallback
    out["status"] = [p.name for p in client.load_status().pools]
with Client(target, decisions="local") as client:
    deadline = time.monotonic() + 10  # central until the first table arrives
    while True:
        with client.route("api") as route:
            out["local"] = [route.server_id, route.selection.local]
        if route.selection.local or time.monotonic() > deadline:
            break
        time.sleep(0.01)


async def main():
    async with AsyncClient(target) as client:
        out["async_select"] = (await client.select("api")).server_id

asyncio.run(main())
heavy = ("aiohttp", "numpy", "prometheus_client", "grpc_reflection", "opentelemetry.sdk", "pydantic")
heavy += ("loadwarden.server",)
out["loaded"] = sorted(m for m in sys.modules if m.startswith(heavy))
print(json.dumps(out))
"""


def test_the_bare_sdk_routes_and_admits_against_a_service_from_the_full_install(
    bare: Path, processes: Processes, tmp_path: Path
) -> None:
    service = processes.serve()
    done = _run([bare / "bin" / "python", "-c", _APP, service.target], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for key in ("select", "route", "async_select"):
        assert out[key] in API_SERVERS, out
    assert out["slot"] is True
    assert out["status"] == ["api"]
    assert out["local"][0] in API_SERVERS and out["local"][1] is True, out
    assert out["loaded"] == [], out


def test_the_service_says_which_extra_it_needs(bare: Path, tmp_path: Path) -> None:
    command = bare / "bin" / "loadwarden"
    served = _run([command, "serve"], cwd=tmp_path)
    version = _run([command, "--version"], cwd=tmp_path)
    imported = _run([bare / "bin" / "python", "-c", "import loadwarden.server"], cwd=tmp_path)

    assert served.returncode == 2 and not served.stdout
    assert served.stderr.startswith("loadwarden: the loadwarden command needs the 'server' extra"), served.stderr
    assert "pip install 'loadwarden[server]'" in served.stderr and "aiohttp" in served.stderr
    assert "Traceback" not in served.stderr
    assert version.returncode == 0 and version.stdout.startswith("loadwarden "), version
    assert imported.returncode == 1
    assert (
        imported.stderr.strip()
        .splitlines()[-1]
        .startswith("ModuleNotFoundError: loadwarden.server needs the 'server' extra")
    ), imported.stderr


# Integrations whose public classes derive from their framework's: the bare install has no
# Celery, so pyright cannot know AdmittedTask's base (an application using it has Celery).
NEEDS_ITS_FRAMEWORK = ("loadwarden.sdk.integrations.celery.",)


def _unknown_names(completeness: dict[str, Any]) -> list[str]:
    return [symbol["name"] for symbol in completeness["symbols"] if not symbol["isTypeKnown"]]


def test_pyright_scores_the_installed_sdk_completely_typed(bare: Path, tmp_path: Path) -> None:
    """``pyright --verifytypes`` on the installed wheel (it cannot follow an editable
    install into a namespace package): every public symbol of loadwarden.sdk has a known
    type. Unknowns from grpc itself are ignored: grpcio ships no types (types-grpcio is
    the application's choice)."""
    env = {"VIRTUAL_ENV": str(bare), "PATH": f"{bare / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = _run(
        [tool("pyright"), "--verifytypes", "loadwarden.sdk", "--ignoreexternal", "--outputjson"],
        cwd=tmp_path,
        env=env,
        timeout_s=300,
    )

    report = json.loads(done.stdout)
    completeness = report["typeCompleteness"]
    assert completeness["pyTypedPath"].startswith(str(bare)), completeness["pyTypedPath"]
    unknown = [
        (symbol["name"], [d["message"] for d in symbol["diagnostics"] if d["severity"] == "error"])
        for symbol in completeness["symbols"]
        if not symbol["isTypeKnown"] and not symbol["name"].startswith(NEEDS_ITS_FRAMEWORK)
    ]
    assert not unknown, textwrap.shorten(str(unknown), 3000)
    assert completeness["exportedSymbolCounts"]["withKnownType"] >= 50, completeness["exportedSymbolCounts"]
    # Pyright's score and status count the framework's unknowns too; nothing else may be unknown.
    framework_only = all(name.startswith(NEEDS_ITS_FRAMEWORK) for name in _unknown_names(completeness))
    assert completeness["completenessScore"] == 1.0 or framework_only
    assert done.returncode == 0 or framework_only, report["generalDiagnostics"]
