"""iCaRL: herding, the loss and the nearest-mean classifier against hand-worked values; composition, options, and the
gain over Naive on split-digits."""

from __future__ import annotations

import math
import types

import pytest
import torch
from clkernel_icarl import (
    ICaRL,
    NCMClassifier,
    class_means,
    classifier_features,
    find_classifier,
    icarl_loss,
)

import clkernel
from clkernel import CLDataset, Experience, Strategy, Stream


def _identity_features_model(num_classes: int = 3) -> torch.nn.Module:
    """A model whose features (the input of its last Linear) are the inputs themselves."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, num_classes))


def _state(model, exp):
    return types.SimpleNamespace(model=model, device=torch.device("cpu"), experience=exp, eval_mb_size=8)


# the five class-0 points of the herding example; their L2-normalised versions are
# a = (1, 0), b = (0, 1), c = (-1, 0), d = (0.6, 0.8), e = (0.8, 0.6)
HERD_X = torch.tensor([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0], [1.2, 1.6], [4.0, 3.0]])


def test_herding_picks_in_order_the_samples_whose_running_mean_is_closest_to_the_class_mean():
    # class mean mu = (a + b + c + d + e) / 5 = (0.28, 0.48). Squared distances to mu of the running mean:
    #   step 1, f:            a .7488  b .3488  c 1.8688  d .2048  e .2848            -> d
    #   step 2, (d + f) / 2:  a .2768  b .1768  c .2368            e .2248            -> b
    #   step 3, (d+b+f) / 3:  a .0786           c .1852            e .1372            -> a
    #   step 4, (d+b+a+f)/4:                    c .0178            e .1168            -> c
    # so herding keeps d, b, a, c (e, second closest to the mean, is never picked); closest-to-centre would keep
    # d, e, b, a. Without normalisation the order would differ (the raw points have norms 3, .5, 2, 2, 5).
    model = _identity_features_model()
    plugin = ICaRL(mem_size=4, seed=0)
    exp0 = Experience(0, CLDataset.from_tensors(HERD_X, torch.zeros(5, dtype=torch.long)))
    plugin.after_training_exp(_state(model, exp0))
    assert _kept_in_order(plugin) == [3, 1, 0, 2]
    # a second class arrives: two exemplars each, class 0 keeps the first two of its herding order
    exp1 = Experience(1, CLDataset.from_tensors(torch.tensor([[1.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1])))
    plugin.after_training_exp(_state(model, exp1))
    x, y, _ = plugin.buffer.get_batch(torch.arange(4))
    assert sorted(map(tuple, x[y == 0].tolist())) == sorted(map(tuple, HERD_X[[3, 1]].tolist()))

    closest = ICaRL(mem_size=4, selection="closest_to_center", seed=0)
    closest.after_training_exp(_state(model, exp0))
    assert _kept_in_order(closest) == [3, 4, 1, 0]


def _kept_in_order(plugin):
    """Positions in the experience of the exemplars, best first (the policy scores a group's i-th pick -i)."""
    state = plugin.policy.state_dict()
    return state["origin"][torch.argsort(state["score"], descending=True), 1].tolist()


def test_icarl_loss_by_hand():
    # logits (0, 1, -1, 5) for a sample of class 2; units 0, 1, 2 seen (3 not yet); the old model learned 0 and 1
    # and gives them sigmoid targets 0.75 (logit ln 3) and 0.5 (logit 0):
    #   unit 0: z = 0,  t = .75: -(.75 ln .5 + .25 ln .5)           = ln 2            = 0.693147
    #   unit 1: z = 1,  t = .5:  -(.5 ln s(1) + .5 ln s(-1))        = .5 (.313262 + 1.313262) = 0.813262
    #   unit 2: z = -1, t = 1:   -ln s(-1) = ln(1 + e)                                 = 1.313262
    # mean over the three units: 0.939890
    output = torch.tensor([[0.0, 1.0, -1.0, 5.0]], requires_grad=True)
    units, old_units = torch.tensor([0, 1, 2]), torch.tensor([0, 1])
    old = torch.tensor([[math.log(3), 0.0, 7.0]])
    loss = icarl_loss(output, torch.tensor([2]), units, old, old_units)
    assert float(loss.detach()) == pytest.approx(0.939890, abs=1e-6)
    loss.backward()
    assert float(output.grad[0, 3]) == 0.0  # an unseen class's unit is not trained
    # with temperature 2 the targets are sigmoid(old / 2): logits 2 ln 3 and 0 give the same .75 and .5
    warm = icarl_loss(output.detach(), torch.tensor([2]), units, old * torch.tensor([2.0, 1, 1]), old_units, 2.0)
    assert float(warm) == pytest.approx(0.939890, abs=1e-6)
    # without a previous model every target is one-hot: units 0, 1 have target 0
    plain = icarl_loss(output.detach(), torch.tensor([2]), units)
    expected = (math.log(2) + math.log(1 + math.e) + math.log(1 + math.e)) / 3
    assert float(plain) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="has 4 outputs but classes up to 4"):
        icarl_loss(output, torch.tensor([2]), torch.tensor([0, 4]))


def test_class_means_and_ncm_scores_by_hand():
    # class 0: (2, 0) and (0, 3), normalised (1, 0) and (0, 1), mean (.5, .5), normalised (1, 1)/sqrt 2;
    # class 2: (-1, 0). Scores are -||x/|x| - mu||^2 = -(2 - 2 cos(x, mu)); class 1 has no mean.
    classes, means = class_means(torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]), torch.tensor([0, 0, 2]))
    assert classes.tolist() == [0, 2]
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(means, torch.tensor([[r, r], [-1.0, 0.0]]))
    ncm = NCMClassifier()
    ncm.update_class_means(classes, means)
    scores = ncm(torch.tensor([[3.0, 4.0], [-1.0, 1.0]]))
    # x = (.6, .8): cos to class 0 = 1.4 r, to class 2 = -.6;  x = (-r, r): cos 0 and r
    expected = torch.tensor([[-(2 - 2.8 * r), -1000.0, -(2 + 1.2)], [-2.0, -1000.0, -(2 - 2 * r)]])
    torch.testing.assert_close(scores, expected)
    assert scores.argmax(1).tolist() == [0, 2]
    # the means travel with the module's state dict, into a classifier that had none
    fresh = NCMClassifier()
    fresh.load_state_dict(ncm.state_dict())
    torch.testing.assert_close(fresh(torch.tensor([[3.0, 4.0]])), expected[:1])
    with pytest.raises(ValueError, match="features of size 3"):
        ncm(torch.ones(1, 3))


def test_evaluation_predicts_with_the_nearest_mean_of_exemplars(accuracy):
    # features are the inputs (lr 0: the model never changes). Exemplars of class 0: (2, 0), (0, 3); class 1:
    # (-1, 0). The evaluated outputs are the NCM scores worked out above, not the network's logits.
    model = _identity_features_model()
    train = Stream("train", [Experience(0, CLDataset.from_tensors(torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]),
                                                                  torch.tensor([0, 0, 1])))])
    test = Stream("test", [Experience(0, CLDataset.from_tensors(torch.tensor([[3.0, 4.0], [-1.0, 1.0]]),
                                                                torch.tensor([0, 1])))])
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.0), plugins=[ICaRL(mem_size=10), accuracy],
                        train_mb_size=3, device="cpu")
    strategy.train(train[0])
    strategy.eval(test)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(accuracy.outputs[0], torch.tensor([[-(2 - 2.8 * r), -(2 + 1.2), -1000.0],
                                                                  [-2.0, -(2 - 2 * r), -1000.0]]))
    assert accuracy.results[0] == 1.0


def test_trains_on_the_experience_plus_exemplars_with_the_icarl_loss_only(blobs):
    bench = blobs.make_benchmark(num_exps=2, per_class=40)
    model = blobs.make_model(num_classes=bench.num_classes)
    plugin, probe = ICaRL(mem_size=20, seed=0), blobs.Probe()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[plugin, probe],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    strategy.train(bench.train_stream[0])
    strategy.train(bench.train_stream[1])
    assert probe.dataset_sizes == [80, 100]  # 80 new samples, then 80 + 20 exemplars
    assert len(plugin.buffer) == 20 and sorted(plugin.buffer.targets.tolist()) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    assert plugin.prev_classes == [0, 1, 2, 3] and plugin.ncm.known.tolist() == [True] * 4
    # the loss is iCaRL's alone: the probe, called after iCaRL's before_backward, sees loss == the icarl term
    assert all(set(t) == {"icarl"} for t in probe.loss_terms)


def test_composes_with_replay_and_the_default_metrics(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    model = blobs.make_model(num_classes=bench.num_classes)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[clkernel.load("plugin", "replay", mem_size=30, seed=0), ICaRL(mem_size=30, seed=0),
                                 clkernel.load("metric", "default")],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert 0.5 < results["acc_stream/eval/test"] <= 1.0
    assert all(math.isfinite(float(v)) for k, v in results.items() if isinstance(v, (int, float)))


def test_classifier_features_and_find_classifier():
    model = clkernel.load("model", "simple-mlp", num_classes=4, input_size=3, hidden_size=5, drop_rate=0.0)
    assert find_classifier(model) is model.classifier
    data = CLDataset.from_tensors(torch.randn(7, 3), torch.zeros(7, dtype=torch.long))
    feats = classifier_features(model, data, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(feats, model.features(data.get_batch(torch.arange(7))[0]))
    with pytest.raises(ValueError, match="has no submodule 'head'"):
        find_classifier(model, "head")


@pytest.mark.parametrize("kwargs, match", [
    ({"mem_size": 0}, "icarl: mem_size must be a positive integer"),
    ({"selection": "kmeans"}, "icarl: selection 'kmeans' is unknown; choose one of herding"),
    ({"classifier": ""}, "icarl: classifier must be the name of a submodule"),
    ({"temperature": 0}, "icarl: temperature must be a positive number"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ICaRL(**kwargs)


def test_unknown_classifier_fails_at_the_first_experience(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    model = blobs.make_model(num_classes=bench.num_classes)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[ICaRL(classifier="head")],
                        device="cpu")
    with pytest.raises(clkernel.PluginError, match="no submodule 'head'"):
        strategy.train(bench.train_stream[0])


def _final_accuracy(plugins, seed):
    bench = clkernel.load("benchmark", "split-digits", seed=seed)
    torch.manual_seed(seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=32, train_epochs=2,
                        device="cpu", generator=torch.Generator().manual_seed(seed))
    return clkernel.run(strategy, bench)["acc_stream/eval/test"]


def test_icarl_beats_naive_on_split_digits():
    # measured (README): naive 0.19, iCaRL (200 exemplars) 0.88 with seed 0
    naive = _final_accuracy([], 0)
    icarl = _final_accuracy([ICaRL(mem_size=200, seed=0)], 0)
    assert naive < 0.3
    assert icarl > naive + 0.4, (naive, icarl)
