"""Cumulative and Joint training."""

from __future__ import annotations

import pytest
import torch

from clkernel import Experience, PluginError, Strategy
from clkernel_replay import Cumulative, Joint


def strategy(blobs, plugins, num_classes=6, model=None):
    model = model or blobs.make_model(num_classes=num_classes)
    return Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins, train_mb_size=16,
                    train_epochs=2, device="cpu", generator=torch.Generator().manual_seed(0))


def test_cumulative_trains_on_everything_seen_so_far(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    probe = blobs.Probe()
    cumulative = Cumulative()
    s = strategy(blobs, [cumulative, probe])
    for exp in bench.train_stream:
        s.train(exp)
    assert probe.dataset_sizes == [120, 240, 360]
    assert probe.iterations == [2 * 8, 2 * 15, 2 * 23]
    assert set(torch.cat([y for e, y in probe.mbs if e == 2]).tolist()) == set(range(6))
    assert len(cumulative.dataset) == 360


def test_cumulative_checkpoint_finds_the_experiences_again(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    first = Cumulative()
    s = strategy(blobs, [first])
    s.train(bench.train_stream[0])
    s.train(bench.train_stream[1])
    again = Cumulative()
    again.load_state_dict(first.state_dict())
    probe = blobs.Probe()
    strategy(blobs, [again, probe]).train(bench.train_stream[2])
    assert probe.dataset_sizes == [360]


def test_joint_trains_once_on_the_whole_stream_and_skips_the_rest(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    probe = blobs.Probe()
    s = strategy(blobs, [Joint(), probe])
    for exp in bench.train_stream:
        s.train(exp)
    assert probe.dataset_sizes[0] == 360
    assert probe.iterations == [2 * 23, 0, 0]
    assert set(torch.cat([y for e, y in probe.mbs]).tolist()) == set(range(6))
    acc = blobs.accuracy(s.state.model, bench.test_stream)
    assert min(acc) > 0.9  # the upper bound: no forgetting


def test_joint_needs_a_stream(blobs):
    data = blobs.make_blobs()
    with pytest.raises(PluginError, match="belongs to no stream"):
        strategy(blobs, [Joint()]).train(Experience(0, data))


def test_joint_adapts_dynamic_modules_to_every_class_of_the_stream(blobs):
    class GrowingHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 1)

        def adaptation(self, experience):
            n = max(experience.classes) + 1
            if n > self.fc.out_features:
                self.fc = torch.nn.Linear(8, n)

        def forward(self, x):
            return self.fc(x)

    bench = blobs.make_benchmark(num_exps=3)
    model = GrowingHead()
    strategy(blobs, [Joint()], model=model).train(bench.train_stream[0])
    assert model.fc.out_features == 6


