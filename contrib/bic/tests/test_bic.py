"""BiC: the bias layer, the distillation term, stage 2 and the stage-1 loss against hand-worked values; the held-out
split; composition with replay and the default metrics; options; the gain over Naive on split-digits."""

from __future__ import annotations

import math
import types

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Strategy
from clkernel_bic import BiasLayer, BiC, bic_distillation_loss, fit_bias_layer


def test_bias_layer_corrects_only_its_classes_by_hand():
    layer = BiasLayer([2, 1], alpha=2.0, beta=-1.0)
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    # units 1 and 2: 2 * o - 1; unit 0 unchanged
    torch.testing.assert_close(layer(logits), torch.tensor([[1.0, 3.0, 5.0], [0.0, -3.0, 7.0]]))
    layer(logits).sum().backward()
    # d/dalpha = sum of the corrected logits (2 + 3 - 1 + 4), d/dbeta = number of corrected entries
    assert float(layer.alpha.grad) == pytest.approx(8.0)
    assert float(layer.beta.grad) == pytest.approx(4.0)
    torch.testing.assert_close(BiasLayer()(logits), logits)
    with pytest.raises(ValueError, match="corrects class 5"):
        BiasLayer([5])(logits)
    with pytest.raises(ValueError, match="class ids must be >= 0"):
        BiasLayer([-1])


def test_bias_layer_state_loads_into_a_layer_of_other_classes():
    source = BiasLayer([3, 4, 5], alpha=0.5, beta=0.25)
    target = BiasLayer([0])
    target.load_state_dict(source.state_dict())
    assert target.classes.tolist() == [3, 4, 5]
    assert (float(target.alpha.detach()), float(target.beta.detach())) == (0.5, 0.25)
    target.reset([7])
    assert (target.classes.tolist(), float(target.alpha.detach()), float(target.beta.detach())) == ([7], 1.0, 0.0)


def test_distillation_loss_by_hand():
    # old logits on the old units (0, 1): (2 ln 3, 0) / T=2 -> softmax (3/4, 1/4); new logits (0, 0) -> log(1/2)
    # each: loss = -(3/4 + 1/4) log(1/2) = ln 2. Unit 2 (a new class) plays no part.
    old = torch.tensor([[2 * math.log(3), 0.0, 9.0]])
    new = torch.tensor([[0.0, 0.0, -4.0]], requires_grad=True)
    loss = bic_distillation_loss(new, old, [0, 1], temperature=2.0)
    assert float(loss.detach()) == pytest.approx(math.log(2))
    loss.backward()
    # d/dnew_k = (softmax(new/T)_k - target_k) / T over the units: (1/2 - 3/4) / 2, (1/2 - 1/4) / 2, 0
    torch.testing.assert_close(new.grad, torch.tensor([[-0.125, 0.125, 0.0]]))


def test_stage2_one_sgd_step_by_hand():
    # one sample of old class 0 with logits (0, ln 3); unit 1 (a new class) is corrected: q1 = alpha ln 3 + beta.
    # CE = log(1 + e^q1): dCE/dalpha = sigmoid(q1) ln 3 = 3/4 ln 3, dCE/dbeta = 3/4 at alpha=1, beta=0.
    layer = BiasLayer([1])
    loss = fit_bias_layer(layer, torch.tensor([[0.0, math.log(3)]]), torch.tensor([0]), epochs=1, lr=0.1,
                          momentum=0.0)
    assert loss == pytest.approx(math.log(4))  # the loss before the step
    assert float(layer.alpha.detach()) == pytest.approx(1 - 0.1 * 0.75 * math.log(3), rel=1e-6)
    assert float(layer.beta.detach()) == pytest.approx(-0.075, rel=1e-6)


def test_stage2_removes_a_shift_towards_the_new_classes():
    # classes 0, 1 old, 2, 3 new; the new classes' logits are inflated by 6: most old samples are misread
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(25)
    logits = torch.randn(100, 6, generator=g) + 4 * torch.nn.functional.one_hot(y, 6)
    logits[:, 2:4] += 6.0
    before = float((logits[:, :4].argmax(1) == y).float().mean())
    layer = BiasLayer([2, 3])
    fit_bias_layer(layer, logits, y, units=[0, 1, 2, 3], epochs=100, lr=0.1, generator=g)
    with torch.no_grad():
        after = float((layer(logits)[:, :4].argmax(1) == y).float().mean())
    assert float(layer.beta.detach()) < -1.0 and after > before + 0.2, (before, after, layer)
    with pytest.raises(ValueError, match=r"targets \[3\] are not among the units"):
        fit_bias_layer(layer, logits, y, units=[0, 1, 2])


def _exp(index, classes, per_class=10, dim=4, start=0):
    y = torch.tensor(classes).repeat_interleave(per_class)
    x = torch.randn(len(y), dim, generator=torch.Generator().manual_seed(index))
    return Experience(index, CLDataset.from_tensors(x, y, sample_id=torch.arange(start, start + len(y))))


def _state(model, exp, **kw):
    return types.SimpleNamespace(model=model, device=torch.device("cpu"), experience=exp, train_mb_size=8,
                                 eval_mb_size=8, criterion=torch.nn.CrossEntropyLoss(), **kw)


def test_stage1_loss_is_the_papers_convex_combination_by_hand():
    # after experience 0 (classes 0, 1) the previous model is the identity on 4 inputs; in experience 1 (classes
    # 2, 3) lambda = 2 / 4. For x = (2 ln 3, 0, 0, 0): old logits on units (0, 1) give softmax (3/4, 1/4) at T=2;
    # the current output (0, 0, 5, 1) gives log(1/2) on both: L_d = ln 2. With y = 2 the criterion is
    # CE = log(2 + e^5 + e) - 5. The term is lambda * (L_d - CE), so the loop's loss is (1 - l) CE + l L_d.
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
        model.bias.zero_()
    plugin = BiC(mem_size=20, val_fraction=0.2, seed=0)
    exp0, exp1 = _exp(0, [0, 1]), _exp(1, [2, 3], start=20)
    plugin.before_training_exp(_state(model, exp0))
    plugin.after_training_exp(_state(model, exp0))
    state = _state(model, exp1)
    plugin.before_training_exp(state)
    x = torch.tensor([[2 * math.log(3), 0.0, 0.0, 0.0]])
    output = torch.tensor([[0.0, 0.0, 5.0, 1.0]])
    state.mb = (x, torch.tensor([2]), torch.tensor([0]))
    state.mb_x, state.mb_y, state.mb_task, state.mb_output = x, torch.tensor([2]), torch.tensor([0]), output
    ce = math.log(2 + math.exp(5) + math.e) - 5
    assert float(plugin.loss_terms(state)) == pytest.approx(0.5 * (math.log(2) - ce), rel=1e-6)
    assert ce + float(plugin.loss_terms(state)) == pytest.approx(0.5 * ce + 0.5 * math.log(2), rel=1e-6)
    plugin.lamb = 0.25  # a fixed lambda
    plugin.before_training_exp(state)
    assert float(plugin.loss_terms(state)) == pytest.approx(0.25 * (math.log(2) - ce), rel=1e-6)


def test_held_out_samples_are_never_trained_and_the_validation_memory_stays_balanced():
    # mem 20, val 0.2: 4 validation samples. Experience 0 (2 classes): 2 per class held out of training;
    # experience 1 (2 new classes, 4 seen): 1 per new class held out, the old classes' shrink to 1 each.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    plugin = BiC(mem_size=20, val_fraction=0.2, stage2_epochs=2, seed=0)
    seen_training = set()
    for exp in (_exp(0, [0, 1]), _exp(1, [2, 3], start=20)):
        state = _state(model, exp)
        plugin.before_training_exp(state)
        state.dataset = exp.dataset.train()
        plugin.after_train_dataset_adaptation(state)
        trained = set(state.dataset.sample_id.tolist())
        held = set(exp.dataset.sample_id[plugin.heldout[exp.index]].tolist())
        assert len(held) == (4 if exp.index == 0 else 2) and not held & trained
        assert len(trained) == len(exp.dataset) - len(held)
        seen_training |= trained
        plugin.after_training_exp(state)
    validation = plugin.validation.buffer
    assert sorted(validation.targets.tolist()) == [0, 1, 2, 3]
    assert not set(validation.sample_id.tolist()) & seen_training
    assert set(plugin.exemplars.buffer.sample_id.tolist()) <= seen_training
    assert len(plugin.exemplars) == 16
    assert plugin.bias_layer.classes.tolist() == [2, 3]  # stage 2 ran for the new classes


def test_composes_with_replay_and_the_default_metrics_and_corrects_evaluation(blobs, accuracy):
    bench = blobs.make_benchmark(num_exps=3)
    model = blobs.make_model(num_classes=bench.num_classes + 2)
    plugin, probe = BiC(mem_size=40, stage2_epochs=30, seed=0), blobs.Probe()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[clkernel.load("plugin", "replay", mem_size=30, seed=0), plugin, probe, accuracy,
                                 clkernel.load("metric", "default")],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0
    per_exp = len(probe.loss_terms) // 3
    assert all("bic" not in t for t in probe.loss_terms[:per_exp])
    assert all(math.isfinite(t["bic"]) for t in probe.loss_terms[per_exp:])
    assert plugin.bias_layer.classes.tolist() == [4, 5]
    # what the metrics saw is the bias-corrected output of the trained model
    x, _, _ = bench.test_stream[0].dataset.eval().get_batch(torch.arange(len(bench.test_stream[0].dataset)))
    with torch.no_grad():
        torch.testing.assert_close(accuracy.outputs[0], plugin.bias_layer(model(x)))


@pytest.mark.parametrize("kwargs, match", [
    ({"mem_size": 0}, "bic: mem_size must be a positive integer"),
    ({"val_fraction": 1.0}, r"bic: val_fraction must be a number in \[0, 1\)"),
    ({"mem_size": 4, "val_fraction": 0.1}, "leaves 0 validation and 4 exemplar samples"),
    ({"temperature": 0}, "bic: temperature must be a positive number"),
    ({"lamb": 1.5}, r"bic: lamb must be a number in \[0, 1\]"),
    ({"stage2_epochs": 0}, "bic: stage2_epochs must be a positive integer"),
    ({"batch_size_mem": 0}, "bic: batch_size_mem must be a positive integer"),
    ({"storage_policy": "fifo"}, "bic: storage_policy 'fifo' is unknown"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiC(**kwargs)


def _final_accuracy(plugins, seed):
    bench = clkernel.load("benchmark", "split-digits", seed=seed)
    torch.manual_seed(seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=32, train_epochs=3,
                        device="cpu", generator=torch.Generator().manual_seed(seed))
    return clkernel.run(strategy, bench)["acc_stream/eval/test"]


def test_bic_beats_naive_on_split_digits():
    # measured (README): naive 0.200, BiC (memory 200) 0.868 with seed 0
    naive = _final_accuracy([], 0)
    bic = _final_accuracy([BiC(mem_size=200, seed=0)], 0)
    assert naive < 0.3
    assert bic > naive + 0.5, (naive, bic)
