"""Import boundaries: packages meet through each other's public names, and modules form no cycle.

Walks the source of every module under the namespace's folders (and bench/, examples/) with
`ast`, so nothing is imported to check it. An import under `if TYPE_CHECKING:` is left out of
the cycle check only when the block says why (a comment on its line or the one above); every
other import counts, at module level or inside a function, and so does
`importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Folder holding each part of the `loadwarden` namespace.
NAMESPACE_ROOTS = ("policy", "sdk", "server", "services/backend_sim", "observability")
# Scripts that must use public names only.
CLIENT_ROOTS = ("bench", "examples")
GENERATED_PACKAGE = "loadwarden.v1"


@dataclass(frozen=True)
class Import:
    importer: str  # module doing the import, dotted (a script's path for bench/ and examples/)
    path: Path
    line: int
    target: str  # imported module, dotted and absolute
    names: tuple[str, ...]  # names taken from it (`from target import a, b`), else ()
    type_only_with_reason: bool


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def namespace_modules() -> dict[str, Path]:
    modules = {}
    for root in NAMESPACE_ROOTS:
        base = REPO / root
        for path in sorted((base / "loadwarden").rglob("*.py")) if (base / "loadwarden").is_dir() else []:
            name = module_name(path, base)
            if not name.startswith(GENERATED_PACKAGE):
                modules[name] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _has_reason(lines: list[str], line: int) -> bool:
    # A comment on the `if TYPE_CHECKING:` line or the line above it.
    here = lines[line - 1]
    above = lines[line - 2] if line >= 2 else ""
    return "#" in here or above.strip().startswith("#")


def imports_of(importer: str, path: Path, is_package: bool) -> Iterator[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    explained: set[int] = set()  # ids of import nodes under an explained TYPE_CHECKING block
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test) and _has_reason(lines, node.lineno):
            explained.update(id(child) for child in ast.walk(node))
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, path, node.lineno, alias.name, (), id(node) in explained)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield Import(importer, path, node.lineno, target, tuple(a.name for a in node.names), id(node) in explained)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):  # importlib.import_module("loadwarden..."): an import all the same
            yield Import(importer, path, node.lineno, node.args[0].value, (), False)


def all_imports() -> list[Import]:
    found: list[Import] = []
    for name, path in namespace_modules().items():
        found += imports_of(name, path, path.name == "__init__.py")
    for root in CLIENT_ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            found += imports_of(shown(path), path, False)
    return found


def package_of(module: str) -> str:
    """`loadwarden.server.engine._core` -> `loadwarden.server`; outside the namespace, ''."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "loadwarden" and len(parts) >= 2 else ""


def is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def resolve(target: str, names: tuple[str, ...], modules: dict[str, Path]) -> list[str]:
    """The namespace modules an import reaches: `from pkg import mod` reaches `pkg.mod` too."""
    reached = [target] if target in modules else []
    reached += [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
    return reached


def private_crossings(imports: list[Import], modules: dict[str, Path]) -> list[str]:
    problems = []
    for imp in imports:
        client = not imp.importer.startswith("loadwarden")
        home = "" if client else package_of(imp.importer)
        if not imp.target.startswith("loadwarden") or imp.target.startswith(GENERATED_PACKAGE):
            continue
        for reached in resolve(imp.target, imp.names, modules) or [imp.target]:
            if package_of(reached) == home:
                continue  # a package's own privates are its own business
            private = [part for part in reached.split(".")[2:] if is_private(part)]
            if private:
                problems.append(
                    f"{shown(imp.path)}:{imp.line}: {imp.importer} imports {reached}, "
                    f"a private module of {package_of(reached)}"
                )
        if client or package_of(imp.target) != home:
            for name in imp.names:
                if is_private(name) and f"{imp.target}.{name}" not in modules:
                    problems.append(
                        f"{shown(imp.path)}:{imp.line}: {imp.importer} takes the private name {name} from {imp.target}"
                    )
    return problems


def cycles(imports: list[Import], modules: dict[str, Path]) -> list[str]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports:
        if imp.importer in graph and not imp.type_only_with_reason:
            for reached in resolve(imp.target, imp.names, modules):
                if reached != imp.importer and not imp.importer.startswith(reached + "."):
                    graph[imp.importer].add(reached)  # a package's __init__ runs before its modules anyway
    # Tarjan's strongly connected components; each component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [" <-> ".join(component) for component in found]


@pytest.fixture(scope="module")
def walked() -> tuple[list[Import], dict[str, Path]]:
    modules = namespace_modules()
    return all_imports(), modules


def test_no_module_imports_another_packages_private_module(walked: tuple[list[Import], dict[str, Path]]) -> None:
    imports, modules = walked
    problems = private_crossings(imports, modules)
    assert not problems, "\n".join(problems)


def test_no_two_modules_import_each_other(walked: tuple[list[Import], dict[str, Path]]) -> None:
    imports, modules = walked
    found = cycles(imports, modules)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_checks_catch_a_private_import_and_a_cycle(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("from loadwarden.server.engine._core import DecisionCore\nfrom loadwarden.sdk import _base\n")
    imports = list(imports_of("loadwarden.policy.a", a, False))
    modules = {"loadwarden.server.engine._core": a, "loadwarden.sdk._base": a, "loadwarden.policy.a": a}
    assert len(private_crossings(imports, modules)) == 2

    b = tmp_path / "b.py"
    b.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n")
    c = tmp_path / "c.py"
    c.write_text("from . import b\n")
    graph = {"p.b": b, "p.c": c}
    walked_bc = [*imports_of("p.b", b, False), *imports_of("p.c", c, False)]
    assert cycles(walked_bc, graph) == ["p.b <-> p.c"]  # a type-only import without a reason counts
    b.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:  # only for annotations\n    from .c import C\n")
    walked_bc = [*imports_of("p.b", b, False), *imports_of("p.c", c, False)]
    assert cycles(walked_bc, graph) == []


def test_the_walk_sees_every_part_of_the_namespace() -> None:
    modules = namespace_modules()
    for package in ("loadwarden.sdk", "loadwarden.server", "loadwarden.backend_sim", "loadwarden.observability"):
        assert package in modules, package
    assert not any(re.search(r"_pb2", name) for name in modules)
