"""A run's step plan and its learning rate: fixed steps, or the steps a time budget holds at
the pace the run measures (re-planned when the pace drifts), warm-up and cosine decay over them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tinyllm.config import TrainConfig
from tinyllm.errors import TinyLLMError
from tinyllm.recipes import planned_weight_decay


def warmup_for(warmup_steps: int, steps: int) -> int:
    """train.warmup_steps, capped at an eighth of the run's steps under every entry point
    (docs/pipeline.md#paramsyaml), so that a short run keeps most of its steps for the decay."""
    return min(warmup_steps, steps // 8)


@dataclass(frozen=True)
class StepPlan:
    """The steps the schedule spans, kept in the run's checkpoint and summary.

    Without a time budget it is train.max_steps, fixed. With one, a short calibration on throwaway
    copies measures a step and an evaluation, and the steps that fit the budget (at most
    max_steps) become the first plan. While training, the plan's end moves (`ended_at`) when the
    measured pace says the deadline will be missed or wasted, or when validation stalls; each
    move is a segment, over which the decay's progress runs on from where it was to 1 at the new
    end. The segments are the realised schedule: lr_at replays every step's learning rate from
    them, and a resumed run continues them.
    """

    steps: int
    warmup_steps: int
    budget_sec: float = 0.0  # 0: no deadline
    step_sec: float = 0.0  # measured by the calibration (budgeted runs only)
    eval_sec: float = 0.0
    # (first step, decay progress there, last step) of each stretch of the decay; the first
    # starts after the warm-up at progress 0, each later one where its re-plan happened.
    segments: tuple[tuple[int, float, int], ...] = ()
    data_limited_at: int = 0  # the evaluation's step whose stall started the final decay
    eval_interval: int = 0  # steps between evaluations (train.eval_interval, or an epoch's)
    # train.weight_decay, or under a budget what its passes chose; None in plans from before it
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if not self.segments:  # the first plan: one stretch from the warm-up's end
            object.__setattr__(self, "segments", ((self.warmup_steps, 0.0, self.steps),))
        object.__setattr__(self, "segments", tuple(tuple(s) for s in self.segments))

    @classmethod
    def fixed(cls, cfg: TrainConfig) -> StepPlan:
        return cls(steps=cfg.max_steps, warmup_steps=warmup_for(cfg.warmup_steps, cfg.max_steps),
                   eval_interval=cfg.eval_interval, weight_decay=cfg.weight_decay)

    @classmethod
    def for_budget(cls, cfg: TrainConfig, spent_sec: float, step_sec: float,
                   eval_sec: float, epoch_steps: float = math.inf) -> StepPlan:
        """The steps that fit what is left of the budget, evaluations and the final one included.

        A budget evaluates at least once an epoch (epoch_steps: steps a pass over the training
        split takes): on a small text, overfitting starts within a few epochs, and the
        data-limited stop can only see it at an evaluation. The passes the steps make choose
        the weight decay (recipes.planned_weight_decay).
        """
        budget = cfg.time_budget_minutes * 60
        every = max(1, int(min(cfg.eval_interval, epoch_steps)))
        steps = min(cfg.max_steps, steps_that_fit(budget - spent_sec, step_sec, eval_sec, every))
        if steps < 1:
            raise TinyLLMError(
                f"train.time_budget_minutes ({cfg.time_budget_minutes:g}) is too short: one "
                f"training step and one evaluation take {step_sec + eval_sec:.1f} s here, "
                f"{spent_sec:.1f} s went on start-up; give at least "
                f"{(spent_sec + 2 * (step_sec + eval_sec)) / 60:.2f} minutes")
        return cls(steps=steps, warmup_steps=warmup_for(cfg.warmup_steps, steps),
                   budget_sec=budget, step_sec=step_sec, eval_sec=eval_sec, eval_interval=every,
                   weight_decay=planned_weight_decay(cfg, steps / epoch_steps))

    @classmethod
    def replay(cls, summary: dict) -> StepPlan:
        """A finished run's realised schedule (from its summary.json) as a fixed plan: trained
        with train.time_budget_minutes 0 it gives that run's every learning rate and weights."""
        return cls(steps=summary["steps"], warmup_steps=summary["planned_warmup_steps"],
                   segments=summary["plan_segments"],
                   data_limited_at=summary["data_limited_at_step"],
                   eval_interval=summary["eval_interval"],
                   weight_decay=summary.get("weight_decay"))  # absent before 2026-12-07

    def eval_every(self, step: int) -> int:
        """Steps between evaluations at step: eval_interval, and DECAY_EVALS_PER_INTERVAL times
        as often in a data-limited run's final decay, whose bottom comes within a few dozen steps
        on a small text and is where the run should end (RunState.past_decay_bottom)."""
        if self.data_limited_at and step > self.data_limited_at:
            return max(1, self.eval_interval // DECAY_EVALS_PER_INTERVAL)
        return self.eval_interval

    def evaluates_at(self, step: int) -> bool:
        """Whether step ends with an evaluation: on the cadence (counted from the stall in the
        final decay), and at the plan's end."""
        since = self.data_limited_at if step > self.data_limited_at else 0
        return (step - since) % self.eval_every(step) == 0 or step == self.steps

    def progress(self, step: int) -> float:
        """How far the decay has got at step: 0 after the warm-up, 1 at the plan's end."""
        first, start, last = next(s for s in reversed(self.segments) if s[0] <= step)
        return start + (1 - start) * (step - first) / max(1, last - first)

    def ended_at(self, step: int, end: int) -> StepPlan:
        """This plan with its decay running from where it is at step to its end at `end`."""
        if step <= self.warmup_steps or step >= self.steps:  # warming up, or done
            return self
        end = max(end, step + 1)
        if end == self.steps:
            return self
        kept = tuple(s for s in self.segments if s[0] < step)  # one segment a step at most
        segment = (step, min(1.0, self.progress(step)), end)
        return replace(self, steps=end, segments=(*kept, segment))


def steps_that_fit(seconds_left: float, step_sec: float, eval_sec: float,
                   eval_interval: int) -> int:
    """Steps that fit seconds_left at this pace, their evaluations and a final one included."""
    return int((seconds_left - eval_sec) / (step_sec + eval_sec / eval_interval))


def lr_at(step: int, cfg: TrainConfig, plan: StepPlan | None = None) -> float:
    """Linear warmup to the peak, then cosine decay to min_lr_fraction of it at the plan's end."""
    plan = plan or StepPlan.fixed(cfg)
    if step < plan.warmup_steps:
        return cfg.learning_rate * (step + 1) / plan.warmup_steps
    floor = cfg.learning_rate * cfg.min_lr_fraction
    return floor + 0.5 * (cfg.learning_rate - floor) * (
        1 + math.cos(math.pi * min(1.0, plan.progress(step))))


@dataclass
class Pace:
    """What a step and an evaluation cost now, from the run's own clock (budgeted runs).

    The step time is a moving average over the last few dozen steps, so a machine that slows
    down (or speeds up) after the calibration is noticed within seconds.
    """

    step_sec: float
    eval_sec: float
    SMOOTHING, SPIKE = 0.05, 3.0  # weight of each new step's time; the most it counts for

    def observe(self, seconds: float, evaluated: bool) -> None:
        """One loop iteration's wall time; an evaluation's share is what exceeds a step. A step
        counts at most SPIKE times the average: a hiccup moves the pace a little, a machine
        that stays slower moves it all the way within a few dozen steps."""
        if evaluated:
            self.eval_sec = max(seconds - self.step_sec, 0.0)
        else:
            seconds = min(seconds, self.SPIKE * self.step_sec) if self.step_sec else seconds
            self.step_sec += self.SMOOTHING * (seconds - self.step_sec)

    def replanned(self, plan: StepPlan, step: int, elapsed: float, cfg: TrainConfig) -> StepPlan:
        """plan, or plan ended where the steps that fit what is left of the budget end.

        A drift under REPLAN_TOLERANCE of what is left (or a few steps' time) is let be, so a
        steady run keeps one plan. After a data-limited stop the end only moves earlier.
        """
        if not plan.budget_sec or step <= plan.warmup_steps:
            return plan
        left = plan.budget_sec - elapsed
        every = plan.eval_every(step)
        per_step = self.step_sec + self.eval_sec / every
        planned = (plan.steps - step) * per_step + self.eval_sec
        if abs(planned - left) <= max(REPLAN_TOLERANCE * left, 3 * per_step):
            return plan
        end = step + steps_that_fit(left, self.step_sec, self.eval_sec, every)
        return plan.ended_at(step, min(end, plan.steps if plan.data_limited_at else cfg.max_steps))


# Re-plan when the plan's projected end misses the deadline by more than this share of what is
# left.
REPLAN_TOLERANCE = 0.05
# A data-limited run's final decay evaluates this many times an evaluation interval: at the
# usual cadence its bottom was passed by up to an interval (on the licenses, 0.039 above the
# best validation at the end of the decay; docs/results.md).
DECAY_EVALS_PER_INTERVAL = 4
