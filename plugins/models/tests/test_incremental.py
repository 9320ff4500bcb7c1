"""IncrementalClassifier: grows to the classes seen, keeps old weights and optimizer state, masks untrained units."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import clkernel
from clkernel import CLDataset, Experience, Naive
from clkernel_models import IncrementalClassifier


def incremental_model(features: int = 8, seed: int = 0, **options: Any) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), IncrementalClassifier(16, 2, **options))


class GrowthChecker:
    """At the start of each experience's first epoch (after adaptation and the optimizer update), checks what growth
    did to the classifier and the optimizer against a snapshot taken at the end of the previous experience."""

    name = "growth-checker"

    def __init__(self, clf: IncrementalClassifier) -> None:
        self.clf, self.seen, self.snapshot, self.checked = clf, set(), None, 0
        self.new_blocks: list[tuple[nn.Parameter, torch.Tensor]] = []

    @clkernel.hookimpl
    def before_training_epoch(self, state: Any) -> None:
        if state.epoch:
            return
        clf, opt = self.clf, state.optimizer
        self.seen |= set(state.experience.classes)
        assert clf.out_features == max(self.seen) + 1 == 2 * (state.experience.index + 1)
        assert clf.active_units.nonzero().flatten().tolist() == sorted(self.seen)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert all(id(p) in in_opt for p in clf.parameters()), "a classifier parameter is not optimized"
        if self.snapshot is not None:
            rows, params, momenta = self.snapshot
            assert torch.equal(clf.weight[:rows].detach(), params), "growth changed the old units' weights"
            for p, m in momenta:
                assert any(p is q for q in clf.parameters()), "an old block was replaced"
                assert torch.equal(opt.state[p]["momentum_buffer"], m), "an old unit's momentum buffer was lost"
            new = [p for p in clf.weights if all(p is not q for q, _ in momenta if q.dim() == 2)]
            assert len(new) == 1 and new[0].shape[0] == 2 and new[0] not in opt.state
            self.new_blocks.append((new[0], new[0].detach().clone()))
        self.checked += 1

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        clf, opt = self.clf, state.optimizer
        self.snapshot = (clf.out_features, clf.weight.detach().clone(),
                         [(p, opt.state[p]["momentum_buffer"].clone()) for p in clf.parameters()])


def test_grows_exactly_to_the_classes_seen_keeps_old_weights_and_momentum_and_trains_new_units(make_benchmark,
                                                                                                 accuracy):
    bench = make_benchmark(n_exp=5)
    model = incremental_model()
    clf = model[2]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    checker = GrowthChecker(clf)
    strategy = Naive(model, optimizer, plugins=[checker, accuracy], train_mb_size=16, train_epochs=3, device="cpu",
                     generator=torch.Generator().manual_seed(0))
    for k, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        assert clf.out_features == 2 * (k + 1) and len(clf.weights) == k + 1
    assert checker.checked == 5 and len(checker.new_blocks) == 4
    for block, initial in checker.new_blocks:
        assert not torch.equal(block.detach(), initial), "a new block was not trained"
        assert "momentum_buffer" in optimizer.state[block]
    strategy.eval(bench.test_stream[4])
    assert accuracy.results[4] > 0.9  # the last classes were learnt through the new units


def test_evaluation_grows_the_classifier_but_activates_only_trained_classes(make_benchmark):
    bench = make_benchmark(n_exp=5)
    model = incremental_model()
    clf = model[2]
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16, device="cpu")
    strategy.train(bench.train_stream[0])
    strategy.eval(bench.test_stream)
    assert clf.out_features == 10
    assert clf.active_units.tolist() == [True, True] + [False] * 8
    model.eval()
    out = model(bench.test_stream[3].dataset.get_batch(torch.arange(4))[0])
    assert (out[:, 2:] == -1000.0).all() and (out[:, :2] != -1000.0).all()
    blocks = len(clf.weights)
    strategy.train(bench.train_stream[1])
    assert len(clf.weights) == blocks  # no growth: the units exist since the evaluation
    assert clf.active_units.nonzero().flatten().tolist() == [0, 1, 2, 3]
    in_opt = {id(p) for g in strategy.state.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in clf.parameters())


def test_classes_that_are_not_contiguous_grow_to_the_largest_and_activate_only_themselves():
    clf = IncrementalClassifier(3, 2)
    clf.adaptation(Experience(0, CLDataset.from_tensors(torch.randn(4, 3), torch.tensor([3, 7, 3, 7]))))
    assert clf.out_features == 8
    assert clf.active_units.nonzero().flatten().tolist() == [3, 7]
    out = clf(torch.randn(5, 3))
    assert out.shape == (5, 8)
    assert (out[:, [0, 1, 2, 4, 5, 6]] == -1000.0).all()


def test_masking_off_leaves_every_unit_live_and_mask_value_is_configurable():
    x = torch.randn(5, 3)
    exp = Experience(0, CLDataset.from_tensors(torch.randn(2, 3), torch.tensor([0, 4])))
    off, on = IncrementalClassifier(3, 2, masking=False), IncrementalClassifier(3, 2, mask_value=-7.0)
    for clf in (off, on):
        clf.adaptation(exp)
    assert (off(x) != -1000.0).all()
    assert (on(x)[:, 1:4] == -7.0).all() and (on(x)[:, [0, 4]] != -7.0).all()


def test_masked_units_get_no_gradient():
    clf = IncrementalClassifier(3, 4)
    clf.grow([0, 1])
    loss = nn.functional.cross_entropy(clf(torch.randn(6, 3)), torch.tensor([0, 1] * 3))
    loss.backward()
    grad = clf.weights[0].grad
    assert (grad[2:] == 0).all() and (grad[:2] != 0).any()


def test_adaptation_is_idempotent():
    clf = IncrementalClassifier(3, 2)
    exp = Experience(0, CLDataset.from_tensors(torch.randn(4, 3), torch.tensor([0, 5, 2, 5])))
    clf.adaptation(exp)
    params, state = list(clf.parameters()), {k: v.clone() for k, v in clf.state_dict().items()}
    clf.adaptation(exp)
    clf.eval()
    clf.adaptation(exp)
    assert [id(p) for p in clf.parameters()] == [id(p) for p in params]
    assert all(torch.equal(v, state[k]) for k, v in clf.state_dict().items())


def test_a_grown_classifier_loads_into_a_fresh_one():
    clf = IncrementalClassifier(3, 2)
    clf.grow([0, 1])
    clf.grow([2, 3, 6], activate=True)
    clf.grow([9], activate=False)
    fresh = IncrementalClassifier(3, 2)
    fresh.load_state_dict(clf.state_dict())
    x = torch.randn(4, 3)
    assert fresh.out_features == 10 and torch.equal(fresh(x), clf(x))
    assert torch.equal(fresh.active_units, clf.active_units)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="in_features"):
        IncrementalClassifier(0)
    with pytest.raises(ValueError, match="class ids must be >= 0"):
        IncrementalClassifier(3).grow([-1, 2])
    with pytest.raises(RuntimeError, match="no output unit yet"):
        IncrementalClassifier(3, 0)(torch.randn(2, 3))
