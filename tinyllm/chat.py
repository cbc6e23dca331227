"""The console behind `tinyllm chat`: prompts in, streamed continuations out.

On a terminal: a banner, readline editing and history, slash commands, and Ctrl-C stops a
generation without leaving. With piped stdin: one continuation per input line on stdout and
nothing else there (messages go to stderr), so `printf 'ROMEO:\\n' | tinyllm chat` is scriptable.
As a continuation may hold newlines, the JSON mode (`--json`) prints one JSON object per prompt
instead, {"prompt", "text", "seed"} on one line, flushed at once, whatever stdin is.
Each prompt gets its own draw, yet a session is reproducible from its seed: the first prompt
after the start, `/seed N` or `/reset` uses the seed, the next one seed + 1, and so on.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from tinyllm.config import SEED_MAX, SamplingConfig
from tinyllm.errors import TinyLLMError

HISTORY_FILE = Path("~/.tinyllm_history")
HISTORY_LENGTH = 1000

# slash command (/temp) -> the SamplingConfig field it sets (temperature)
KNOBS = {f"/{f.metadata['command']}": f for f in fields(SamplingConfig)}

HELP = "\n".join([
    "commands:",
    *(f"  {name + (' N' if f.type == 'int' else ' X'):<14}{f.metadata['help']}"
      for name, f in KNOBS.items()),
    "  /settings     show the current settings",
    "  /reset        back to the settings chat started with",
    "  /help         this list",
    "  /quit, /exit  leave (so do Ctrl-D and Ctrl-C at the prompt)",
    "Ctrl-C while text is being generated stops it and returns to the prompt."])


def describe_settings(s: SamplingConfig) -> str:
    """e.g. `temperature 0.8, top-k off, top-p 0.9, min-p off, max-tokens 300, seed 1337`."""
    parts = []
    for f in fields(SamplingConfig):
        value = getattr(s, f.name)
        shown = "off" if "off" in f.metadata and value == f.metadata["off"] else f"{value:g}"
        parts.append(f"{f.name.replace('_', '-')} {shown}")
    return ", ".join(parts)


class Console:
    """One chat session with a loaded model (a tinyllm.package.LoadedModel)."""

    def __init__(self, loaded, settings: SamplingConfig, title: str,
                 test_bits_per_char: float | None = None, *, stdin=None, stdout=None,
                 stderr=None, history_file: Path = HISTORY_FILE, as_json: bool = False):
        self.loaded, self.title, self.test_bits_per_char = loaded, title, test_bits_per_char
        self.start = self.settings = settings
        self.turn = 0  # prompts since the start, /seed or /reset: this one uses seed + turn
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.history_file = history_file
        self.interactive = False
        self.as_json = as_json

    # --- the two modes ---------------------------------------------------------------------

    def run(self, interactive: bool) -> None:
        self.interactive = interactive and not self.as_json
        if self.interactive:
            self._interactive()
        else:
            self._piped()

    def _interactive(self) -> None:
        readline = self._load_history()
        self.say(self.banner())
        try:
            while True:
                try:
                    line = input("> ")
                except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt
                    self.stdout.write("\n")
                    return
                if not self.handle(line):
                    return
        finally:
            self._save_history(readline)

    def _piped(self) -> None:
        self.say(self.banner())
        for line in iter(self.stdin.readline, ""):
            if not self.handle(line.rstrip("\r\n")):
                return

    def handle(self, line: str) -> bool:
        """One input line: a command, a prompt, or nothing. False means leave."""
        if not line.strip():
            return True
        if line.startswith("/"):
            return self.command(line)
        self.generate(line)
        return True

    # --- output ------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Messages: on the terminal in a session, on stderr when stdin is piped."""
        out = self.stdout if self.interactive else self.stderr
        out.write(text + "\n")
        out.flush()

    def banner(self) -> str:
        loaded = self.loaded
        facts = [f"{loaded.model.num_parameters():,} parameters",
                 f"vocabulary {loaded.tokenizer.vocab_size}",
                 f"context {loaded.config.context_length} characters"]
        if self.test_bits_per_char is not None:
            facts.append(f"test {self.test_bits_per_char:.3f} bits/char")
        lines = [f"tinyllm chat: {self.title}", "  " + ", ".join(facts),
                 "  " + describe_settings(self.settings)]
        if self.interactive:
            lines.append("Type a prompt and the model continues it; /help lists commands, "
                         "/quit or Ctrl-D leaves.")
        return "\n".join(lines)

    def generate(self, prompt: str) -> None:
        """Stream the continuation; Ctrl-C stops it (in a session) and keeps the console."""
        pieces = None
        try:
            for note in self.loaded.prompt_notes(prompt):
                self.say(f"note: {note}")
            seed = (self.settings.seed + self.turn) % (SEED_MAX + 1)
            self.turn += 1
            pieces = self.loaded.stream(prompt, settings=replace(self.settings, seed=seed))
            if self.as_json:
                self._json_line(prompt, "".join(pieces), seed)
                return
            for piece in pieces:
                self.stdout.write(piece)
                if self.interactive:
                    self.stdout.flush()
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            self.stdout.write("\n")
            self.say("(stopped)")
            return
        finally:
            if pieces is not None:
                pieces.close()
        self.stdout.write("\n")
        self.stdout.flush()

    def _json_line(self, prompt: str, text: str, seed: int) -> None:
        # ASCII only: no character of the text (e.g. U+2028) can split the line for a reader
        self.stdout.write(json.dumps({"prompt": prompt, "text": text, "seed": seed}) + "\n")
        self.stdout.flush()

    # --- slash commands ----------------------------------------------------------------------

    def command(self, line: str) -> bool:
        name, _, arg = line.strip().partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/settings":
            self.say(describe_settings(self.settings))
        elif name == "/reset":
            self.settings, self.turn = self.start, 0
            self.say("settings reset: " + describe_settings(self.settings))
        elif name in KNOBS:
            self._set(name, arg)
        else:
            self.say(f"unknown command {name}; /help lists the commands")
        return True

    def _set(self, name: str, arg: str) -> None:
        key, kind = KNOBS[name].name, int if KNOBS[name].type == "int" else float
        if not arg:
            self.say(f"{name} needs a value, e.g. {name} {getattr(self.start, key)} "
                     f"(now {getattr(self.settings, key)})")
            return
        try:
            value = kind(arg)
        except ValueError:
            self.say(f"{name}: {arg!r} is not {'an integer' if kind is int else 'a number'}")
            return
        try:  # the checks declared in tinyllm.config, the same ones every surface uses
            self.settings = replace(self.settings, **{key: value})
        except TinyLLMError as exc:
            self.say(f"{name}: {exc}")
            return
        if key == "seed":
            self.turn = 0
        self.say(describe_settings(self.settings))

    # --- readline history (a failure to read or write it is never an error) -----------------

    def _load_history(self):
        try:
            import readline
        except ImportError:  # e.g. Windows: plain input() still works
            return None
        with contextlib.suppress(OSError):
            readline.read_history_file(self.history_file.expanduser())
        readline.set_history_length(HISTORY_LENGTH)
        return readline

    def _save_history(self, readline) -> None:
        if readline is None:
            return
        with contextlib.suppress(OSError):
            readline.write_history_file(self.history_file.expanduser())
