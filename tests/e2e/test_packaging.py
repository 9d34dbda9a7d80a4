"""The distribution: a built wheel carries every part of the namespace; editable installs work."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ._harness import REPO, clean_env, tool

pytestmark = pytest.mark.e2e

MODULES = ("loadwarden.policy", "loadwarden.sdk", "loadwarden.server", "loadwarden.v1")

# Imports MODULES and prints where each came from. argv[1] is a path prefix to
# drop from sys.path first (the editable install's source folders), except
# entries inside the interpreter's own prefix (a venv may live in the repo).
_WHERE = """
import importlib, json, sys
drop = sys.argv[1]
if drop:
    sys.path[:] = [p for p in sys.path
                   if not (p == drop or p.startswith(drop + "/")) or p.startswith(sys.prefix + "/")]
import loadwarden
out = {"loadwarden": {"file": loadwarden.__file__, "path": list(loadwarden.__path__)}}
for name in sys.argv[2:]:
    module = importlib.import_module(name)
    out[name] = {"file": getattr(module, "__file__", None), "path": list(getattr(module, "__path__", []))}
print(json.dumps(out))
"""


def _where(cwd: Path, env: Mapping[str, str], drop: str = "") -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _WHERE, drop, *MODULES],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"importing {', '.join(MODULES)} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def _under(path: str | None, root: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(root.resolve())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --target`` of the repo: builds a real wheel with hatchling."""
    target = tmp_path_factory.mktemp("wheel-target")
    # --no-build-isolation --no-index: build with the venv's hatchling (dev extra), offline.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(REPO),
        ],
        cwd=target,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"pip install of the repo failed:\n{done.stdout}{done.stderr}"
    return target


def test_wheel_modules_import_from_the_installed_copy(installed: Path, tmp_path: Path) -> None:
    where = _where(tmp_path, {"PYTHONPATH": str(installed)}, drop=str(REPO))

    assert [Path(p).resolve() for p in where["loadwarden"]["path"]] == [installed.resolve() / "loadwarden"]
    outside = {
        name: info["file"]
        for name, info in where.items()
        if name != "loadwarden" and not _under(info["file"], installed)
    }
    assert not outside, f"not imported from the wheel's files under {installed}: {outside}"


def test_wheel_has_no_loadwarden_init(installed: Path) -> None:
    (record,) = installed.glob("loadwarden-*.dist-info/RECORD")
    with record.open(newline="", encoding="utf-8") as f:
        files = {row[0] for row in csv.reader(f) if row}

    assert "loadwarden/__init__.py" not in files
    assert not (installed / "loadwarden" / "__init__.py").exists()
    for module in MODULES:
        assert f"{module.replace('.', '/')}/__init__.py" in files, f"the wheel does not carry {module}"
    assert {"loadwarden/v1/decision_pb2.py", "loadwarden/v1/decision_pb2_grpc.py"} <= files


def test_wheel_ships_the_contract_and_the_typing_markers(installed: Path) -> None:
    """The .proto files at their import paths, the commented descriptors reflection serves,
    the generated code's type stubs (messages and services) and py.typed in every part of
    the namespace (issue 18)."""
    (record,) = installed.glob("loadwarden-*.dist-info/RECORD")
    with record.open(newline="", encoding="utf-8") as f:
        files = {row[0] for row in csv.reader(f) if row}
    protos = {f"loadwarden/v1/{p.name}" for p in (REPO / "proto" / "loadwarden" / "v1").glob("*.proto")}
    assert len(protos) == 5 and protos <= files
    assert (installed / "loadwarden/v1/decision.proto").read_bytes() == (
        REPO / "proto/loadwarden/v1/decision.proto"
    ).read_bytes()
    assert "loadwarden/v1/descriptors.binpb" in files
    stubs = {
        f"loadwarden/v1/{p.stem}_pb2{kind}.pyi"
        for p in (REPO / "proto/loadwarden/v1").glob("*.proto")
        for kind in ("", "_grpc")
    }
    assert stubs <= files, f"the wheel has no {sorted(stubs - files)}"
    for module in MODULES:
        assert f"{module.replace('.', '/')}/py.typed" in files, f"the wheel has no py.typed in {module}"


def test_editable_install_imports_from_outside_the_repo(tmp_path: Path) -> None:
    where = _where(tmp_path, {})

    elsewhere = {
        name: info["file"] for name, info in where.items() if name != "loadwarden" and not _under(info["file"], REPO)
    }
    assert not elsewhere, f"expected the editable install to import from {REPO}: {elsewhere}"


def test_console_script_prints_the_version(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(tool("loadwarden")), "--version"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"loadwarden {importlib.metadata.version('loadwarden')}"
