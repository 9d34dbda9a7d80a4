"""The progress bar: redraw rate on a terminal, a few plain lines otherwise; clock injected."""

from __future__ import annotations

import io

import pytest

from loadwarden.backend_sim import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_it_is_a_tqdm_bar_redrawn_at_most_ten_times_a_second() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress(1_000, "run", stream=out, clock=clock, tty=True)
    for i in range(1_000):  # 1000 advances over 2 s of fake time
        clock.now += 0.002
        bar.advance()
        if i == 500:
            bar.set_label("run p2c")
    bar.close()

    text = out.getvalue()
    draws = text.count("\r")
    assert 20 <= draws <= 26, draws  # tqdm's first draws, ~10 per second for 2 s, the final one
    final = text.rsplit("\r", 1)[1]
    assert final.startswith("run p2c: 100%|") and "| 1000/1000 [00:02<00:00," in final, final
    assert text.endswith("\n")
    assert bar.done == 1_000


def test_without_a_terminal_it_prints_a_few_plain_lines() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress(100, "sim", stream=out, clock=clock, tty=False) as bar:
        for _ in range(100):
            clock.now += 0.5
            bar.advance()

    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("] ")[1].split()[0] for line in lines] == ["0%", "25%", "50%", "75%", "100%"]
    assert lines[1].startswith("sim [#######") and "12.5s, ~38s left" in lines[1]
    assert lines[-1].endswith("100/100 50.0s")


def test_advance_update_and_label() -> None:
    out = io.StringIO()
    bar = Progress(10, stream=out, clock=Clock(), tty=False)
    bar.advance(25)
    assert bar.done == 10  # clamped
    bar.update(-3)
    assert bar.done == 0
    bar.set_label("p2c")
    bar.update(4)
    assert bar.line().startswith("p2c [############")
    bar.close()
    bar.advance()  # after close: ignored
    assert bar.done == 4
    assert out.getvalue().count("\n") == 3  # 0 %, 100 % (clamped), the close at 4


def test_zero_total_and_bad_total() -> None:
    out = io.StringIO()
    Progress(0, "empty", stream=out, clock=Clock(), tty=False).close()
    assert "100% 0/0" in out.getvalue()
    with pytest.raises(ValueError, match=r"^total: "):
        Progress(-1)
