"""RAR: the shift by hand, repetition of each minibatch with fresh replay and augmentation, options, split-digits."""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel import Strategy
from clkernel_rar import RAR, RepeatedLoader, random_shift, shift_images


def test_shift_by_hand():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    same = shift_images(x, torch.tensor([1]), torch.tensor([1]), max_shift=1)
    assert torch.equal(same, x)
    # corner (0, 0) of the edge-padded image: the image moves one pixel down and right, edges repeated
    down_right = shift_images(x, torch.tensor([0]), torch.tensor([0]), max_shift=1)
    assert down_right[0, 0].tolist() == [[0, 0, 1], [0, 0, 1], [3, 3, 4]]
    up = shift_images(x, torch.tensor([2]), torch.tensor([1]), max_shift=1)
    assert up[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [6, 7, 8]]


def test_random_shift_draws_per_image_and_keeps_values():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 3, 1, 1)
    out = random_shift(x, 1, g, flip=True)
    assert out.shape == x.shape
    assert len({tuple(o.flatten().tolist()) for o in out}) > 5  # images get different shifts / flips
    assert set(out.unique().tolist()) <= set(x.unique().tolist())
    assert torch.equal(out[:, 0], out[:, 1])  # one shift per image, the same for all its channels
    with pytest.raises(ValueError, match=r"images of shape \(B, C, H, W\)"):
        random_shift(torch.zeros(4, 8), 1, g)


def test_random_shift_on_several_processes_augments_each_rank_with_its_share_of_the_global_draws():
    # Rank r holds images r, r + 3, r + 6, ... of a global minibatch on 3 ranks: each rank, from the same generator
    # state, augments them exactly as one process augments the whole global minibatch, and ends in the same state.
    x = torch.arange(9 * 16.0).reshape(9, 1, 4, 4)
    whole = random_shift(x, 1, torch.Generator().manual_seed(0), flip=True)
    ends = set()
    for rank in range(3):
        g = torch.Generator().manual_seed(0)
        assert torch.equal(random_shift(x[rank::3], 1, g, flip=True, rank=rank, world_size=3), whole[rank::3])
        ends.add(tuple(g.get_state().tolist()))
    assert len(ends) == 1


def test_repeated_loader():
    loader = RepeatedLoader([1, 2], 3)
    assert list(loader) == [1, 1, 1, 2, 2, 2] and len(loader) == 6


class _Recorder:
    name = "recorder"

    def __init__(self):
        self.inputs, self.labels = [], []

    @clkernel.hookimpl
    def before_backward(self, state):
        self.inputs.append(state.mb_x.clone())
        self.labels.append(state.mb_y.clone())


def _images(blobs, num_exps=2):
    bench = blobs.make_benchmark(num_exps=num_exps, dim=16)
    for stream in bench.streams.values():  # (B, 16) blobs as (B, 1, 4, 4) images
        for exp in stream:
            x, y, t = exp.dataset.get_batch(torch.arange(len(exp.dataset)))
            exp.dataset = clkernel.CLDataset.from_tensors(x.reshape(-1, 1, 4, 4), y, t)
    return bench


def test_each_minibatch_is_trained_repeats_times_with_fresh_replay_and_augmentation(blobs):
    bench = _images(blobs)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    recorder = _Recorder()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[RAR(mem_size=20, repeats=3, max_shift=1, batch_size_mem=8, seed=0), recorder],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    strategy.train(bench.train_stream[0])
    n = len(bench.train_stream[0].dataset)
    assert len(recorder.labels) == 3 * -(-n // 16)  # three optimizer steps per incoming minibatch
    first, second, third = recorder.labels[:3]
    assert torch.equal(first, second) and torch.equal(second, third)  # the same incoming samples...
    assert not torch.equal(recorder.inputs[0], recorder.inputs[1])  # ...augmented anew
    recorder.inputs.clear(), recorder.labels.clear()
    strategy.train(bench.train_stream[1])
    first, second = recorder.labels[:2]
    assert len(first) == 16 + 8
    assert torch.equal(first[:16], second[:16])  # same incoming part
    assert set(first[16:].tolist()) <= {0, 1}  # replayed samples come from experience 0


@pytest.mark.parametrize("kwargs, match", [
    ({"repeats": 0}, "rar: repeats must be a positive integer"),
    ({"max_shift": -1}, "rar: max_shift must be an integer >= 0"),
    ({"mem_size": 0}, "rar: mem_size must be a positive integer"),
    ({"storage_policy": "fifo"}, "storage_policy 'fifo' is unknown"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RAR(**kwargs)


def test_composes_with_replay_and_the_default_metrics(blobs):
    bench = _images(blobs, num_exps=3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 6))
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[clkernel.load("plugin", "replay", mem_size=30, seed=0),
                                 RAR(mem_size=30, repeats=2, max_shift=1, seed=0), clkernel.load("metric", "default")],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0


def _final_accuracy(plugins, seed):
    bench = clkernel.load("benchmark", "split-digits", seed=seed)
    torch.manual_seed(seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=10, train_epochs=1,
                        device="cpu", generator=torch.Generator().manual_seed(seed))
    return clkernel.run(strategy, bench)["acc_stream/eval/test"]


def test_rar_beats_naive_on_split_digits():
    # online (one epoch, minibatches of 10): see the README for the measured values
    naive = _final_accuracy([], 0)
    rar = _final_accuracy([RAR(mem_size=200, repeats=5, max_shift=1, seed=0)], 0)
    assert naive < 0.3
    assert rar > naive + 0.4, (naive, rar)
