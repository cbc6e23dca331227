"""`tinyllm generate`: prompts from options or a file, samples with seed + i, text or JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tinyllm.package import load_package


def sample(tiny_model, prompt: str, seed: int = 1337, tokens: int = 15) -> str:
    return load_package(tiny_model.package).generate(prompt, max_tokens=tokens,
                                                      temperature=0.8, top_k=0, top_p=1.0,
                                                      seed=seed)


def test_text_output_is_prompt_plus_continuation_and_repeatable(invoke, tiny_model):
    args = ("generate", "--model-uri", "models:/tiny/1", "--prompt", "ROMEO:",
            "--max-tokens", "15")
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.stderr
    assert first.stdout == second.stdout == "ROMEO:" + sample(tiny_model, "ROMEO:") + "\n"


def test_json_has_every_prompt_and_sample(invoke, tiny_model):
    result = invoke("generate", "--model-uri", "models:/tiny@champion", "--prompt", "ROMEO:",
                    "--prompt", "JULIET:", "--num-samples", "2", "--seed", "5",
                    "--max-tokens", "15", "--top-k", "3", "--json")
    assert result.exit_code == 0, result.stderr
    items = json.loads(result.stdout)
    assert [(i["prompt"], i["settings"]["seed"]) for i in items] == [
        ("ROMEO:", 5), ("ROMEO:", 6), ("JULIET:", 5), ("JULIET:", 6)]
    assert all(i["model_uri"] == "models:/tiny/1" for i in items)  # pinned to the version
    assert items[0]["settings"] == {"max_tokens": 15, "temperature": 0.8, "top_k": 3,
                                    "top_p": 1.0, "min_p": 0.0, "frequency_penalty": 0.0,
                                    "presence_penalty": 0.0, "seed": 5}
    assert items[0]["text"] != items[1]["text"]
    loaded = load_package(tiny_model.package)
    assert items[3]["text"] == loaded.generate("JULIET:", max_tokens=15, temperature=0.8,
                                               top_k=3, top_p=1.0, seed=6)


def test_prompt_file_is_one_prompt_and_samples_get_headers(invoke, tiny_model):
    Path("prompt.txt").write_text("NURSE:\nthou")
    result = invoke("generate", "--model-uri", str(tiny_model.package), "--prompt-file",
                    "prompt.txt", "--num-samples", "2", "--max-tokens", "15")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "".join(
        f"--- prompt 1/1, sample {i + 1}/2, seed {1337 + i} ---\n"
        f"NURSE:\nthou{sample(tiny_model, 'NURSE:' + chr(10) + 'thou', 1337 + i)}\n"
        for i in range(2))


def test_notes_about_the_prompt_go_to_stderr(invoke, tiny_model):
    result = invoke("generate", "--model-uri", str(tiny_model.package), "--prompt", "ROMEO ß",
                    "--max-tokens", "5", "--json")
    assert result.exit_code == 0
    assert "note: 1 characters outside the vocabulary were replaced" in result.stderr
    assert json.loads(result.stdout)[0]["prompt"] == "ROMEO ß"


def test_missing_prompt_file_is_one_error_line(invoke, error_line):
    assert "--prompt-file" in error_line(invoke("generate", "--prompt-file", "nope.txt"))


def test_undecodable_prompt_file_bytes_are_replaced(invoke, tiny_model):
    Path("prompt.txt").write_bytes(b"ROMEO \xff")
    result = invoke("generate", "--model-uri", tiny_model.package, "--prompt-file", "prompt.txt",
                    "--max-tokens", "5", "--json")
    assert result.exit_code == 0, result.stderr
    assert "1 characters outside the vocabulary were replaced" in result.stderr
    assert json.loads(result.stdout)[0]["prompt"] == "ROMEO \ufffd"


def test_empty_and_megabyte_prompts_still_generate(invoke, tiny_model):
    empty = invoke("generate", "--model-uri", tiny_model.package, "--prompt", "",
                   "--max-tokens", "5", "--json")
    assert empty.exit_code == 0, empty.stderr
    assert len(json.loads(empty.stdout)[0]["text"]) == 5
    Path("huge.txt").write_text("ROMEO: love " * 100_000)  # 1.2 MB
    huge = invoke("generate", "--model-uri", tiny_model.package, "--prompt-file", "huge.txt",
                  "--max-tokens", "5", "--json")
    assert huge.exit_code == 0, huge.stderr
    assert "the model sees only its last 16" in huge.stderr
    assert len(json.loads(huge.stdout)[0]["text"]) == 5


def test_compiled_model_generates_the_same_text(invoke, tiny_model):
    from torch._dynamo.utils import counters

    args = ("generate", "--model-uri", str(tiny_model.package), "--prompt", "ROMEO:",
            "--max-tokens", "40", "--temperature", "0")  # past the context: the window slides
    graphs = counters["stats"]["unique_graphs"]
    compiled, eager = invoke(*args, "--compile"), invoke(*args)
    assert compiled.exit_code == 0, compiled.stderr
    assert counters["stats"]["unique_graphs"] > graphs  # the compiler really ran
    assert compiled.stdout == eager.stdout
