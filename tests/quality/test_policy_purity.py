"""The decision kernel is pure: `loadwarden.policy` imports no I/O, no RPC stack and
neither of the packages built on it.

Checked twice: statically, every import statement in its source (function-level ones too),
and dynamically, which modules a fresh interpreter has loaded after importing all of it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policy" / "loadwarden" / "policy"
# Top-level packages the kernel must not import, and namespace parts built on top of it.
FORBIDDEN = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "google.protobuf",
    "asyncio",
    "psutil",
    "aiohttp",
    "socket",
    "subprocess",
    "opentelemetry",
    "prometheus_client",
    "redis",
    "loadwarden.server",
    "loadwarden.sdk",
    "loadwarden.observability",
    "loadwarden.backend_sim",
    "loadwarden.v1",
)


def forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


def static_offenders(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.relative_to(root)}:{node.lineno} imports {name}" for name in names if forbidden(name)]
    return sorted(found)


def test_no_kernel_module_imports_io_rpc_or_the_shells() -> None:
    offenders = static_offenders(POLICY)
    assert not offenders, "\n".join(offenders)


def test_importing_the_whole_kernel_loads_none_of_them() -> None:
    modules = sorted(
        "loadwarden.policy." + ".".join(path.relative_to(POLICY).with_suffix("").parts).removesuffix(".__init__")
        for path in POLICY.rglob("*.py")
    )
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name.removesuffix('.'))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    loaded = [name for name in json.loads(result.stdout) if forbidden(name)]
    assert not loaded, loaded


def test_the_check_sees_an_offender(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def later():\n    import grpc.aio\n\nfrom loadwarden.sdk import Client\n")
    assert static_offenders(tmp_path) == ["bad.py:2 imports grpc.aio", "bad.py:4 imports loadwarden.sdk"]
