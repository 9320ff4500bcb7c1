"""After an IncrementalClassifier grows, the optimizer's parameters are in model order (per group), so that its
state_dict loads into an optimizer built afresh over the model with each parameter's own state (issue 10, item 2)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from clkernel import Naive
from clkernel_models import IncrementalClassifier


def ids(params: Any) -> list[int]:
    return [id(p) for p in params]


def test_one_group_state_round_trips_after_growth(make_benchmark):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), IncrementalClassifier(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    bench = make_benchmark(n_exp=3)
    Naive(model, optimizer, train_mb_size=8, device="cpu").train(bench.train_stream)
    clf = model[2]
    assert len(clf.weights) == 3  # grown twice: weights.0-2 then biases.0-2 in model.parameters()
    assert ids(optimizer.param_groups[0]["params"]) == ids(model.parameters())
    fresh = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fresh.load_state_dict(optimizer.state_dict())
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])


@pytest.mark.parametrize("head_group", [0, 1])
def test_two_groups_keep_their_parameters_and_round_trip_after_growth(make_benchmark, head_group):
    torch.manual_seed(0)
    backbone, clf = nn.Linear(8, 16), IncrementalClassifier(16, 2)
    model = nn.Sequential(backbone, nn.ReLU(), clf)
    groups = [{"params": list(backbone.parameters()), "lr": 0.05}, {"params": list(clf.parameters()), "lr": 0.2}]
    if head_group == 0:
        groups.reverse()
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    first_block = ids(clf.parameters())
    bench = make_benchmark(n_exp=3)
    Naive(model, optimizer, train_mb_size=8, device="cpu").train(bench.train_stream)
    new_blocks = [i for i in ids(clf.parameters()) if i not in first_block]
    assert len(new_blocks) == 4
    head_ids, backbone_ids = (set(ids(g["params"])) for g in optimizer.param_groups[::1 if head_group == 0 else -1])
    # old parameters keep their group; new ones join group 0; each group is in model order
    assert backbone_ids >= set(ids(backbone.parameters())) and head_ids >= set(first_block)
    assert set(new_blocks) <= set(ids(optimizer.param_groups[0]["params"]))
    for group in optimizer.param_groups:
        assert ids(group["params"]) == [i for i in ids(model.parameters()) if i in set(ids(group["params"]))]
    # an optimizer built afresh over the model, with the same groups in model order, gets each parameter's state
    fresh = torch.optim.SGD([{"params": [p for p in model.parameters() if id(p) in set(ids(g["params"]))],
                              "lr": g["lr"]} for g in optimizer.param_groups], lr=0.1, momentum=0.9)
    fresh.load_state_dict(optimizer.state_dict())
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]
