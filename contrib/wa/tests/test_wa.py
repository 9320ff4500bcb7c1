"""WA: the alignment and the loss against hand-worked values, composition, options, and the gain over Naive on
split-digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from clkernel_wa import WA, classifier_rows, weight_align

import clkernel
from clkernel import Strategy


def _head() -> torch.nn.Linear:
    # rows: class 0 (3, 4) norm 5, class 1 (0, 1) norm 1, class 2 (6, 8) norm 10, class 3 (2, 0) norm 2
    head = torch.nn.Linear(2, 4)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [2.0, 0.0]]))
        head.bias.fill_(1.0)
    return head


def test_weight_align_equalises_the_mean_norms_by_hand():
    # old classes 0, 1: mean norm (5 + 1) / 2 = 3; new classes 2, 3: (10 + 2) / 2 = 6; gamma = 3 / 6 = 0.5
    head = _head()
    gamma = weight_align(head, [0, 1], [2, 3])
    assert gamma == pytest.approx(0.5)
    torch.testing.assert_close(head.weight.detach(), torch.tensor([[3.0, 4.0], [0.0, 1.0], [3.0, 4.0], [1.0, 0.0]]))
    norms = head.weight.detach().norm(dim=1)
    assert float(norms[:2].mean()) == pytest.approx(3.0) and float(norms[2:].mean()) == pytest.approx(3.0)
    assert head.bias.detach().tolist() == [1.0] * 4  # biases are left alone by default
    biased = _head()
    weight_align(biased, [0, 1], [2, 3], bias=True)
    assert biased.bias.detach().tolist() == [1.0, 1.0, 0.5, 0.5]
    # aligning again changes nothing: the means are already equal
    assert weight_align(head, [0, 1], [2, 3]) == pytest.approx(1.0)


def test_weight_align_on_a_growing_classifier_scales_the_right_blocks():
    from clkernel_models import IncrementalClassifier

    head = IncrementalClassifier(2, 2)
    head.weights.append(torch.nn.Parameter(torch.zeros(2, 2)))
    head.biases.append(torch.nn.Parameter(torch.zeros(2)))
    with torch.no_grad():
        head.weights[0].copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        head.weights[1].copy_(torch.tensor([[6.0, 8.0], [2.0, 0.0]]))
    blocks = classifier_rows(head)
    assert [w.shape[0] for w, _ in blocks] == [2, 2] and blocks[1][0] is head.weights[1]
    assert weight_align(head, [0, 1], [2, 3]) == pytest.approx(0.5)
    torch.testing.assert_close(head.weights[1].detach(), torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    torch.testing.assert_close(head.weights[0].detach(), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))


@pytest.mark.parametrize("old, new, match", [
    ([], [2], "needs old and new classes"),
    ([0], [4], "has 4 output rows"),
    ([0, 2], [2, 3], r"classes \[2\] are both old and new"),
])
def test_weight_align_refuses_bad_classes(old, new, match):
    with pytest.raises(ValueError, match=match):
        weight_align(_head(), old, new)


class _Recorder:
    """Records the classifier at after_training_exp, and the loss, minibatch and output at before_backward."""

    name = "recorder"

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.losses: list[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, int]] = []

    @clkernel.hookimpl
    def after_training_exp(self, state):
        self.weights.append(state.model[-1].weight.detach().clone())

    @clkernel.hookimpl
    def before_backward(self, state):
        self.losses.append((float(state.loss.detach()), state.mb_x.clone(), state.mb_y.clone(),
                            state.mb_output.detach().clone(), state.experiences_trained))


def test_the_plugin_aligns_after_each_experience_and_weights_the_loss(blobs):
    bench = blobs.make_benchmark(num_exps=2, per_class=30)
    model = blobs.make_model(num_classes=bench.num_classes)
    plugin, recorder, after = WA(mem_size=20, seed=0), _Recorder(), _Recorder()
    # plugins are called in order: `recorder` sees the classifier before WA aligns it, `after` the loss WA has set
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[recorder, plugin, after],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    strategy.train(bench.train_stream[0])
    assert plugin.gammas == [] and plugin.prev_classes == [0, 1]  # nothing old to align with
    prev = plugin.prev_model
    strategy.train(bench.train_stream[1])
    before, aligned = recorder.weights[1], model[-1].weight.detach()
    gamma = float(before[:2].norm(dim=1).mean() / before[2:].norm(dim=1).mean())
    assert plugin.gammas == [pytest.approx(gamma, rel=1e-6)]
    torch.testing.assert_close(aligned[2:], gamma * before[2:])
    torch.testing.assert_close(aligned[:2], before[:2])
    assert float(aligned[:2].norm(dim=1).mean()) == pytest.approx(float(aligned[2:].norm(dim=1).mean()), rel=1e-5)
    # experience 1 (2 old classes of 4): loss = (1 - 1/2) CE + 1/2 KL(softmax(old/2) || softmax(new/2)) on units 0, 1
    loss, x, y, out, _ = next(r for r in after.losses if r[4] == 1)
    with torch.no_grad():
        old = prev(x)
    p_old = F.softmax(old[:, :2] / 2, dim=1)
    kl = (p_old * (p_old.log() - F.log_softmax(out[:, :2] / 2, dim=1))).sum(1).mean()
    assert loss == pytest.approx(float(0.5 * F.cross_entropy(out, y) + 0.5 * kl), rel=1e-5)
    assert len(x) == 16 and plugin.current_lambda([2, 3]) == 0.5


def test_exemplars_join_the_training_data_and_clip_keeps_weights_non_negative(blobs):
    bench = blobs.make_benchmark(num_exps=2, per_class=30)
    model = blobs.make_model(num_classes=bench.num_classes)
    plugin, probe = WA(mem_size=12, clip_weights=True, seed=0), blobs.Probe()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[plugin, probe],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    strategy.train(bench.train_stream)
    assert probe.dataset_sizes == [60, 72]
    assert float(model[-1].weight.detach().min()) >= 0.0
    assert sorted(plugin.buffer.targets.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_composes_with_replay_and_the_default_metrics(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    model = blobs.make_model(num_classes=bench.num_classes)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[clkernel.load("plugin", "replay", mem_size=30, seed=0), WA(mem_size=30, seed=0),
                                 clkernel.load("metric", "default")],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert 0.5 < results["acc_stream/eval/test"] <= 1.0
    assert all(math.isfinite(float(v)) for v in results.values() if isinstance(v, (int, float)))


@pytest.mark.parametrize("kwargs, match", [
    ({"mem_size": 0}, "wa: mem_size must be a positive integer"),
    ({"temperature": 0}, "wa: temperature must be a positive number"),
    ({"kd_lambda": 1.5}, r"wa: kd_lambda must be a number in \[0, 1\]"),
    ({"selection": "kmeans"}, "wa: selection 'kmeans' is unknown"),
    ({"classifier": ""}, "wa: classifier must be the name of a submodule"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WA(**kwargs)


def test_a_head_without_weights_fails_at_the_first_experience(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Identity())
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[WA(classifier="1")],
                        device="cpu")
    with pytest.raises(clkernel.PluginError, match="wa: Identity has no weight matrix"):
        strategy.train(bench.train_stream[0])


def _final_accuracy(plugins, seed):
    bench = clkernel.load("benchmark", "split-digits", seed=seed)
    torch.manual_seed(seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=32, train_epochs=5,
                        device="cpu", generator=torch.Generator().manual_seed(seed))
    return clkernel.run(strategy, bench)["acc_stream/eval/test"]


def test_wa_beats_naive_on_split_digits():
    # measured (README): naive 0.20, WA (200 exemplars) 0.68 with seed 0
    naive = _final_accuracy([], 0)
    wa = _final_accuracy([WA(mem_size=200, seed=0)], 0)
    assert naive < 0.3
    assert wa > naive + 0.3, (naive, wa)
