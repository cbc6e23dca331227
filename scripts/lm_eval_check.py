"""lm-evaluation-harness's `local-completions` model against `tinyllm serve`, on a small local
task, in bits per character, beside tinyllm's own scoring of the same texts.

    python scripts/lm_eval_check.py --model-uri models:/shakespeare/1 \
        --text data/prepared/test.txt --lm-eval /tmp/lmeval-venv/bin/lm_eval

The harness is not a dependency of this project: install it in a venv of its own
(`python -m venv /tmp/lmeval-venv && /tmp/lmeval-venv/bin/pip install "lm-eval[api]==0.4.13"`)
and name its `lm_eval`. Nothing is downloaded: the task is written here, a loglikelihood_rolling
task over a JSON-lines file of the first --docs paragraphs of --text (split at blank lines) made
of characters the model knows, and the harness finds the server's tokenizer at /tokenize (its
remote tokenizer).

The harness scores each text after its tokenizer's bos_token (the server's: a newline,
generate.TEXT_START) in windows of --max-length characters. With windows longer than every text,
each text is one request, and its score is what `tinyllm compare` and the evaluate stage give
bos_token + text: their scoring, tinyllm.evaluation.scoring.char_nll, is the figure set beside it
(compare itself takes only texts longer than the context). In shorter windows the harness gives
each window's first character one character of history, where tinyllm gives every character at
least half a context. Prints one JSON line; exits 1 if the two differ by more than --tolerance
bits per character.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import tinyllm
from tinyllm.generate import TEXT_START
from tinyllm.serving import launch

BIN = Path(sys.executable).parent
TASK = "tinyllm_texts"


def paragraphs(text_file: Path, count: int, known: set[str]) -> list[str]:
    """The first count paragraphs (blank-line separated) whose characters the model knows
    (compare would leave the others out), each ending in a newline."""
    found = [p.strip("\n") + "\n" for p in text_file.read_text(encoding="utf-8").split("\n\n")]
    return [p for p in found if p.strip() and set(p) <= known][:count]


def write_task(directory: Path, docs: list[str]) -> None:
    data = directory / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    (directory / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
        "  - metric: bits_per_byte\n  - metric: word_perplexity\n", encoding="utf-8")


def harness(lm_eval: str, url: str, model: str, directory: Path, max_length: int) -> dict:
    """The harness's bits_per_byte and each text's log-likelihood (natural log), in text order."""
    out = directory / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [lm_eval, "--model", "local-completions", "--model_args",
         f"model={model},base_url={url}/v1/completions,tokenized_requests=False,"
         f"max_length={max_length}", "--include_path", str(directory), "--tasks", TASK,
         "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=1800)
    if run.returncode != 0:
        sys.exit(f"error: lm_eval exited with {run.returncode}:\n{run.stderr[-3000:]}")
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][TASK]
    samples = [json.loads(line) for line in
               next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    return {"bits_per_byte": results["bits_per_byte,none"],
            "loglikelihoods": [float(s["resps"][0][0]) for s in samples]}


def scored(loaded, docs: list[str]) -> float:
    """Nats of the docs as `tinyllm compare` and the evaluate stage score them
    (scoring.char_nll), each after TEXT_START."""
    from tinyllm.evaluation.scoring import char_nll

    return sum(float(char_nll(loaded.model, loaded.tokenizer.encode(TEXT_START + d)).sum())
               for d in docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="models:/shakespeare/1")
    parser.add_argument("--text", type=Path, default=Path("data/prepared/test.txt"))
    parser.add_argument("--docs", type=int, default=5, help="paragraphs of --text to score")
    parser.add_argument("--lm-eval", default="lm_eval", help="the harness's lm_eval command")
    parser.add_argument("--max-length", type=int,
                        help="the harness's window (default: longer than every text)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    loaded = tinyllm.load_model(args.model_uri)
    docs = paragraphs(args.text, args.docs, set(loaded.tokenizer.chars))
    if not docs:
        sys.exit(f"error: --text {args.text} has no paragraph of characters the model knows")
    max_length = args.max_length or max(map(len, docs)) + 3  # bos, the text, one generated
    scratch = Path(tempfile.mkdtemp(prefix="lm_eval_check."))
    write_task(scratch, docs)
    log = scratch / "server.log"
    server, url = launch.start([str(BIN / "tinyllm"), "serve", "--model-uri", args.model_uri,
                                "--workers", "1"], log)
    try:
        launch.wait_until_up(f"{url}/v1/models", server, log)
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as reply:
            model = json.loads(reply.read())["data"][0]["id"]
        found = harness(args.lm_eval, url, model, scratch, max_length)
    finally:
        launch.stop(server)
    characters = sum(map(len, docs))
    harness_bits = -sum(found["loglikelihoods"]) / characters / math.log(2)
    compare_bits = scored(loaded, docs) / characters / math.log(2)
    report = {"model_uri": args.model_uri, "text": str(args.text), "docs": len(docs),
              "characters": characters, "max_length": max_length,
              "harness_bits_per_byte": found["bits_per_byte"],
              "harness_bits_per_char": harness_bits, "compare_bits_per_char": compare_bits,
              "difference": harness_bits - compare_bits}
    print(json.dumps(report))
    if abs(report["difference"]) > args.tolerance:
        sys.exit(f"error: the harness and tinyllm compare differ by {report['difference']:.2e} "
                 "bits/char")


if __name__ == "__main__":
    main()
