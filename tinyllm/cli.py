"""The `tinyllm` command: chat with, sample from, train and list models.

Commands import torch, MLflow and the pipeline only when they run, so `tinyllm --help` answers at
once. Every TinyLLMError and every usage mistake ends as one `error: ...` line on stderr and a
non-zero exit; the traceback is shown only with -v.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import Field, asdict, dataclass, fields, replace
from pathlib import Path

import click

from tinyllm.config import (
    DEVICES,
    MAX_TOKENS_CEILING,
    SEED_MAX,
    SamplingConfig,
    params_field,
)
from tinyllm.corpus import TEST
from tinyllm.errors import TinyLLMError, fail, fail_on_user_error
from tinyllm.layout import Layout
from tinyllm.serving.limits import Limits
from tinyllm.serving.workers import MAX_DEFAULT_WORKERS
from tinyllm.tracking.discovery import (
    MODEL_URI_FORMS,
    MODEL_URI_HELP,
    load_model,
    open_store,
    pinned_uri,
    recorded_test_bits,
    title_of,
)
from tinyllm.version import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """A click.Group that reports errors as one `error: ...` line (a traceback only with -v)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name or "tinyllm", complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see: {exc.ctx.command_path} --help)"
            fail(exc.format_message() + hint, exc.exit_code)
        except click.Abort:
            fail("interrupted", 130)
        except OSError as exc:
            fail(str(exc))
        except Exception as exc:
            fail_on_user_error(exc)
        sys.exit(code if isinstance(code, int) else 0)


@dataclass
class Options:
    verbose: bool
    tracking_uri: str | None


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="tinyllm",
                      message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="DEBUG logs, and full tracebacks on errors.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="URI",
              help="MLflow tracking store [env MLFLOW_TRACKING_URI; default: sqlite "
                   "mlflow.db in the project root].")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, tracking_uri: str | None) -> None:
    """tinyllm: a character-level GPT trained, tracked and served through DVC and MLflow.

    \b
    tinyllm chat                        talk to the champion model
    tinyllm generate --prompt 'ROMEO:'  sample text (--json for scripts)
    tinyllm train my_text.txt           train a model on any text, outside DVC (--time-budget)
    tinyllm serve                       an OpenAI-compatible server for the champion model
    tinyllm models                      list the registered models
    tinyllm compare A B                 is model B really better than A? (95% interval)
    tinyllm runs                        mean ± sd of the test loss per recipe over seeds
    tinyllm restore                     models/model back from the registry (after dvc exp)
    tinyllm rehome                      after moving the project: mlflow.db uses its mlruns/
    """
    from tinyllm.logs import setup_logging

    setup_logging(verbose)
    ctx.obj = Options(verbose, tracking_uri)


def main() -> None:
    cli()


# --- shared options ---------------------------------------------------------------------------

def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def option_type(f: Field):
    """An option's click type from the config field it sets: its choices, else its number."""
    if f.metadata["choices"]:
        return click.Choice(f.metadata["choices"])
    return click.INT if f.type == "int" else click.FLOAT


def naming_the_option(exc: TinyLLMError, options: dict[str, str]) -> TinyLLMError:
    """exc, led by the option ({key: name}) that set the key it is about, when an option did."""
    option = options.get(exc.key)
    return TinyLLMError(f"{flag(option)}: {exc}" if option else str(exc))


def sampling_options(command):
    """One option per SamplingConfig field (--max-tokens, --top-p, ...), its default and help.

    The values are checked when the command builds its SamplingConfig (settings_from), so a bad
    one reads the same as from the Python API or the server: `error: top_p must be > 0.0, ...`.
    """
    for f in reversed(fields(SamplingConfig)):
        command = click.option(flag(f.name), f.name, type=option_type(f), default=f.default,
                               show_default=True, help=f.metadata["help"])(command)
    return command


def model_options(command):
    command = click.option(
        "--compile", "compile_model", is_flag=True,
        help="torch.compile the model: the first characters wait seconds to a minute for the "
             "compiler; pays only for long outputs where `python -m tinyllm.bench --compile` "
             "says so.")(command)
    command = click.option("--device", type=click.Choice(DEVICES),
                           default="auto", show_default=True, help="Where the model runs.")(command)
    return click.option("--model-uri", metavar="URI", help=MODEL_URI_HELP)(command)


def notify(message: str) -> None:
    """Status for the person at the terminal; stderr keeps stdout clean for pipes."""
    click.echo(message, err=True)


def settings_from(sampling: dict) -> SamplingConfig:
    """The options' SamplingConfig; a bad value names its option, then the setting's check."""
    try:
        return SamplingConfig(**sampling)
    except TinyLLMError as exc:
        raise naming_the_option(exc, {name: name for name in sampling}) from None


# --- chat and generate ------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Read prompts line by line (slash commands too) and print one JSON object "
                   'per prompt on one line, {"prompt", "text", "seed"}, flushed at once.')
@model_options
@sampling_options
@click.pass_obj
def chat(obj: Options, as_json, model_uri, device, compile_model, **sampling) -> None:
    """Talk to a model: type a prompt and watch it continue the text.

    On a terminal: line editing, history (~/.tinyllm_history) and slash commands (/help).
    Ctrl-C stops a generation; Ctrl-C or Ctrl-D at the prompt leaves. With piped input every
    line is a prompt and stdout holds only the continuations, one per prompt, each followed by
    a newline; a continuation may itself hold newlines, so scripts take --json, one JSON line
    per prompt:

    \b
        printf 'ROMEO:\\n' | tinyllm chat --seed 1
        printf 'ROMEO:\\nJULIET:\\n' | tinyllm chat --json | jq -r .text
    """
    from tinyllm.chat import Console

    settings = settings_from(sampling)
    loaded = load_model(model_uri, device, obj.tracking_uri, notify, compile_model)
    bits = recorded_test_bits(loaded, obj.tracking_uri)
    if hasattr(sys.stdin, "reconfigure"):  # undecodable input bytes: unknown characters
        sys.stdin.reconfigure(errors="replace")
    console = Console(loaded, settings, title_of(loaded.source), bits, as_json=as_json)
    console.run(interactive=sys.stdin.isatty())


@cli.command()
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="A prompt; repeat for several.")
@click.option("--prompt-file", type=click.File(encoding="utf-8", errors="replace"),
              help="A file whose whole text (newlines included) is one prompt; - reads stdin.")
@click.option("--num-samples", type=click.IntRange(1, 10_000), default=1, show_default=True,
              help="Samples per prompt; sample i uses seed + i.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {prompt, text, model_uri, settings}.")
@model_options
@sampling_options
@click.pass_obj
def generate(obj: Options, prompts, prompt_file, num_samples, as_json, model_uri, device,
             compile_model, **sampling) -> None:
    """Continue one or more prompts. The same seed gives the same text.

    Without --json each sample is printed as prompt + continuation.
    """
    from tinyllm.tokenizer import replace_undecodable

    prompts = [replace_undecodable(p) for p in [*prompts, *(
        [prompt_file.read()] if prompt_file else [])]]
    if not prompts:
        raise click.UsageError("give --prompt TEXT (repeatable) or --prompt-file FILE")
    base = settings_from(sampling)
    if base.seed + num_samples - 1 > SEED_MAX:
        raise TinyLLMError(f"--seed {base.seed} with --num-samples {num_samples} passes the "
                           f"largest seed, {SEED_MAX}")
    loaded = load_model(model_uri, device, obj.tracking_uri, notify, compile_model)
    results = []
    for p, prompt in enumerate(prompts, 1):
        for note in loaded.prompt_notes(prompt):
            click.echo(f"note: {note}", err=True)
        for i in range(num_samples):
            settings = replace(base, seed=base.seed + i)
            if as_json:
                text = loaded.generate(prompt, settings=settings)
                results.append({"prompt": prompt, "text": text,
                                "model_uri": pinned_uri(loaded.source),
                                "settings": asdict(settings)})
                continue
            if len(prompts) * num_samples > 1:
                click.echo(f"--- prompt {p}/{len(prompts)}, sample {i + 1}/{num_samples}, "
                           f"seed {settings.seed} ---")
            click.echo(prompt, nl=False)
            for piece in loaded.stream(prompt, settings=settings):
                click.echo(piece, nl=False)
            click.echo()
    if as_json:
        click.echo(json.dumps(results, indent=2, ensure_ascii=False))


@cli.command(short_help="Serve a model over an OpenAI-compatible HTTP API (streaming too).")
@click.option("--model-uri", metavar="URI",
              help=f"{MODEL_URI_HELP} An alias is followed as it moves.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the model runs.")
@click.option("--max-tokens-limit", type=click.IntRange(1, MAX_TOKENS_CEILING),
              default=Limits.max_tokens, show_default=True,
              help="The largest max_tokens a request may ask for.")
@click.option("--request-seconds", type=click.FloatRange(0, min_open=True),
              default=Limits.request_seconds, show_default=True,
              help="Generation time per request; then it ends (finish_reason length).")
@click.option("--max-prompt-chars", type=click.IntRange(1), default=Limits.max_prompt_chars,
              show_default=True, help="The longest prompt (or chat) a request may send.")
@click.option("--refresh-seconds", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How often an alias (or /latest) is checked for a new version; 0 = never.")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Server processes sharing the port, each with its own copy of the model. "
                   f"Default: one per CPU core (at most {MAX_DEFAULT_WORKERS}) on the CPU, "
                   "else 1.")
@click.pass_obj
def serve(obj: Options, model_uri, host, port, device, max_tokens_limit, request_seconds,
          max_prompt_chars, refresh_seconds, workers) -> None:
    """Serve a model: GET /v1/models, POST /v1/completions and /v1/chat/completions, with
    `"stream": true` as server-sent events. Requests take the sampling settings under the
    names `generate` uses (max_tokens, temperature, top_k, top_p, min_p, frequency_penalty,
    presence_penalty, seed), plus stop, n and logprobs. A request without a seed gets a fresh
    one; each response names it as `seed`, and sending it back replays the reply.

    \b
        tinyllm serve --port 8000 &
        curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
          -d '{"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 50, "seed": 1}'
    """
    from tinyllm.serving.workers import ServeOptions, default_workers
    from tinyllm.serving.workers import serve as run_server

    limits = Limits(max_tokens=max_tokens_limit, request_seconds=request_seconds,
                    max_prompt_chars=max_prompt_chars)
    options = ServeOptions(model_uri, host, port, obj.tracking_uri, device, limits,
                           refresh_seconds, obj.verbose)
    run_server(options, workers or default_workers(device), notify)


# --- train ------------------------------------------------------------------------------------

# --option: (the params key it sets, its help[, metavar]); type and choices come from that key's
# field. data.test_fraction follows --val-fraction (adhoc_training.adhoc_params).
TRAIN_OPTIONS = {
    "max_steps": ("train.max_steps", "Optimizer steps."),
    "batch_size": ("train.batch_size", "Sequences per step."),
    "learning_rate": ("train.learning_rate", "Peak learning rate."),
    "optimizer": ("train.optimizer",
                  "adamw, or muon: Muon for the blocks' matrices, Adam for the rest."),
    "context_length": ("model.context_length", "Characters the model sees at once."),
    "layers": ("model.n_layer", "Transformer blocks."),
    "heads": ("model.n_head", "Attention heads (must divide --width)."),
    "width": ("model.d_model", "Embedding width (d_model)."),
    "dropout": ("model.dropout", "Dropout rate."),
    "val_fraction": ("data.val_fraction",
                     "Share held out for validation, and the same again for test."),
    "seed": ("train.seed", "Seed for weights and batches."),
    "time_budget": ("train.time_budget_minutes",
                    "Train for this many minutes: the plan follows the measured pace so the "
                    "decay and a last evaluation end by then (sooner when validation stops "
                    "improving), and under --recipe auto the model, batch and learning rate fit "
                    "the budget and the device (0 = train --max-steps). Training alone: "
                    "preparing the data and the final evaluation come on top.", "MINUTES"),
    "recipe": ("train.recipe", "auto: with --time-budget, take the recipe fitted to that budget "
                               "on this device; none: use the values given."),
    "device": ("train.device", "Where training runs."),
}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def train_options(command):
    """One option per TRAIN_OPTIONS entry, typed (or given its choices) by the params field it
    sets; unset unless given, so ./params.yaml's value stands."""
    for name, (key, help, *metavar) in reversed(TRAIN_OPTIONS.items()):
        command = click.option(flag(name), name, type=option_type(params_field(key)), help=help,
                               metavar=metavar[0] if metavar else None)(command)
    return command


def train_params(data_path: str, name: str, register: bool, options: dict):
    """The options on top of ./params.yaml (adhoc_training.adhoc_params); a refused value names
    its option, then the setting's check."""
    from tinyllm.adhoc_training import adhoc_params

    given = {TRAIN_OPTIONS[o][0]: o for o, value in options.items() if value is not None}
    try:
        return adhoc_params(data_path, name, register,
                            {key: options[o] for key, o in given.items()})
    except TinyLLMError as exc:
        raise naming_the_option(exc, given) from None


def describe_training(params, name: str, output: Path, source: str, resume: bool,
                      tracking_uri: str | None) -> str:
    from tinyllm.tracking.store import choose_tracking_uri
    from tinyllm.training.plan import warmup_for

    m, t, d = params.model, params.train, params.data
    steps = (f"steps planned for {t.time_budget_minutes:g} min (recipe {t.recipe}), warm-up "
             f"at most {t.warmup_steps}" if t.time_budget_minutes else
             f"{t.max_steps} steps, warm-up {warmup_for(t.warmup_steps, t.max_steps)}")
    where = (f"MLflow {choose_tracking_uri(tracking_uri)}, registered as '{name}'"
             if params.tracking.enabled else "off (--no-register: nothing is tracked)")
    return "\n".join([
        f"training '{name}' on {d.corpus} ({'resuming' if resume else 'from scratch'})",
        f"  output:   {output}/",
        f"  model:    {m.n_layer} layers, {m.n_head} heads, width {m.d_model}, "
        f"context {m.context_length}, dropout {m.dropout:g}",
        f"  training: {steps}, batch {t.batch_size}, {t.optimizer} at learning rate "
        f"{t.learning_rate:g}, seed {t.seed}, device {t.device}",
        f"  held out: {d.val_fraction:.0%} validation, {d.test_fraction:.0%} test",
        f"  tracking: {where}",
        f"  defaults: {source}"])


@cli.command(short_help="Train a model on any text file or directory, outside DVC.")
@click.argument("data_path", metavar="DATA_PATH")
@train_options
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where data, checkpoints and the model go [default: runs/NAME].")
@click.option("--name", help="Model name [default: the data file's or directory's name].")
@click.option("--no-register", is_flag=True,
              help="Switch MLflow off for this run: nothing is tracked and no model is "
                   "registered; the model package is still written to the output directory.")
@click.option("--resume", is_flag=True,
              help="Continue from the checkpoint in the output directory. Without it an "
                   "existing checkpoint is moved aside and training starts afresh.")
@click.pass_obj
def train(obj: Options, data_path: str, output_dir: Path | None, name: str | None,
          no_register: bool, resume: bool, **options) -> None:
    """Train a model on DATA_PATH (a text file or a directory of .txt/.text/.md files).

    Ad-hoc training outside DVC: defaults come from ./params.yaml when there is one, options
    override them. The model is tracked in MLflow and registered under its name (the data
    file's name unless --name) so `tinyllm chat --model-uri models:/NAME/latest` finds it.
    """
    from tinyllm import adhoc_training, workflow
    from tinyllm.evaluation.scoring import describe_loss

    adhoc_training.check_data_path(data_path)
    if name is not None and not NAME_PATTERN.match(name):
        raise click.BadParameter("use letters, digits, '.', '_' and '-'", param_hint="--name")
    name = name or adhoc_training.model_name_for(data_path)
    output = output_dir or Path("runs") / name
    params = train_params(data_path, name, not no_register, options)
    source = "./params.yaml" if Path("params.yaml").is_file() else "built-in (no ./params.yaml)"

    from tinyllm.training.loop import TrainingInterrupted

    layout = Layout(output)
    aside = adhoc_training.set_aside_checkpoint(layout.checkpoints, resume)
    if aside:
        notify(f"starting afresh; the previous checkpoint was moved to {aside} "
               "(--resume continues from a checkpoint)")
    click.echo(describe_training(params, name, output, source, resume, obj.tracking_uri))
    try:
        metrics = workflow.build(params, layout, obj.tracking_uri)
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"{exc}; run the same command with --resume to continue",
                                  exc.exit_code - 128) from None
    test = metrics[TEST]
    uri = (f"models:/{metrics['registered']['name']}/{metrics['registered']['version']}"
           if "registered" in metrics else str(layout.model))
    click.echo(f"done: test loss {describe_loss(test)}, {test['bits_per_char']:.4f} bits/char")
    click.echo(f"model package: {layout.model}/")
    if "registered" in metrics:
        click.echo(f"registered:    {uri}")
    click.echo(f"chat with it:  tinyllm chat --model-uri {shlex.quote(uri)}")


# --- runs -------------------------------------------------------------------------------------

def _experiment_name() -> str:
    from tinyllm.config import load_params_or_defaults

    return load_params_or_defaults().tracking.experiment


@cli.command(short_help="Tracked runs by recipe: mean ± sd of the test loss over seeds.")
@click.option("--experiment", metavar="NAME",
              help="MLflow experiment [default: tracking.experiment of ./params.yaml].")
@click.option("--over", default="train.seed", show_default=True, metavar="KEY",
              help="The params key whose runs are repeats of one recipe.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.pass_obj
def runs(obj: Options, experiment: str | None, over: str, as_json: bool) -> None:
    """Group the finished runs of an experiment by recipe (every data, tokenizer, model and
    train key but --over) and show each recipe's mean ± sd of the test loss over its seeds,
    best first, then the address that draws their validation loss curves in `mlflow ui`. Run a
    recipe over seeds with `dvc exp run --queue -S 'train.seed=1,2,3'` and `dvc queue start`.
    """
    from tinyllm.tracking import sweep
    from tinyllm.tracking.runs import VAL_LOSS
    from tinyllm.tracking.store import compare_page

    experiment = experiment or _experiment_name()
    everything, store = sweep.experiment_runs(obj.tracking_uri, experiment)
    uri = store.uri
    groups = sweep.group_runs(everything, over)
    if as_json:
        click.echo(json.dumps(sweep.as_dicts(groups, over), indent=2))
        return
    if not groups:
        click.echo(f"No finished runs with a test loss in experiment '{experiment}' ({uri}).")
        return
    click.echo(f"Runs of experiment '{experiment}' in {uri}, by recipe over {over} "
               "(sd: sample standard deviation over the runs):")
    for corpus, corpus_groups in sweep.by_corpus(groups).items():
        click.echo(f"\ncorpus {corpus}:")
        print_whole(recipes_table(corpus_groups, over))
    listed = [run for group in groups for run in group.runs.values()]
    click.echo(f"\nTheir validation loss curves in mlflow ui:\n"
               f"{compare_page(store, listed, VAL_LOSS)}")


def recipes_table(groups, over: str):
    """One row a recipe (a sweep.RunGroup): what sets it apart (key=value lines), its run count,
    the values of `over` it ran with, and the mean ± sd of its test loss; cells wrap, headers
    never do."""
    from rich.table import Table

    from tinyllm.tracking import sweep

    keys = [k for k in sweep.varying_keys(groups) if k != sweep.CORPUS]
    table = Table(box=None, header_style="bold")
    if keys:
        table.add_column("recipe", overflow="fold")
    table.add_column("runs", justify="right")
    table.add_column(over, overflow="fold")
    for header in ("test loss (nats/char)", "test bits/char"):
        table.add_column(header.replace(" (", "\n("), no_wrap=True)
    for group in groups:
        differs = ["\n".join(f"{k}={group.params.get(k, '-')}" for k in keys)] if keys else []
        table.add_row(*differs, str(len(group.runs)), ", ".join(group.runs),
                      sweep.plus_minus(*group.summary(sweep.TEST_LOSS)),
                      sweep.plus_minus(*group.summary(sweep.TEST_BITS)))
    return table


def print_whole(renderable) -> None:
    """Print at the terminal's width (COLUMNS, or 80 in a pipe), widened rather than cutting
    anything when the renderable cannot fit: a cut header or value misleads."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    needed = Measurement.get(console, console.options, renderable).minimum
    console.width = max(console.width, needed)
    console.print(renderable)


# --- compare ----------------------------------------------------------------------------------

DEFAULT_TEXT = Layout().prepared_text(TEST)  # the test split `dvc repro` prepares


@cli.command(short_help="Is model B better than model A? Bits/char with a 95% interval.", help=(
    "Score models A and B on the same text, character by character, and say whether B - A "
    "(bits/char) is a real difference or noise: a 95% confidence interval from a block "
    f"bootstrap over the text. A and B are each one of {MODEL_URI_FORMS}."))
@click.argument("model_a", metavar="A")
@click.argument("model_b", metavar="B")
@click.option("--text", "text_file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Held-out text to score [default: {DEFAULT_TEXT}, the test split].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Bootstrap seed: the same seed gives the same interval.")
@click.option("--block", "block_length", type=click.IntRange(1, 10**9),
              help="Bootstrap block length in characters [default: 4 x the longer context].")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where the models run.")
@click.pass_obj
def compare(obj: Options, model_a: str, model_b: str, text_file: Path | None, seed: int,
            block_length: int | None, as_json: bool, device: str) -> None:
    from tinyllm.evaluation import compare as comparing

    source = text_file or DEFAULT_TEXT
    if not source.is_file():
        hint = "" if text_file else " (run `dvc repro` to prepare it, or pass --text FILE)"
        raise TinyLLMError(f"text file not found: {source}{hint}")
    text = source.read_text(encoding="utf-8", errors="replace")
    a, b = (load_model(uri, device, obj.tracking_uri, notify) for uri in (model_a, model_b))
    result = comparing.compare(a, b, text, str(source), seed=seed, block_length=block_length)
    if as_json:
        click.echo(json.dumps({"a": model_a, "b": model_b, "text": str(source),
                               **result.to_dict()}, indent=2))
    else:
        click.echo(comparing.describe(result, model_a, model_b, str(source)))


# --- restore ----------------------------------------------------------------------------------

@cli.command(short_help="Put a registered model back into the pipeline's models/model.")
@click.argument("model_uri", required=False, metavar="[MODEL_URI]")
@click.pass_obj
def restore(obj: Options, model_uri: str | None) -> None:
    """Write the pipeline's models/model, and models/train/mlflow_run.json for evaluate, back
    from the MLflow registry: `dvc exp run` deletes them when dvc.lock names a version the DVC
    cache lacks (a dvc.lock from git, made on another machine). MODEL_URI defaults to
    models:/NAME/latest, NAME being tracking.registry_name of params.yaml.
    """
    from tinyllm.restore import restore as restore_model
    from tinyllm.tracking.store import project_root

    restored = restore_model(model_uri, Layout(project_root()), obj.tracking_uri)
    version = f" (version {restored.version})" if restored.version else ""
    click.echo(f"restored {restored.uri}{version} to {' and '.join(map(str, restored.paths))}")


# --- models -----------------------------------------------------------------------------------

def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else "?"


@cli.command(short_help="List registered models and their versions.")
@click.argument("name", required=False)
@click.pass_obj
def models(obj: Options, name: str | None) -> None:
    """List registered models and their versions (only NAME's, if given)."""
    store, uri = open_store(obj.tracking_uri)
    empty = ("No models registered{where} yet. Run `dvc repro` (or `tinyllm train DATA`) to "
             "train and register one.")
    if store is None:
        click.echo(empty.format(where=f": no MLflow store at {uri}"))
        return
    from rich.console import Console
    from rich.table import Table

    from tinyllm.tracking.registry import version_rows

    rows = version_rows(store, name)
    if not rows:
        click.echo(empty.format(where=f" in {store.uri}"))
        return
    click.echo(f"Registered models in {store.uri}:")
    table = Table()
    for column in ("name", "version", "aliases", "test bits/char", "parameters", "created",
                   "run id"):
        table.add_column(column, no_wrap=True,
                         justify="right" if column in ("version", "parameters") else "left")
    for row in rows:
        table.add_row(row.name, row.version, ", ".join(row.aliases) or "-",
                      "-" if row.test_bits_per_char is None else f"{row.test_bits_per_char:.3f}",
                      "-" if row.parameters is None else f"{row.parameters:,}",
                      _when(row.created_ms), row.run_id or "-")
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@cli.command(short_help="Point mlflow.db at this project's mlruns/ after the project moved.")
@click.pass_obj
def rehome(obj: Options) -> None:
    """Rewrite the artifact locations the project's mlflow.db records to this project's mlruns/.

    mlflow.db records absolute paths, so after the project is copied, moved or renamed MLflow's
    own tools (mlflow ui, mlflow models serve) still read the old folder, and training refuses
    to log there. tinyllm's commands that read models find them here anyway. Run it in the
    project root; it is safe to run again.
    """
    from tinyllm.tracking.store import Store, rehome_artifacts

    store = Store(obj.tracking_uri)
    rewritten = rehome_artifacts(store)
    if not rewritten:
        click.echo(f"Nothing to do: {store.uri} keeps its artifacts in {store.home / 'mlruns'}.")
    for old, count in rewritten.items():
        click.echo(f"Rewrote {count} artifact locations in {store.uri}: {old} -> "
                   f"{store.home / 'mlruns'}")
