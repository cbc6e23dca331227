"""Training: the loss really falls, resume is exact, only an interrupted run's checkpoint is
resumed (a finished run's, a foreign or a broken one is set aside)."""

from __future__ import annotations

import collections
import copy
import dataclasses
import itertools
import json
import logging
import math
import random
import time

import numpy as np
import pytest
import torch
from tiny_project import TINY_TEXT

from tinyllm.errors import TinyLLMError
from tinyllm.model import GPTConfig
from tinyllm.tokenizer import CharTokenizer
from tinyllm.training.batches import check_split_lengths, tokens_per_step
from tinyllm.training.loop import fit
from tinyllm.training.plan import DECAY_EVALS_PER_INTERVAL, StepPlan, lr_at
from tinyllm.training.state import CHECKPOINT_FILE, STALL_EVALS, load_checkpoint


class Interrupt(Exception):
    pass


def structured_corpus(lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    names = ["romeo", "juliet", "tybalt", "nurse", "friar"]
    verbs = ["loves", "fears", "greets", "follows", "mocks"]
    nouns = ["moon", "sword", "garden", "letter", "window"]
    return "".join(f"{rng.choice(names)} {rng.choice(verbs)} the {rng.choice(nouns)}.\n"
                   for _ in range(lines))


def structured_run(lines: int) -> tuple[GPTConfig, np.ndarray, np.ndarray]:
    """A small model for structured_corpus(lines), and the text's first 90% and last 10%."""
    text = structured_corpus(lines)
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    cut = int(len(ids) * 0.9)
    return (GPTConfig(tok.vocab_size, context_length=16, n_layer=2, n_head=2, d_model=32),
            ids[:cut], ids[cut:])


def unigram_entropy_nats(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log(c / n) for c in collections.Counter(text).values())


@pytest.fixture
def splits(tokens):
    cut = int(len(tokens) * 0.8)
    return tokens[:cut], tokens[cut:]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls_well_below_unigram_entropy(train_config, optimizer):
    config, train, val = structured_run(lines=400)
    cfg = dataclasses.replace(train_config, max_steps=50, batch_size=64, learning_rate=2e-2,
                              warmup_steps=10, eval_interval=25, optimizer=optimizer)
    result = fit(config, cfg, train, val)
    # 2.9 nats; runs under seeds 0-5 end at 0.23-0.27 x it
    entropy = unigram_entropy_nats(structured_corpus(lines=400))
    assert result.best_val_loss < 0.5 * entropy
    assert result.steps == 50 and result.stopped_by == "max_steps"
    assert result.tokens_seen == 50 * tokens_per_step(cfg, config.context_length) == (
        50 * 64 * config.context_length)
    assert result.history[0]["train_loss"] > entropy  # it started above the unigram level


def _train_interrupted(gpt_config, cfg, splits, checkpoint_dir, at_step, **fit_options):
    def interrupt(metrics):
        if metrics.step == at_step:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(gpt_config, cfg, *splits, checkpoint_dir=checkpoint_dir, callbacks=[interrupt],
            **fit_options)


@pytest.mark.parametrize("dropout, optimizer", [(0.0, "adamw"), (0.2, "adamw"), (0.0, "muon")])
def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path, gpt_config, train_config,
                                                       splits, dropout, optimizer):
    gpt_config = dataclasses.replace(gpt_config, dropout=dropout)
    cfg = dataclasses.replace(train_config, max_steps=12, checkpoint_interval=4, eval_interval=4,
                              optimizer=optimizer)
    straight = fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path / "a")

    # Interrupt at step 9, after the checkpoint of step 8 was written; step 9 is redone.
    _train_interrupted(gpt_config, cfg, splits, tmp_path / "b", at_step=9)
    assert torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)["step"] == 8
    resumed = fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path / "b")

    assert resumed.resumed_from == 8 and resumed.steps == 12
    assert resumed.best_val_loss == straight.best_val_loss
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert [h["train_loss"] for h in straight.history] == [
        h["train_loss"] for h in resumed.history]
    assert not any((tmp_path / run / CHECKPOINT_FILE).exists() for run in "ab")  # both ended


def test_a_finished_run_leaves_no_checkpoint_and_training_it_again_starts_at_step_0(
        tmp_path, gpt_config, train_config, splits, caplog):
    """`dvc repro -f` retrains: checkpoints resume an interrupted run and nothing else, also a
    finished run's that an older tinyllm (or a kill just before its removal) left."""
    cfg = dataclasses.replace(train_config, max_steps=4, warmup_steps=1, checkpoint_interval=2)
    _train_interrupted(gpt_config, cfg, splits, tmp_path, at_step=3)  # checkpoint of step 2
    assert fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path).resumed_from == 2
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    assert fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path).resumed_from == 0

    _train_interrupted(gpt_config, cfg, splits, tmp_path, at_step=3)
    finished = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    torch.save({**finished, "step": 4}, tmp_path / CHECKPOINT_FILE)  # at its plan's end
    with caplog.at_level(logging.WARNING, logger="tinyllm.training"):
        result = fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path)
    assert result.resumed_from == 0 and result.steps == 4
    assert any("its run finished (step 4 of 4)" in r.getMessage() for r in caplog.records)
    assert len(list(tmp_path.glob("*set-aside*"))) == 1


def test_a_checkpoint_keeps_the_tracking_run_it_logs_into_and_an_older_one_still_resumes(
        tmp_path, gpt_config, train_config, splits):
    from tinyllm.training.state import checkpoint_run_id, run_fingerprint

    cfg = dataclasses.replace(train_config, max_steps=4, warmup_steps=1, checkpoint_interval=2)
    fingerprint = run_fingerprint(gpt_config, cfg, "")
    _train_interrupted(gpt_config, cfg, splits, tmp_path, at_step=3, run_id="run-1")
    assert checkpoint_run_id(tmp_path / CHECKPOINT_FILE, fingerprint) == "run-1"
    assert checkpoint_run_id(tmp_path / CHECKPOINT_FILE, "other params") is None
    assert (tmp_path / CHECKPOINT_FILE).exists()  # only looked at, never set aside
    older = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    del older["run_id"]  # written before checkpoints kept it: resumed, into a new run
    torch.save(older, tmp_path / CHECKPOINT_FILE)
    assert checkpoint_run_id(tmp_path / CHECKPOINT_FILE, fingerprint) is None
    assert fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path).resumed_from == 2


def test_checkpoint_from_other_params_is_set_aside(tmp_path, gpt_config, train_config, splits,
                                                   caplog):
    cfg = dataclasses.replace(train_config, max_steps=4, warmup_steps=1, checkpoint_interval=2)
    _train_interrupted(gpt_config, cfg, splits, tmp_path, at_step=3)
    other = dataclasses.replace(cfg, learning_rate=1e-3)
    with caplog.at_level(logging.WARNING, logger="tinyllm.training"):
        result = fit(gpt_config, other, *splits, checkpoint_dir=tmp_path)
    assert result.resumed_from == 0 and result.steps == 4
    assert len(list(tmp_path.glob("*set-aside*"))) == 1
    assert any("other params" in r.getMessage() for r in caplog.records)


def test_checkpoint_under_other_speed_settings_is_resumed(tmp_path, gpt_config, train_config,
                                                         splits):
    cfg = dataclasses.replace(train_config, max_steps=4, warmup_steps=1, checkpoint_interval=2)
    _train_interrupted(gpt_config, cfg, splits, tmp_path, at_step=3)  # checkpoint of step 2
    faster = dataclasses.replace(cfg, checkpoint_interval=1, threads=1)
    result = fit(gpt_config, faster, *splits, checkpoint_dir=tmp_path)
    assert result.resumed_from == 2
    assert not list(tmp_path.glob("*set-aside*"))


def test_corrupted_checkpoint_is_set_aside(tmp_path, gpt_config, train_config, splits, caplog):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"this is not a torch checkpoint")
    cfg = dataclasses.replace(train_config, max_steps=2, warmup_steps=1)
    with caplog.at_level(logging.WARNING, logger="tinyllm.training"):
        result = fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path)
    assert result.resumed_from == 0 and result.steps == 2
    [aside] = tmp_path.glob("*set-aside*")
    assert aside.read_bytes() == b"this is not a torch checkpoint"
    assert any("cannot be read" in r.getMessage() for r in caplog.records)


def test_only_the_three_most_recently_set_aside_checkpoints_are_kept(tmp_path):
    checkpoint = tmp_path / CHECKPOINT_FILE
    for i in range(5):  # five fresh starts over unreadable checkpoints, within a second or two
        checkpoint.write_text(f"checkpoint {i}")
        assert load_checkpoint(checkpoint, "fingerprint") is None
    kept = sorted(p.read_text() for p in tmp_path.glob("last.set-aside-*.pt"))
    assert kept == ["checkpoint 2", "checkpoint 3", "checkpoint 4"]
    assert not checkpoint.exists()


def test_lr_warmup_and_cosine_endpoints(train_config):
    cfg = dataclasses.replace(train_config, learning_rate=1e-2, warmup_steps=10, max_steps=110,
                              min_lr_fraction=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-3)
    assert lr_at(4, cfg) == pytest.approx(5e-3)
    assert lr_at(9, cfg) == pytest.approx(1e-2)
    assert lr_at(10, cfg) == pytest.approx(1e-2)
    assert lr_at(60, cfg) == pytest.approx(0.5 * (1e-2 + 1e-3))
    assert lr_at(110, cfg) == pytest.approx(1e-3)
    steps = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(steps))


def test_lr_without_warmup_starts_at_peak(train_config):
    cfg = dataclasses.replace(train_config, learning_rate=1e-2, warmup_steps=0)
    assert lr_at(0, cfg) == pytest.approx(1e-2)


def test_split_shorter_than_context_is_rejected(tokens):
    check_split_lengths(16, train=tokens, val=tokens[:18])
    with pytest.raises(TinyLLMError, match="val split has 17 tokens"):
        check_split_lengths(16, train=tokens, val=tokens[:17])


def test_train_rejects_a_short_val_split(gpt_config, train_config, tokens):
    with pytest.raises(TinyLLMError, match="val split"):
        fit(gpt_config, train_config, tokens, tokens[:10])


def test_a_budget_plan_lays_warmup_and_decay_over_its_steps(train_config):
    cfg = dataclasses.replace(train_config, learning_rate=1e-2, warmup_steps=100, max_steps=10**6,
                              min_lr_fraction=0.1, eval_interval=100, time_budget_minutes=1.0)
    # 60 s budget, 10 s spent, 1 s an evaluation: 49 s for steps of 0.09 s + 0.01 s of evals.
    plan = StepPlan.for_budget(cfg, spent_sec=10.0, step_sec=0.09, eval_sec=1.0)
    assert plan.steps == 490 and plan.warmup_steps == 61  # warm-up: at most an eighth of it
    assert lr_at(60, cfg, plan) == pytest.approx(1e-2)
    assert lr_at(490, cfg, plan) == pytest.approx(1e-3)  # the floor, at the deadline
    assert lr_at(489, cfg, plan) > lr_at(490, cfg, plan)
    assert plan.eval_interval == 100 == StepPlan.fixed(cfg).eval_interval
    # A small text: an evaluation at least once an epoch, and the plan counts their cost.
    small = StepPlan.for_budget(cfg, spent_sec=10.0, step_sec=0.09, eval_sec=1.0,
                                epoch_steps=40.5)
    assert small.eval_interval == 40 and small.steps == int(49 / (0.09 + 1.0 / 40))
    capped = StepPlan.for_budget(dataclasses.replace(cfg, max_steps=300), 10.0, 0.09, 1.0)
    assert capped.steps == 300  # max_steps still bounds a budget


def test_fixed_and_budgeted_plans_follow_one_warm_up_rule(train_config):
    """The defaults' 100 of 900 steps and a budget's thousands keep 100; 100 steps take 12."""
    cfg = dataclasses.replace(train_config, warmup_steps=100, max_steps=900, eval_interval=300,
                              time_budget_minutes=1.0)
    assert StepPlan.fixed(cfg).warmup_steps == 100
    assert StepPlan.fixed(dataclasses.replace(cfg, max_steps=100)).warmup_steps == 12
    budgeted = StepPlan.for_budget(dataclasses.replace(cfg, max_steps=10**6), 5.0, 0.03, 1.0)
    assert budgeted.steps > 1000 and budgeted.warmup_steps == 100
    short = StepPlan.for_budget(cfg, spent_sec=0.0, step_sec=0.5, eval_sec=1.0)
    assert short.steps == 117 and short.warmup_steps == 14


def test_a_budget_below_a_step_and_an_evaluation_is_refused(train_config):
    cfg = dataclasses.replace(train_config, time_budget_minutes=0.02)  # 1.2 s
    with pytest.raises(TinyLLMError, match=r"^train.time_budget_minutes \(0.02\) is too short"):
        StepPlan.for_budget(cfg, spent_sec=0.5, step_sec=0.2, eval_sec=0.6)


def test_a_budgeted_run_ends_with_an_evaluation_and_keeps_the_best_of_all(
        tmp_path, gpt_config, train_config, splits):
    cfg = dataclasses.replace(train_config, max_steps=10**6, eval_interval=7, warmup_steps=2,
                              time_budget_minutes=0.1)

    def slower_than_calibrated(metrics):  # the machine slows down after the calibration
        time.sleep(0.2)

    result = fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path,
                 callbacks=[slower_than_calibrated])
    assert result.plan.budget_sec == 6.0 and len(result.plan.segments) > 1  # re-planned
    assert result.stopped_by in ("time_budget", "planned_steps")
    assert result.elapsed_sec <= 6.0 + 1.0
    last = result.history[-1]
    assert last["step"] == result.steps and last["val_loss"] is not None  # evaluated at the stop
    evaluated = {h["step"]: h["val_loss"] for h in result.history if h["val_loss"] is not None}
    assert len(evaluated) >= 2
    assert result.best_val_loss == min(evaluated.values())
    assert result.best_step == min(evaluated, key=evaluated.get)
    assert not (tmp_path / CHECKPOINT_FILE).exists()  # the run ended: nothing to resume


def test_a_budget_plan_counts_what_callbacks_do_at_each_evaluation(
        gpt_config, train_config, splits):
    """Sampling at each evaluation (TrainingSamples) takes time the plan must leave room for."""
    cfg = dataclasses.replace(train_config, max_steps=10**6, eval_interval=10, warmup_steps=2,
                              time_budget_minutes=0.05)  # 3 s

    class SlowAtEvaluations:
        rehearsed = 0

        def rehearse(self, model):
            self.rehearsed += 1
            time.sleep(0.4)

        def __call__(self, metrics):
            if metrics.val_loss is not None:
                time.sleep(0.4)

    callback = SlowAtEvaluations()
    result = fit(gpt_config, cfg, *splits, callbacks=[callback])
    assert callback.rehearsed == 1 and result.plan.eval_sec >= 0.4
    # 0.4 s every 10 steps: at most 3 s / 0.04 s of them fit, whatever a step costs.
    assert result.plan.steps <= 75


def test_a_budgeted_run_resumes_its_recorded_plan_with_the_uninterrupted_weights(
        tmp_path, gpt_config, train_config, splits):
    # max_steps caps the plan, so a slow moment cannot cut this run short at its deadline.
    cfg = dataclasses.replace(train_config, max_steps=12, checkpoint_interval=4, eval_interval=5,
                              warmup_steps=10, time_budget_minutes=30.0)
    _train_interrupted(gpt_config, cfg, splits, tmp_path / "budget", at_step=9)
    recorded = torch.load(tmp_path / "budget" / CHECKPOINT_FILE, weights_only=True)
    assert recorded["plan"]["steps"] == 12 and recorded["plan"]["warmup_steps"] == 1
    resumed = fit(gpt_config, cfg, *splits, checkpoint_dir=tmp_path / "budget")
    assert resumed.resumed_from == 8 and resumed.steps == 12
    assert resumed.stopped_by == "planned_steps"
    assert resumed.elapsed_sec > recorded["train_seconds"]  # the budget spent before counts
    # The same schedule without a budget: calibration left no trace in the run.
    fixed = dataclasses.replace(cfg, time_budget_minutes=0.0, warmup_steps=1)
    straight = fit(gpt_config, fixed, *splits, checkpoint_dir=tmp_path / "fixed")
    assert resumed.best_step == straight.best_step
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_compiled_budgeted_run_compiles_in_its_calibration(gpt_config, train_config, splits):
    """The compiling is timed and counted with the calibration, not in the planned steps."""
    from torch._dynamo.utils import counters

    cfg = dataclasses.replace(train_config, compile=True, max_steps=6, eval_interval=3,
                              time_budget_minutes=30.0)
    graphs = []

    class CountGraphs:
        def on_start(self, history, model):
            graphs.append(counters["stats"]["unique_graphs"])

        def __call__(self, metrics):
            graphs.append(counters["stats"]["unique_graphs"])

    result = fit(gpt_config, cfg, *splits, callbacks=[CountGraphs()])
    assert result.steps == 6 and result.stopped_by == "planned_steps"
    assert graphs[0] > 0  # the calibration compiled ...
    assert set(graphs) == {graphs[0]}  # ... and the run's steps reused what it compiled


def test_a_budget_follows_a_machine_that_slows_down_after_the_calibration(train_config):
    """Twice as slow from the first step on: the plan shrinks so that the decay still reaches
    its floor and the final evaluation still happens by the deadline. The text is more than
    the run can see in its 6 seconds, so no data-limited stop cuts the decay short."""
    gpt_config, train, val = structured_run(lines=4000)
    cfg = dataclasses.replace(train_config, max_steps=10**6, eval_interval=50, warmup_steps=5,
                              learning_rate=3e-4, time_budget_minutes=0.1)
    step_tokens = tokens_per_step(cfg, gpt_config.context_length)

    def twice_as_slow(metrics):  # sleeps as long as the step took
        time.sleep(step_tokens / metrics.tokens_per_sec)

    result = fit(gpt_config, cfg, train, val, callbacks=[twice_as_slow])
    assert result.stopped_by in ("planned_steps", "time_budget")  # the clock's, not the data's
    first, *replans = result.plan.segments
    assert replans and result.steps < first[2]  # fewer steps than calibrated for
    floor = cfg.learning_rate * cfg.min_lr_fraction
    assert result.history[-1]["lr"] <= 1.1 * floor  # the decay landed
    assert result.history[-1]["val_loss"] is not None  # evaluated at the stop
    assert result.elapsed_sec <= 6.0 * 1.1
    assert [lr_at(h["step"] - 1, cfg, result.plan) for h in result.history] == [
        h["lr"] for h in result.history]  # the recorded plan replays every step's rate


class StepClock:
    """A clock that advances one second a training step (a callback too): budgeted runs made
    deterministic, as a machine of exactly that pace would run them."""

    now = 0.0

    def __call__(self, metrics=None) -> float:
        self.now += metrics is not None
        return self.now


def test_a_budgeted_run_whose_validation_stalls_decays_now_and_stops_early(
        gpt_config, train_config, tokenizer, tokens):
    """Data-limited: the validation text shares nothing with the training text but characters,
    so validation soon gets worse; the run brings its decay forward instead of spending the
    rest of the budget overfitting, and says how much of the budget it left."""
    rng = random.Random(0)
    val = tokenizer.encode("".join(rng.sample(TINY_TEXT, len(TINY_TEXT))))
    cfg = dataclasses.replace(train_config, max_steps=10**6, eval_interval=20, warmup_steps=5,
                              learning_rate=1e-2, time_budget_minutes=10.0)
    plan = StepPlan.for_budget(cfg, spent_sec=0.0, step_sec=1.0, eval_sec=0.0)
    clock = StepClock()

    class WeightsAtEvaluations:
        def on_start(self, history, model):
            self.model, self.weights = model, {}

        def __call__(self, metrics):
            if metrics.val_loss is not None:
                self.weights[metrics.step] = copy.deepcopy(self.model.state_dict())

    seen = WeightsAtEvaluations()
    result = fit(gpt_config, cfg, tokens, val, plan=plan, clock=clock, callbacks=[clock, seen])
    assert result.stopped_by == "data_limited" and result.plan.data_limited_at
    assert result.steps == result.plan.steps < plan.steps // 4  # most of the budget saved
    evaluated = {h["step"]: h["val_loss"] for h in result.history if h["val_loss"] is not None}
    stall = result.plan.data_limited_at
    best_before = min(v for step, v in evaluated.items() if step < stall)
    # STALL_EVALS evaluations in a row no better than the best: one could be a wobble.
    best_step = stall - STALL_EVALS * cfg.eval_interval
    assert evaluated[best_step] == best_before
    assert all(evaluated[best_step + i * cfg.eval_interval] > best_before
               for i in range(1, STALL_EVALS + 1))
    # The decay starts from the best weights (and their optimizer state), not the overfit ones.
    best_weights = seen.weights[best_step]
    assert all(torch.equal(best_weights[k], v) for k, v in seen.weights[stall].items())
    assert result.history[-1]["lr"] <= 1.1 * cfg.learning_rate * cfg.min_lr_fraction
    assert result.best_val_loss == min(evaluated.values())
    # Replayed from its summary as fixed steps, rewind included, it ends with the same weights.
    from tinyllm.training.outputs import summary_of

    summary = json.loads(json.dumps(summary_of(result, "")))
    fixed = dataclasses.replace(cfg, time_budget_minutes=0.0, max_steps=summary["steps"])
    replayed = fit(gpt_config, fixed, tokens, val, plan=StepPlan.replay(summary))
    assert all(torch.equal(result.model.state_dict()[k], v)
               for k, v in replayed.model.state_dict().items())
    # A fixed-step run never stops for its data: the default pipeline trains max_steps.
    fixed = dataclasses.replace(cfg, time_budget_minutes=0.0, max_steps=result.steps + 40)
    assert fit(gpt_config, fixed, tokens, val).stopped_by == "max_steps"


def test_a_final_decay_that_passes_its_bottom_ends_the_run_with_the_best_weights(
        train_config):
    """A text the model soon learns all of: validation plateaus, the run decays, and the decay
    (evaluated four times as often) finds a new best and then STALL_EVALS evaluations no better:
    the run ends there instead of overfitting to the decay's end, keeping that best."""
    gpt_config, train, val = structured_run(lines=1000)
    cfg = dataclasses.replace(train_config, max_steps=10**6, batch_size=8, eval_interval=40,
                              warmup_steps=5, learning_rate=1e-2, checkpoint_interval=10**6,
                              time_budget_minutes=10.0)
    clock = StepClock()
    result = fit(gpt_config, cfg, train, val, clock=clock, callbacks=[clock],
                 plan=StepPlan.for_budget(cfg, spent_sec=0.0, step_sec=1.0, eval_sec=0.0))
    stall, decay_end = result.plan.data_limited_at, result.plan.segments[-1][2]
    assert result.stopped_by == "data_limited" and stall < result.steps < decay_end
    in_decay = [(h["step"], h["val_loss"]) for h in result.history
                if h["val_loss"] is not None and h["step"] > stall]
    every = cfg.eval_interval // DECAY_EVALS_PER_INTERVAL
    assert [step for step, _ in in_decay] == list(range(stall + every, result.steps + 1, every))
    assert stall < result.best_step == min(in_decay, key=lambda e: e[1])[0]
    assert [step for step, _ in in_decay[-STALL_EVALS:]] == [
        result.best_step + every * i for i in range(1, STALL_EVALS + 1)]  # ended at once
    assert all(loss > result.best_val_loss for _, loss in in_decay[-STALL_EVALS:])
    # The replay (no budget, so no stop of its own) ends at the recorded step with the same best.
    from tinyllm.training.outputs import summary_of

    summary = json.loads(json.dumps(summary_of(result, "")))
    fixed = dataclasses.replace(cfg, time_budget_minutes=0.0, max_steps=summary["steps"])
    replayed = fit(gpt_config, fixed, train, val, plan=StepPlan.replay(summary))
    assert replayed.steps == result.steps and replayed.best_step == result.best_step
    assert all(torch.equal(result.model.state_dict()[k], v)
               for k, v in replayed.model.state_dict().items())


def test_a_slowdown_past_the_deadline_keeps_the_best_weights_without_a_last_evaluation(
        gpt_config, train_config, splits):
    """Bad input: a step that takes longer than all that is left ends the run at once."""
    cfg = dataclasses.replace(train_config, max_steps=10**6, eval_interval=10, warmup_steps=2,
                              time_budget_minutes=1.0)
    plan = StepPlan.for_budget(cfg, spent_sec=0.0, step_sec=1.0, eval_sec=0.0)
    clock = StepClock()

    def stalls_at_step_25(metrics):  # the machine stops for a minute
        clock.now += 60 * (metrics.step == 25)

    result = fit(gpt_config, cfg, *splits, plan=plan, clock=clock,
                 callbacks=[clock, stalls_at_step_25])
    assert result.stopped_by == "deadline" and result.steps == 26
    assert result.history[-1]["val_loss"] is None  # no time was left to evaluate
    assert result.best_step == 20  # the last evaluation's weights stand


def test_a_replanned_run_replays_exactly_from_its_summary_as_fixed_steps(
        gpt_config, train_config, splits):
    """The pace moves the plan twice as slow from step 30 on; the summary's realised plan,
    trained without a budget, gives the same rates, evaluations and weights."""
    from tinyllm.training.outputs import summary_of

    cfg = dataclasses.replace(train_config, max_steps=10**6, eval_interval=10, warmup_steps=5,
                              time_budget_minutes=2.0)
    clock = StepClock()

    def slower_from_step_30(metrics):
        clock.now += metrics.step >= 30

    result = fit(gpt_config, cfg, *splits, plan=StepPlan.for_budget(cfg, 0.0, 1.0, 0.0),
                 clock=clock, callbacks=[clock, slower_from_step_30])
    summary = json.loads(json.dumps(summary_of(result, "")))  # as summary.json holds it
    assert summary["replans"] >= 1 and summary["steps"] < summary["first_planned_steps"]
    fixed = dataclasses.replace(cfg, time_budget_minutes=0.0, max_steps=summary["steps"])
    replayed = fit(gpt_config, fixed, *splits, plan=StepPlan.replay(summary))
    assert [h["lr"] for h in replayed.history] == [h["lr"] for h in result.history]
    assert replayed.best_step == result.best_step
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, replayed.model.state_dict()[name]), name


def test_a_budget_of_many_passes_trains_under_the_weight_decay_they_choose(
        gpt_config, train_config, splits):
    """A plan of many passes over a small text decays the weights harder
    (recipes.WEIGHT_DECAY_BY_PASSES); the run trains under the plan's decay, not
    train.weight_decay's, and its summary replays it."""
    from tinyllm.recipes import WEIGHT_DECAY_BY_PASSES
    from tinyllm.training.outputs import summary_of

    cfg = dataclasses.replace(train_config, max_steps=10**6, eval_interval=10, warmup_steps=5,
                              time_budget_minutes=0.5)
    most = max(WEIGHT_DECAY_BY_PASSES)
    plan = StepPlan.for_budget(cfg, 0.0, 1.0, 0.0, epoch_steps=30 / (most + 1))
    plan = dataclasses.replace(plan, eval_interval=10)  # not an evaluation a step: quicker
    assert plan.weight_decay == WEIGHT_DECAY_BY_PASSES[most] != cfg.weight_decay
    assert StepPlan.for_budget(cfg, 0.0, 1.0, 0.0).weight_decay == cfg.weight_decay  # a pass
    own = dataclasses.replace(cfg, weight_decay=0.3)  # the user's own value is kept
    assert StepPlan.for_budget(own, 0.0, 1.0, 0.0, epoch_steps=1.0).weight_decay == 0.3
    as_given = dataclasses.replace(cfg, recipe="none")
    assert StepPlan.for_budget(as_given, 0.0, 1.0, 0.0, epoch_steps=1.0).weight_decay == 0.1
    clock = StepClock()
    result = fit(gpt_config, cfg, *splits, plan=plan, clock=clock, callbacks=[clock])
    summary = json.loads(json.dumps(summary_of(result, "")))
    assert summary["weight_decay"] == plan.weight_decay
    fixed = dataclasses.replace(cfg, time_budget_minutes=0.0, max_steps=summary["steps"])
    replayed = fit(gpt_config, fixed, *splits, plan=StepPlan.replay(summary))
    as_configured = fit(gpt_config, fixed, *splits, plan=dataclasses.replace(
        StepPlan.replay(summary), weight_decay=None))  # a plan from before: train.weight_decay
    weights = result.model.state_dict()
    assert all(torch.equal(t, replayed.model.state_dict()[n]) for n, t in weights.items())
    assert not torch.equal(weights["tok_emb.weight"],
                           as_configured.model.state_dict()["tok_emb.weight"])


def test_the_pace_shrugs_off_a_hiccup_but_follows_a_machine_that_stays_slower():
    from tinyllm.training.plan import Pace

    pace = Pace(step_sec=0.1, eval_sec=1.0)
    pace.observe(10.0, evaluated=False)  # one step that took a hundred times as long
    assert pace.step_sec == pytest.approx(0.11)
    for _ in range(100):
        pace.observe(0.2, evaluated=False)
    assert pace.step_sec == pytest.approx(0.2, rel=0.01)
    pace.observe(0.2 + 3.0, evaluated=True)  # an evaluation: what exceeds a step
    assert pace.eval_sec == pytest.approx(3.0, rel=0.01) and pace.step_sec == pytest.approx(
        0.2, rel=0.01)
