"""Progress lines of long work: redrawn on a terminal, logged every interval elsewhere."""

from __future__ import annotations

import io
import logging

from tinyllm.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def clock_of(*times: float):
    return iter(times).__next__


def test_off_a_terminal_it_logs_every_interval_and_the_end(caplog):
    progress = Progress("evaluate: scoring val", "characters", stream=io.StringIO(),
                        interval=10, clock=clock_of(0, 1, 11, 12, 25, 30))
    with caplog.at_level(logging.INFO):
        for done in (100, 1100, 1200, 2500):  # at 1, 11, 12 and 25 s
            progress(done, 3000)
        progress.finish(" of 9,000")
    assert caplog.messages == [
        "evaluate: scoring val: 1,100/3,000 characters (37%) 100 characters/s eta 0m19s",
        "evaluate: scoring val: 2,500/3,000 characters (83%) 100 characters/s eta 0m05s",
        "evaluate: scoring val: 2,500 characters of 9,000 in 30.0 s"]


def test_on_a_terminal_it_redraws_one_line_and_keeps_the_last(caplog):
    terminal = Terminal()
    progress = Progress("evaluate: sampling", "characters", stream=terminal,
                        clock=clock_of(0, 1, 2, 3))
    with caplog.at_level(logging.INFO):
        progress(300, 600)
        progress(600, 600)
        progress.finish(" (2 prompt(s))")
    assert not caplog.messages
    assert terminal.getvalue() == (
        "\r\033[Kevaluate: sampling: 300/600 characters (50%) 300 characters/s eta 0m01s"
        "\r\033[Kevaluate: sampling: 600/600 characters (100%) 300 characters/s eta 0m00s"
        "\r\033[Kevaluate: sampling: 600 characters (2 prompt(s)) in 3.0 s\n")
