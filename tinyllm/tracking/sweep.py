"""Several seeds, one answer: tracked runs grouped by recipe, mean ± sd of the test loss.

A sweep such as `dvc exp run --queue -S 'train.learning_rate=1e-3,3e-3' -S 'train.seed=1,2,3'`
leaves one MLflow run per experiment, each carrying every params.yaml key. Runs that agree on
every key that shapes the model (data, tokenizer, model, train) except the swept-over one (the
seed) are one recipe; the spread of their test losses is the noise a difference between
recipes must beat.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tinyllm.corpus import TEST
from tinyllm.errors import TinyLLMError
from tinyllm.tracking.runs import eval_metric

RECIPE_SECTIONS = ("data.", "tokenizer.", "model.", "train.")
CORPUS = "data.corpus"  # recipes on different corpora are never compared: one table each
TEST_LOSS, TEST_BITS = eval_metric(TEST, "loss"), eval_metric(TEST, "bits_per_char")


@dataclass
class RunGroup:
    """The runs of one recipe: they agree on every recipe key but the swept-over one."""

    params: dict[str, str]  # every recipe key, the swept-over one excluded
    runs: dict[str, object] = field(default_factory=dict)  # swept value -> its latest run

    def values(self, metric: str) -> list[float]:
        return [run.data.metrics[metric] for run in self.runs.values()]

    def summary(self, metric: str) -> tuple[float, float | None]:
        """(mean, sample standard deviation; None for a single run)."""
        values = self.values(metric)
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def experiment_runs(tracking_uri: str | None, experiment: str) -> tuple[list, object]:
    """(every run of the experiment, its Store), through all of MLflow's result pages.
    A missing store or experiment is an error that says how to make one."""
    from tinyllm.tracking.discovery import open_store

    store, uri = open_store(tracking_uri)
    found = store.client.get_experiment_by_name(experiment) if store else None
    if found is None:
        raise TinyLLMError(f"no MLflow experiment '{experiment}' in {uri}; run `dvc repro` or "
                           "`dvc exp run` first, or pass --experiment")
    everything, token = [], None
    while True:
        page = store.client.search_runs([found.experiment_id], max_results=1000,
                                        page_token=token)
        everything.extend(page)
        token = page.token
        if not token:
            return everything, store


def group_runs(runs, over: str) -> list[RunGroup]:
    """Finished runs with a test loss, grouped by recipe, best mean test loss first. A value of
    `over` run twice in one recipe counts once: its latest run."""
    groups: dict[tuple, RunGroup] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        if run.info.status != "FINISHED" or TEST_LOSS not in run.data.metrics:
            continue
        params = {k: v for k, v in run.data.params.items()
                  if k.startswith(RECIPE_SECTIONS) and k != over}
        group = groups.setdefault(tuple(sorted(params.items())), RunGroup(params))
        group.runs[run.data.params.get(over, "?")] = run
    return sorted(groups.values(), key=lambda g: g.summary(TEST_LOSS)[0])


def by_corpus(groups: list[RunGroup]) -> dict[str, list[RunGroup]]:
    """The groups of each corpus, best first; corpora in the order of their best group."""
    corpora: dict[str, list[RunGroup]] = {}
    for group in groups:
        corpora.setdefault(group.params.get(CORPUS, "?"), []).append(group)
    return corpora


def varying_keys(groups: list[RunGroup]) -> list[str]:
    """The recipe keys whose values differ between groups: what the sweep changed."""
    keys = sorted({k for g in groups for k in g.params})
    return [k for k in keys if len({g.params.get(k) for g in groups}) > 1]


def plus_minus(mean: float, sd: float | None) -> str:
    return f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f}"


def as_dicts(groups: list[RunGroup], over: str) -> list[dict]:
    keys = varying_keys(groups)
    out = []
    for group in groups:
        loss, loss_sd = group.summary(TEST_LOSS)
        bits, bits_sd = group.summary(TEST_BITS)
        out.append({"corpus": group.params.get(CORPUS), "over": over,
                    "recipe": {k: group.params.get(k) for k in keys},
                    "values": list(group.runs), "runs": len(group.runs),
                    "run_ids": [r.info.run_id for r in group.runs.values()],
                    "test_loss_mean": loss, "test_loss_sd": loss_sd,
                    "test_bits_per_char_mean": bits, "test_bits_per_char_sd": bits_sd})
    return out
