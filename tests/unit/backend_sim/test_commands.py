"""The simulator's subcommands without the ``eval`` extra: each says what to install."""

from __future__ import annotations

import importlib.util

import pytest

from loadwarden.server import main


def test_without_numpy_each_simulator_command_names_the_eval_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numpy" else real(name, *a))

    for command in ("simulate", "evaluate", "backend-sim"):
        assert main([command, "scenarios/one-slow.toml", "--seed", "1"]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"loadwarden {command}: needs the 'eval' extra, which is not installed (missing: numpy): "
            "pip install 'loadwarden[eval]'\n"
        )


def test_with_numpy_the_real_commands_are_added(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--help"])
    assert exited.value.code == 0
    assert "--strategies" in capsys.readouterr().out
