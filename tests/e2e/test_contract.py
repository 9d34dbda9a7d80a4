"""The contract: buf lint/build over proto/, committed generated code is fresh, namespace layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._harness import REPO, clean_env, tool

pytestmark = pytest.mark.e2e

GENERATED_DIR = REPO / "sdk" / "loadwarden" / "v1"
NAMESPACE_DIRS = ("policy", "sdk", "server", "services/backend_sim", "observability")
PROTO_FILES = {
    "loadwarden/v1/admin.proto",
    "loadwarden/v1/backend_sim.proto",
    "loadwarden/v1/common.proto",
    "loadwarden/v1/decision.proto",
    "loadwarden/v1/planning.proto",
}


def _buf(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env({"BUF_CACHE_DIR": str(tmp_path / "buf-cache")})
    return subprocess.run(
        [str(tool("buf")), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_buf_lint_is_clean(tmp_path: Path) -> None:
    done = _buf(tmp_path, "lint")

    assert done.returncode == 0, f"buf lint failed:\n{done.stdout}{done.stderr}"


def test_buf_build_contains_every_proto_file(tmp_path: Path) -> None:
    image = tmp_path / "image.json"

    done = _buf(tmp_path, "build", "--exclude-imports", "-o", str(image))

    assert done.returncode == 0, f"buf build failed:\n{done.stdout}{done.stderr}"
    names = {f["name"] for f in json.loads(image.read_text(encoding="utf-8"))["file"]}
    assert names == PROTO_FILES


def test_committed_generated_code_equals_a_fresh_run(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_proto.py"), str(out)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"gen_proto.py failed:\n{done.stdout}{done.stderr}"

    generated = ("*_pb2*.py*", "*.binpb")
    fresh = {p.name: p for pattern in generated for p in (out / "loadwarden" / "v1").glob(pattern)}
    committed = {p.name: p for pattern in generated for p in GENERATED_DIR.glob(pattern)}
    assert fresh, "gen_proto.py generated nothing"
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    stale = sorted(n for n in set(fresh) & set(committed) if fresh[n].read_bytes() != committed[n].read_bytes())
    assert not (missing or extra or stale), (
        f"sdk/loadwarden/v1 is out of date with proto/; run `python scripts/gen_proto.py`.\n"
        f"stale: {stale}\nnot committed: {missing}\nno longer generated: {extra}"
    )


def test_no_loadwarden_init_anywhere_in_the_repo() -> None:
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".venv", ".git")]
        if Path(root).name == "loadwarden":
            found += [str(Path(root, f).relative_to(REPO)) for f in files if f in ("__init__.py", "__init__.pyi")]

    assert not found, f"loadwarden must stay a PEP 420 namespace package; remove: {found}"


def test_loadwarden_is_a_namespace_over_every_top_level_folder(tmp_path: Path) -> None:
    script = "import json, loadwarden; print(json.dumps([loadwarden.__file__, list(loadwarden.__path__)]))"

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    file, paths = json.loads(done.stdout)
    assert file is None
    assert {Path(p).resolve() for p in paths} == {REPO / d / "loadwarden" for d in NAMESPACE_DIRS}
