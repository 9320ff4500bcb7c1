"""GDumb: greedy class-balanced buffer, model retrained from its initial state on the buffer only."""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel import Strategy
from clkernel_replay import GDumb, reinitialize


def train(blobs, plugins, bench, model, optimizer):
    strategy = Strategy(model, optimizer, plugins=plugins, train_mb_size=16, train_epochs=2, device="cpu",
                        generator=torch.Generator().manual_seed(0))
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy


def test_model_is_reinitialised_at_each_experience(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    model = blobs.make_model(num_classes=6)
    initial = [p.detach().clone() for p in model.parameters()]
    probe = blobs.Probe()
    train(blobs, [GDumb(mem_size=30, seed=0), probe], bench, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert len(probe.start_params) == 3
    for start, end in zip(probe.start_params, probe.end_params):
        assert all(torch.equal(p, q) for p, q in zip(start, initial))  # every experience starts from scratch
        assert not all(torch.equal(p, q) for p, q in zip(end, initial))  # and training moved it


def test_trains_on_the_class_balanced_buffer_only(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    model = blobs.make_model(num_classes=6)
    probe = blobs.Probe()
    gdumb = GDumb(mem_size=30, seed=0)
    train(blobs, [gdumb, probe], bench, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert probe.dataset_sizes == [30, 30, 30]
    assert gdumb.storage_policy.group_sizes() == {c: 5 for c in range(6)}
    last = torch.cat([y for e, y in probe.mbs if e == 2])
    assert set(last.tolist()) == set(range(6))  # the last experience also sees the old classes, from the buffer


def test_optimizer_state_is_cleared_with_the_parameters(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    model = blobs.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen = []

    class Momentum:
        name = "momentum"

        @clkernel.hookimpl
        def before_training_epoch(self, state):
            if state.epoch == 0:
                seen.append(len(state.optimizer.state))

    train(blobs, [GDumb(mem_size=20, seed=0), Momentum()], bench, model, optimizer)
    assert seen == [0, 0]  # momentum buffers from the previous experience are gone


def test_reinitialize_resets_modules_that_grew():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1] = torch.nn.Linear(4, 5)  # a grown head
    grown = model[1].weight.detach().clone()
    reinitialize(model, initial)
    assert torch.equal(model[0].weight, initial["0.weight"])
    assert model[1].weight.shape == (5, 4) and not torch.equal(model[1].weight, grown)

    class Custom(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(n))

    with pytest.raises(ValueError, match="no reset_parameters"):
        reinitialize(Custom(3), Custom(2).state_dict())


def test_bad_mem_size_names_the_option():
    with pytest.raises(ValueError, match="gdumb: mem_size must be a positive integer, got -1"):
        GDumb(mem_size=-1)
