"""The quality gate: ruff's lint and format checks and mypy report nothing, and every
suppression says which rule it silences and why.

The tools come from the dev extra (pinned in pyproject.toml) and read their settings from
pyproject.toml; a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GENERATED = REPO / "sdk" / "loadwarden" / "v1"
SOURCE_ROOTS = ("sdk", "server", "services", "observability", "bench", "examples", "scripts", "tests")

# A noqa comment: one or more codes, then " - " and a reason.
NOQA = re.compile(r"#\s*noqa\b(?P<rest>.*)")
NOQA_WITH_REASON = re.compile(r":\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*\s+-\s+\S")
# A type-ignore comment: one or more codes in brackets, then "  # " (or " - ") and a reason.
TYPE_IGNORE = re.compile(r"#\s*type:\s*ignore\b(?P<rest>.*)")
TYPE_IGNORE_WITH_REASON = re.compile(r"\[[a-z-]+(\s*,\s*[a-z-]+)*\]\s*(#|-)\s*\S")

CHECKS = {
    "ruff check": ["ruff", "check", "--no-cache", "."],
    "ruff format": ["ruff", "format", "--check", "--no-cache", "."],
    "mypy": ["mypy", "--no-incremental"],
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_tool_reports_nothing(name: str) -> None:
    tool, *args = CHECKS[name]
    result = subprocess.run([str(BIN / tool), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{name} found problems:\n{result.stdout}{result.stderr}"


def python_files() -> list[Path]:
    files = []
    for root in SOURCE_ROOTS:
        files += [path for path in (REPO / root).rglob("*.py") if GENERATED not in path.parents]
    return sorted(files)


def unexplained_suppressions(path: Path, root: Path = REPO) -> list[str]:
    found: list[str] = []
    with path.open("rb") as source:
        comments = [
            (token.start[0], token.string)
            for token in tokenize.tokenize(source.readline)
            if token.type == tokenize.COMMENT
        ]
    for number, comment in comments:
        for pattern, explained, what in (
            (NOQA, NOQA_WITH_REASON, "noqa"),
            (TYPE_IGNORE, TYPE_IGNORE_WITH_REASON, "type: ignore"),
        ):
            match = pattern.search(comment)
            if match and not explained.match(match["rest"]):
                found.append(f"{path.relative_to(root)}:{number}: a {what} without its code and reason: {comment}")
    return found


def test_every_suppression_names_its_rule_and_says_why() -> None:
    found = [problem for path in python_files() for problem in unexplained_suppressions(path)]
    assert not found, "\n".join(found)


def test_the_suppression_check_tells_an_explained_one_from_a_bare_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "a = 1  # noqa: E501 - a long URL\n"
        "b = 2  # type: ignore[attr-defined]  # the stubs lack it\n"
        "c = 3  # noqa\n"
        "d = 4  # noqa: E501\n"
        "e = 5  # type: ignore\n"
        "f = 6  # type: ignore[attr-defined]\n",
        encoding="utf-8",
    )
    found = unexplained_suppressions(sample, tmp_path)
    assert [line.split(":")[1] for line in found] == ["3", "4", "5", "6"]
