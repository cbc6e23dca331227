"""Muon: the Newton-Schulz iteration orthogonalises, and the groups cover every parameter once."""

from __future__ import annotations

import torch

from tinyllm.model import GPT
from tinyllm.training.muon import muon_groups, orthogonalized


def test_orthogonalized_matrices_have_singular_values_near_one():
    torch.manual_seed(0)
    columns_scaled = torch.randn(3, 16, 48) * torch.logspace(-3, 1, 48)  # condition number ~1e4
    for stack in (columns_scaled, columns_scaled.mT):  # wide and tall
        values = torch.linalg.svdvals(orthogonalized(stack))
        assert orthogonalized(stack).shape == stack.shape
        assert values.min() > 0.6 and values.max() < 1.2  # the iteration's band is ~0.7-1.15


def test_muon_takes_the_blocks_matrices_and_adam_every_other_parameter_once(gpt_config):
    model = GPT(gpt_config)
    groups = muon_groups(model, weight_decay=0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    muon = {names[id(p)] for p in groups[0]["params"]}
    assert groups[0]["muon"] and not any(g.get("muon") for g in groups[1:])
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2}
    assert muon == {n for n in matrices if n.startswith("blocks.")}
    everything = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(names.values())
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1, 0.0]
    assert all(p.dim() == 1 for p in groups[2]["params"])
