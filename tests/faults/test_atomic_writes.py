"""A writer killed at random moments never leaves a half-written file where a reader looks."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import signal
import time
from pathlib import Path

import torch

from tinyllm.package import load_package
from tinyllm.tokenizer import CharTokenizer

FORK = multiprocessing.get_context("fork")

def write_until_killed(out: Path) -> None:
    """Alternates between two versions of each artifact, as fast as it can, until killed."""
    from tinyllm.io import atomic_write_json
    from tinyllm.model import GPT, GPTConfig
    from tinyllm.package import save_package
    from tinyllm.training.state import save_checkpoint

    tokenizers = [CharTokenizer.fit("abcdef"), CharTokenizer.fit("uvwxyz")]
    models = []
    for version in (0, 1):
        torch.manual_seed(version)
        models.append(GPT(GPTConfig(vocab_size=7, context_length=8, n_layer=1, n_head=2,
                                    d_model=32)))
    for i in itertools.count():
        v = i % 2
        atomic_write_json(out / "metrics.json", {"version": v, "padding": "x" * 200_000})
        tokenizers[v].save(out / "tokenizer.json")
        save_checkpoint(out / "last.pt", {"version": v, "data": torch.full((200_000,), v)})
        save_package(out / "model", models[v], tokenizers[v], meta={"version": v})
        if i == 1:
            (out / "started").touch()  # every artifact exists in both versions by now


def read_versions(out) -> dict[str, int]:
    """Each artifact's version, read with the loaders the project uses; absent = not yet."""
    found = {}
    if (out / "metrics.json").exists():
        found["metrics"] = json.loads((out / "metrics.json").read_text())["version"]
    if (out / "tokenizer.json").exists():
        found["tokenizer"] = CharTokenizer.load(out / "tokenizer.json").chars[0] == "u"
    if (out / "last.pt").exists():
        state = torch.load(out / "last.pt", weights_only=True)
        assert torch.equal(state["data"], torch.full((200_000,), state["version"]))
        found["checkpoint"] = state["version"]
    if (out / "model").exists() or (out / ".model.old").exists():
        loaded = load_package(out / "model")
        assert loaded.tokenizer.chars[0] == ("u" if loaded.meta["version"] else "a")
        found["package"] = loaded.meta["version"]
    return found


def test_readers_see_the_old_or_the_new_file_after_kills_at_random_points(tmp_path):
    rng = random.Random(7)
    seen: dict[str, set] = {}
    for _ in range(12):
        (tmp_path / "started").unlink(missing_ok=True)
        # A forked copy of this process: torch is imported already, so each round is quick.
        writer = FORK.Process(target=write_until_killed, args=(tmp_path,))
        writer.start()
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            assert writer.is_alive(), "the writer died"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        writer.kill()  # SIGKILL
        writer.join(timeout=30)
        assert writer.exitcode == -signal.SIGKILL
        for name, version in read_versions(tmp_path).items():
            seen.setdefault(name, set()).add(int(version))
    # every artifact was read whole after kills, and the kills caught both versions
    assert set(seen) == {"metrics", "tokenizer", "checkpoint", "package"}
    assert all(versions == {0, 1} for versions in seen.values()), seen


def test_a_package_swap_killed_between_its_renames_still_reads_whole_and_recovers(
        tmp_path, model, tokenizer):
    from tinyllm.package import save_package

    target = tmp_path / "model"
    save_package(target, model, tokenizer, meta={"version": "old"})
    target.rename(tmp_path / ".model.old")  # the state a kill between the renames leaves
    assert load_package(target).meta["version"] == "old"
    save_package(target, model, tokenizer, meta={"version": "new"})
    assert load_package(target).meta["version"] == "new"
    assert not (tmp_path / ".model.old").exists()
