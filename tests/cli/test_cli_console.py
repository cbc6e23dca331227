"""The chat console in a session, with input() scripted: leaving cleanly, and a history file
that cannot be written."""

from __future__ import annotations

import builtins
import io

import pytest

from tinyllm.chat import Console
from tinyllm.config import SamplingConfig
from tinyllm.package import load_package


def session(tiny_model, monkeypatch, lines, end: type[BaseException], history_file):
    """Run an interactive console fed `lines`, then `end` raised at the prompt."""
    feed = iter(lines)

    def scripted_input(prompt=""):
        out.write(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise end from None

    out = io.StringIO()
    monkeypatch.setattr(builtins, "input", scripted_input)
    console = Console(load_package(tiny_model.package), SamplingConfig(max_tokens=8),
                      "tiny", 2.5, stdout=out, stderr=out, history_file=history_file)
    console.run(interactive=True)
    return out.getvalue()


@pytest.mark.parametrize("end", [EOFError, KeyboardInterrupt])  # Ctrl-D, Ctrl-C
def test_ctrl_d_and_ctrl_c_at_the_prompt_leave_cleanly(tiny_model, monkeypatch, tmp_path, end):
    text = session(tiny_model, monkeypatch, ["", "ROMEO:", "/settings"], end,
                   tmp_path / "history")
    assert text.startswith("tinyllm chat: tiny\n")
    assert "test 2.500 bits/char" in text
    assert "/help lists commands" in text
    assert text.count("> ") == 4  # the empty line just prompts again
    assert "max-tokens 8, seed 1337" in text


def test_an_unwritable_history_file_is_ignored(tiny_model, monkeypatch, tmp_path):
    text = session(tiny_model, monkeypatch, ["/quit"], EOFError,
                   tmp_path / "missing-dir" / "history")
    assert text.endswith("> ")
