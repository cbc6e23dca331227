"""`python -m tinyllm.bench`: how fast this machine trains and samples the default model.

One run measures matmul FLOP/s in training's compute dtype (the ceiling: fp32 on CPUs, bf16 on
CUDA), training tokens/s of the params.yaml model under AdamW and under Muon (train.optimizer),
greedy generation with and without the KV cache (--compile adds compiled training and
generation), and how long `tinyllm generate` takes from spawn to its first generated character.
Ratios taken in one run are the figures to trust on a shared, noisy machine. The table goes to
stderr, JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tinyllm.config import DEVICES, SamplingConfig, TrainConfig, load_params_or_defaults
from tinyllm.devices import autocast_for, compute_dtype, seconds, select_device
from tinyllm.errors import exit_on_error
from tinyllm.generate import compiled_for_generation, stream_tokens
from tinyllm.model import GPT, GPTConfig, compiled
from tinyllm.package import save_package
from tinyllm.tokenizer import CharTokenizer
from tinyllm.training.batches import WindowSampler, tokens_per_step
from tinyllm.training.optimizer import make_optimizer, optimizer_step

# Printable ASCII from space to "s": 84 characters + the unknown id = 85, about Shakespeare's.
TOKENIZER = CharTokenizer([chr(c) for c in range(32, 116)])
PROMPT = "ROMEO:"
DEFAULT_STEPS = 50
SHAPE = ("context_length", "n_layer", "n_head", "d_model", "batch_size")  # --context-length ...
# `tinyllm` as this Python runs it (tinyllm/__main__.py), the folder holding the package on its
# path: the same start-up as the console script, installed or not (a source tree).
TINYLLM = [sys.executable, "-m", "tinyllm"]


@dataclass
class Plan:
    """Sizes of one benchmark run: the params.yaml defaults, or tiny ones for a smoke test."""

    model: GPTConfig
    batch_size: int
    steps: int
    warmup_steps: int
    new_tokens: int
    generation_contexts: tuple[int, ...]
    matmul_sizes: tuple[int, ...]
    tries: int


def make_plan(quick: bool, steps: int | None, device: torch.device,
              shape: dict | None = None) -> Plan:
    """shape: model/batch keys to change (context_length, batch_size, ...), else params.yaml's."""
    params = load_params_or_defaults()
    shape = dict(shape or {})
    batch_size = shape.pop("batch_size", None) or params.train.batch_size
    model = replace(GPTConfig.from_params(params.model, TOKENIZER.vocab_size), **shape)
    if quick:
        tiny = replace(model, context_length=16, n_layer=1, n_head=2, d_model=32)
        return Plan(tiny, 4, steps or 3, 1, 20, (8, 16), (64, 128), 1)
    # A GPU reaches its peak only on large products.
    sizes = (2048, 4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    return Plan(model, batch_size, steps or DEFAULT_STEPS, 5, 500, (64, 256), sizes, 3)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): other work slows every figure."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def matmul_flops(device: torch.device, sizes: tuple[int, ...], repeats: int = 5) -> dict:
    """Best FLOP/s of square matmuls in training's compute dtype: the ceiling training
    throughput is compared with."""
    dtype = compute_dtype(device)
    by_size = {}
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        best = min(seconds(lambda a=a, b=b: a @ b, device) for _ in range(repeats + 1))
        by_size[str(n)] = 2 * n**3 / best
    return {"dtype": str(dtype).removeprefix("torch."), "flops_per_sec": max(by_size.values()),
            "by_size": by_size}


def training_speed(plan: Plan, device: torch.device, compile: bool, matmul: float,
                   optimizer_name: str = "adamw") -> dict:
    """Tokens/s of the training loop's own optimizer step (sampling, forward, backward, clipping,
    the optimizer) on random tokens."""
    torch.manual_seed(0)
    config = plan.model
    cfg = TrainConfig(batch_size=plan.batch_size, learning_rate=1e-3, optimizer=optimizer_name)
    model = GPT(config).to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    tokens = np.random.default_rng(0).integers(1, config.vocab_size, 200_000).astype(np.uint16)
    sampler = WindowSampler(tokens, config.context_length, plan.batch_size, seed=0)
    net = compiled(model) if compile else model
    autocast = autocast_for(device)

    def step():
        optimizer_step(net, model, optimizer, sampler, cfg, cfg.learning_rate, device, autocast)

    warmup = sum(seconds(step, device) for _ in range(plan.warmup_steps))  # compiling, if any
    # The median step shrugs off bursts of other work on a shared machine.
    step_sec = statistics.median(seconds(step, device) for _ in range(plan.steps))
    tokens_per_sec = tokens_per_step(cfg, config.context_length) / step_sec
    flops = model.flops_per_token() * tokens_per_sec
    return {"tokens_per_sec": tokens_per_sec, "flops_per_sec": flops,
            "matmul_fraction": flops / matmul, "warmup_sec": warmup}


def lively(model: GPT) -> GPT:
    """Large random weights, so greedy text varies and the identical-output check means something
    (a fresh model's greedy text is one repeated character)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model


def generation_speed(config: GPTConfig, device: torch.device, new_tokens: int, tries: int,
                     compile: bool) -> dict:
    """Greedy tokens/s (best of tries) with the KV cache and with full recompute, on the same
    weights; with compile also the compiled KV-cache path and its compiling time."""
    model = lively(GPT(config)).to(device)
    prompt = TOKENIZER.encode(PROMPT)
    settings = SamplingConfig(max_tokens=new_tokens, temperature=0.0)

    def best_rate(net: GPT, use_cache: bool) -> tuple[float, list[int]]:
        best = 0.0
        for _ in range(tries):
            start = time.perf_counter()
            tokens = list(stream_tokens(net, prompt, settings, use_cache))
            best = max(best, new_tokens / (time.perf_counter() - start))
        return best, tokens

    def warm_up(net: GPT) -> float:
        """Seconds of a first whole generation: compiling, if any, happens here."""
        return seconds(lambda: list(stream_tokens(net, prompt, settings)), device)

    warm_up(model)
    (cached, cached_tokens), (full, full_tokens) = best_rate(model, True), best_rate(model, False)
    result = {"context_length": config.context_length, "kv_cache_tokens_per_sec": cached,
              "recompute_tokens_per_sec": full, "kv_speedup": cached / full,
              "identical": cached_tokens == full_tokens,
              "distinct_tokens": len(set(cached_tokens))}
    if compile:
        net = compiled_for_generation(model)
        warmup = warm_up(net)
        rate, tokens = best_rate(net, True)
        result["compiled"] = {"kv_cache_tokens_per_sec": rate, "over_eager": rate / cached,
                              "warmup_sec": warmup, "identical": tokens == cached_tokens}
    return result


def first_character(config: GPTConfig, device: torch.device, tries: int) -> dict:
    """Best time from spawning `tinyllm generate` on a saved package to its first generated
    character: start-up, imports and loading included, as a user waits for them."""
    with tempfile.TemporaryDirectory() as tmp:
        package = save_package(Path(tmp) / "model", GPT(config), TOKENIZER)
        command = [*TINYLLM, "generate", "--model-uri", str(package), "--prompt", PROMPT,
                   "--max-tokens", "1", "--device", device.type]
        best = min(_seconds_to_output(command, len(PROMPT) + 1) for _ in range(tries))
    return {"seconds": best, "tries": tries}


def _seconds_to_output(command: list[str], count: int) -> float:
    """Seconds until the command has written count bytes (the echoed prompt, then text)."""
    source = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (source, os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env) as process:
        head = process.stdout.read(count)
        elapsed = time.perf_counter() - start
        _, errors = process.communicate()
    if process.returncode or len(head) < count:
        raise RuntimeError(f"tinyllm generate failed: {errors.decode()[-500:]}")
    return elapsed


def flops(rate: float) -> str:
    """A FLOP/s figure in the unit that suits it: GFLOP/s on CPUs, TFLOP/s on GPUs."""
    return f"{rate / 1e12:.1f} TFLOP/s" if rate >= 1e13 else f"{rate / 1e9:.1f} GFLOP/s"


def table(report: dict) -> str:
    """The report as aligned lines for a person."""
    m, train, first = report["machine"], report["training"], report["first_character"]
    load = " -> ".join("n/a" if x is None else f"{x:.1f}" for x in (m["load_before"],
                                                                   m["load_after"]))
    shape = train["model"]
    lines = [
        f"machine      {m['device']}, torch {m['torch']}, {m['threads']} threads; load average "
        f"{load} (other work skews every figure)",
        f"matmul       {flops(report['matmul']['flops_per_sec'])} "
        f"{report['matmul']['dtype']}, best of sizes "
        + ", ".join(f"{n}: {flops(f)}" for n, f in report["matmul"]["by_size"].items()),
        f"training     d_model {shape['d_model']}, {shape['n_layer']} layers, context "
        f"{shape['context_length']}, batch {train['batch_size']}: {train['params'] / 1e6:.2f}M "
        f"params, {train['flops_per_token'] / 1e6:.2f} MFLOP/token, median of "
        f"{train['steps']} steps",
    ]
    for mode, label in (("eager", "AdamW"), ("muon", "Muon"), ("compiled", "compiled")):
        if mode in train:
            r = train[mode]
            lines.append(f"  {label:<10} {r['tokens_per_sec']:>9,.0f} tokens/s  "
                         f"{flops(r['flops_per_sec'])} = {r['matmul_fraction']:.1%} "
                         f"of matmul  (warm-up {r['warmup_sec']:.1f} s)")
    lines.append(f"  Muon / AdamW: {train['muon_over_eager']:.2f}x the tokens/s")
    if "compiled_over_eager" in train:
        lines.append(f"  compiled / AdamW: {train['compiled_over_eager']:.2f}x")
    lines.append(f"generation   {report['generation']['new_tokens']} greedy tokens: "
                 f"KV cache vs full recompute, same weights, best of "
                 f"{report['generation']['tries']}")
    for g in report["generation"]["contexts"]:
        lines.append(f"  context {g['context_length']:<4} {g['kv_cache_tokens_per_sec']:>7,.0f} vs "
                     f"{g['recompute_tokens_per_sec']:>6,.0f} tokens/s = {g['kv_speedup']:.2f}x"
                     f"  identical: {'yes' if g['identical'] else 'NO'}")
        if "compiled" in g:
            c = g["compiled"]
            lines.append(f"    compiled KV cache {c['kv_cache_tokens_per_sec']:>7,.0f} tokens/s = "
                         f"{c['over_eager']:.2f}x eager  (warm-up {c['warmup_sec']:.1f} s)  "
                         f"identical: {'yes' if c['identical'] else 'NO'}")
    lines.append(f"first char   {first['seconds']:.2f} s from spawning `tinyllm generate` "
                 f"(best of {first['tries']})")
    return "\n".join(lines)


def run(plan: Plan, device: torch.device, compile: bool) -> dict:
    load_before = load_average()
    matmul = matmul_flops(device, plan.matmul_sizes)
    probe = GPT(plan.model)
    training = {"model": asdict(plan.model), "batch_size": plan.batch_size, "steps": plan.steps,
                "params": probe.num_parameters(), "flops_per_token": probe.flops_per_token(),
                "eager": training_speed(plan, device, False, matmul["flops_per_sec"]),
                "muon": training_speed(plan, device, False, matmul["flops_per_sec"], "muon")}
    training["muon_over_eager"] = (training["muon"]["tokens_per_sec"]
                                   / training["eager"]["tokens_per_sec"])
    if compile:
        training["compiled"] = training_speed(plan, device, True, matmul["flops_per_sec"])
        training["compiled_over_eager"] = (training["compiled"]["tokens_per_sec"]
                                           / training["eager"]["tokens_per_sec"])
    generation = {"new_tokens": plan.new_tokens, "tries": plan.tries, "contexts": [
        generation_speed(replace(plan.model, context_length=c), device, plan.new_tokens,
                         plan.tries, compile)
        for c in plan.generation_contexts]}
    first = first_character(plan.model, device, plan.tries)
    return {"machine": {"device": str(device), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "load_before": load_before,
                        "load_after": load_average()},
            "matmul": matmul, "training": training, "generation": generation,
            "first_character": first}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinyllm.bench", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--steps", type=int, help=f"timed training steps (default "
                        f"{DEFAULT_STEPS}; 3 with --quick)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile training and generation")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    for name in SHAPE:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, metavar="N",
                            help=f"training shape: {name} (default: params.yaml's)")
    args = parser.parse_args(argv)
    for name, value in (("steps", args.steps), *((n, getattr(args, n)) for n in SHAPE)):
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    device = select_device(args.device, key="--device")
    started = time.perf_counter()
    shape = {name: getattr(args, name) for name in SHAPE if getattr(args, name) is not None}
    report = run(make_plan(args.quick, args.steps, device, shape), device, args.compile)
    report["total_sec"] = time.perf_counter() - started
    print(table(report) + f"\ntotal        {report['total_sec']:.0f} s", file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    exit_on_error(main)
