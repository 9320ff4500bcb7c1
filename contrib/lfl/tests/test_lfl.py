"""LFL: the feature distance by hand, the frozen classifier, the feature module option and its errors."""

from __future__ import annotations

import types
from collections import OrderedDict

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, PluginError, Strategy
from clkernel_lfl import LFL, classifier_inputs, find_classifier


def two_layer(w1: list[list[float]]) -> torch.nn.Module:
    model = torch.nn.Sequential(OrderedDict(features=torch.nn.Linear(2, 2, bias=False),
                                            classifier=torch.nn.Linear(2, 2)))
    with torch.no_grad():
        model.features.weight.copy_(torch.tensor(w1))
        model.classifier.weight.copy_(torch.eye(2))
        model.classifier.bias.zero_()
    return model


def test_penalty_by_hand():
    # previous features of x = (1, 2) and (0, 1) under W1 = I: (1, 2), (0, 1); current under W1 = 2I: (2, 4),
    # (0, 2); squared differences 1, 4, 0, 1: mean 1.5; times lambda_e 0.1
    lfl = LFL(lambda_e=0.1)
    lfl.freeze_previous(two_layer([[1.0, 0.0], [0.0, 1.0]]))
    x, t = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.zeros(2, dtype=torch.long)
    current = two_layer([[2.0, 0.0], [0.0, 2.0]])
    features, out = classifier_inputs(current, x, t)
    torch.testing.assert_close(features, torch.tensor([[2.0, 4.0], [0.0, 2.0]]))
    torch.testing.assert_close(out, features)  # the classifier is the identity here
    assert float(lfl.penalty(features, x, t).detach()) == pytest.approx(0.15)
    torch.testing.assert_close(lfl.previous_features(x, t), torch.tensor([[1.0, 2.0], [0.0, 1.0]]))


def test_features_of_an_image_model_are_flattened():
    model = torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv2d(1, 2, 3), pool=torch.nn.AdaptiveAvgPool2d(2),
                                            flat=torch.nn.Flatten(), head=torch.nn.Linear(8, 3)))
    features, out = classifier_inputs(model, torch.randn(5, 1, 6, 6), torch.zeros(5, dtype=torch.long),
                                      classifier="head")
    assert features.shape == (5, 8) and out.shape == (5, 3)


def test_a_missing_classifier_is_named_with_the_model():
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"lfl: Sequential has no submodule 'classifier'.*set classifier=NAME.*'2'"):
        find_classifier(model, "classifier")
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[LFL()], device="cpu")
    data = Experience(0, CLDataset.from_tensors(torch.randn(8, 2), torch.zeros(8, dtype=torch.long)))
    with pytest.raises(PluginError, match="Sequential has no submodule 'classifier'"):
        strategy.train(data)
    assert find_classifier(model, "2") is model[2]


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.terms: list[float | None] = []

    @clkernel.hookimpl
    def before_backward(self, state):
        term = state.loss_terms.get("lfl")
        self.terms.append(None if term is None else float(term.detach()))


def blobs(seed: int) -> CLDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2).repeat_interleave(20)
    return CLDataset.from_tensors(torch.randn(40, 2, generator=g) + 3 * y[:, None], y)


def test_plugin_freezes_the_classifier_and_adds_the_term_from_the_second_experience():
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(features=torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU()),
                                            classifier=torch.nn.Linear(8, 2)))
    recorder = Recorder()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        plugins=[LFL(lambda_e=1.0), recorder], train_mb_size=10, train_epochs=2, device="cpu",
                        eval_every=-1, generator=torch.Generator().manual_seed(0))
    strategy.train(Experience(0, blobs(0)))
    head = [p.detach().clone() for p in model.classifier.parameters()]
    body = [p.detach().clone() for p in model.features.parameters()]
    strategy.train(Experience(1, blobs(1)))
    assert recorder.terms[:8] == [None] * 8  # 4 iterations per epoch, 2 epochs
    assert recorder.terms[8] == 0.0 and max(recorder.terms[9:]) > 0.0  # the same model at first, then it moves
    assert all(torch.equal(a, b) for a, b in zip(head, model.classifier.parameters()))  # decision layer kept
    assert not all(torch.equal(a, b) for a, b in zip(body, model.features.parameters()))  # features trained
    assert all(not p.requires_grad for p in model.classifier.parameters())


def test_the_classifier_can_stay_trainable():
    torch.manual_seed(0)
    model = two_layer([[1.0, 0.0], [0.0, 1.0]])
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[LFL(freeze_classifier=False)],
                        train_mb_size=10, device="cpu", eval_every=-1)
    strategy.train(Experience(0, blobs(0)))
    head = model.classifier.weight.detach().clone()
    strategy.train(Experience(1, blobs(1)))
    assert not torch.equal(head, model.classifier.weight)


def test_the_frozen_model_is_rebuilt_from_a_checkpoint():
    torch.manual_seed(0)
    model = two_layer([[1.0, 0.5], [0.0, 1.0]])
    lfl = LFL(lambda_e=1.0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[lfl], train_mb_size=10,
                        device="cpu", eval_every=-1)
    strategy.train(Experience(0, blobs(0)))
    saved = torch.load(_roundtrip(lfl.state_dict()), weights_only=True)
    again = LFL(lambda_e=1.0)
    again.load_state_dict(saved)
    assert again.state_dict()["prev_model"].keys() == saved["prev_model"].keys()
    fresh = two_layer([[0.0, 0.0], [0.0, 0.0]])  # the live model only gives the structure
    again.before_training_exp(types.SimpleNamespace(model=fresh))
    x, t = torch.tensor([[1.0, -1.0]]), torch.zeros(1, dtype=torch.long)
    torch.testing.assert_close(again.previous_features(x, t), lfl.previous_features(x, t))


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_e": -1.0}, "lambda_e must be a non-negative number"),
    ({"classifier": ""}, "classifier must be the name of a submodule"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LFL(**kwargs)


def test_registered_with_its_options():
    plugin = clkernel.load("plugin", "lfl", lambda_e=0.5, classifier="head", freeze_classifier=False)
    assert isinstance(plugin, LFL) and (plugin.lambda_e, plugin.classifier, plugin.freeze_classifier) == (
        0.5, "head", False)
    assert list(clkernel.registry().get("plugin", "lfl").options()) == ["lambda_e", "classifier", "freeze_classifier",
                                                                       "model"]
