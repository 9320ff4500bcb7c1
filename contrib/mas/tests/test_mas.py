"""MAS: importances against values worked out by hand, no labels, accumulation, the penalty, the plugin, options."""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Strategy
from clkernel_mas import MAS, mas_importances

# F(x) = W x with W = [[1, 0], [0, 2]], b = 0. d||F(x)||^2 / dW = 2 F(x) x^T and / db = 2 F(x):
# x1 = (1, 1):  F = (1, 2),  dW = [[2, 2], [4, 4]],   db = (2, 4)
# x2 = (1, -1): F = (1, -2), dW = [[2, -2], [-4, 4]], db = (2, -4)
X = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
PER_SAMPLE = {"weight": torch.tensor([[2.0, 2.0], [4.0, 4.0]]), "bias": torch.tensor([2.0, 4.0])}  # mean of |.|
SCALE = {"weight": 4.0, "bias": 2.0}  # how the importances grow when x doubles (see below)
PER_PAIR = {"weight": torch.tensor([[2.0, 0.0], [0.0, 4.0]]), "bias": torch.tensor([2.0, 0.0])}  # |sum| / 2


def linear() -> torch.nn.Linear:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        model.bias.zero_()
    return model


def data(x: torch.Tensor = X, y: list[int] | None = None) -> CLDataset:
    return CLDataset.from_tensors(x, torch.tensor(y if y is not None else [0] * len(x)))


@pytest.mark.parametrize("batch_size, expected", [(1, PER_SAMPLE), (2, PER_PAIR)], ids=["per-sample", "pairs"])
def test_importances_by_hand(batch_size, expected):
    model = linear()
    model.train()
    imp = mas_importances(model, data(), batch_size=batch_size)
    assert model.training and all(p.grad is None for p in model.parameters())  # mode restored, gradients cleared
    for name, value in expected.items():
        torch.testing.assert_close(imp[name], value)


def test_no_labels_are_used():
    model = linear()
    a = mas_importances(model, data(y=[0, 1]), batch_size=1)
    b = mas_importances(model, data(y=[7, 3]), batch_size=1)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_importances_are_computed_in_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    model.train()
    first = mas_importances(model, data(), batch_size=1)
    second = mas_importances(model, data(), batch_size=1)
    assert all(torch.equal(first[n], second[n]) for n in first)  # no dropout noise


def run_plugin(plugin: MAS, datasets: list[CLDataset], lr: float = 0.0, mb: int = 2) -> torch.nn.Module:
    model = linear()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=lr), plugins=[plugin], train_mb_size=mb,
                        device="cpu", eval_every=-1, generator=torch.Generator().manual_seed(0))
    for i, d in enumerate(datasets):
        strategy.train(Experience(i, d))
    return model


def test_plugin_uses_the_training_minibatch_size_and_sums_over_experiences():
    # lr 0: the parameters stay put, so each experience's importance is the hand value above
    mas = MAS()
    run_plugin(mas, [data()])
    for name, value in PER_PAIR.items():
        torch.testing.assert_close(mas.importances[name], value)
    mas = MAS(batch_size=1)
    model = run_plugin(mas, [data(), data(2 * X)])  # F(2x) = 2F(x): dW = 2F x^T grows 4x, db = 2F grows 2x
    for name, value in PER_SAMPLE.items():
        torch.testing.assert_close(mas.importances[name], value + SCALE[name] * value)
        torch.testing.assert_close(mas.anchor[name], dict(model.named_parameters())[name].detach())
    assert mas.experiences == 2


def test_alpha_keeps_a_moving_average():
    mas = MAS(alpha=0.25, batch_size=1)
    run_plugin(mas, [data(), data(2 * X)])
    for name, value in PER_SAMPLE.items():  # 0.25 * (0.75 * a) + 0.75 * (scale * a)
        torch.testing.assert_close(mas.importances[name], 0.25 * 0.75 * value + 0.75 * SCALE[name] * value)


def test_penalty_by_hand_and_checkpoint_round_trip():
    mas = MAS(lambda_reg=0.5, batch_size=1)
    model = run_plugin(mas, [data()])
    assert float(mas.penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight.add_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        model.bias.add_(torch.tensor([0.0, 2.0]))
    # 0.5 * (2 * 1^2 + 4 * 1^2 + 4 * 2^2) = 11
    assert float(mas.penalty(model).detach()) == pytest.approx(11.0)
    again = MAS(lambda_reg=0.5)
    again.load_state_dict(mas.state_dict())
    assert float(again.penalty(model).detach()) == pytest.approx(11.0)


class LossTerms:
    name = "loss-terms"

    def __init__(self) -> None:
        self.terms: list[dict[str, float]] = []

    @clkernel.hookimpl
    def before_backward(self, state):
        self.terms.append({k: float(v.detach()) for k, v in state.loss_terms.items()})


def test_penalty_joins_the_loss_from_the_second_experience():
    probe = LossTerms()
    model = linear()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[MAS(), probe],
                        train_mb_size=1, device="cpu", eval_every=-1, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        strategy.train(Experience(i, data(y=[0, 1])))
    assert probe.terms[:2] == [{}, {}]
    assert probe.terms[2]["mas"] == 0.0 and probe.terms[3]["mas"] > 0.0  # at the anchor, then moved away


def test_grown_parameters_keep_their_old_importance_and_new_units_are_free():
    mas = MAS(lambda_reg=1.0)
    mas.importances = {"weight": torch.ones(2, 3), "bias": torch.ones(2)}
    mas.anchor = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    grown = torch.nn.Linear(3, 4)
    with torch.no_grad():
        grown.weight.fill_(1.0)
        grown.bias.zero_()
    assert float(mas.penalty(grown).detach()) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="changed shape from"):
        mas.penalty(torch.nn.Linear(2, 2))


def test_strong_mas_keeps_a_conflicting_first_experience():
    # Two experiences of the same two classes, in different regions, separated along dimension 0 in opposite
    # directions: naive fine-tuning on the second turns the first's boundary round; MAS keeps it.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat_interleave(100)
    x0 = 0.7 * torch.randn(200, 8, generator=g)
    x0[:, 0] += (2 * y - 1) * 2.0
    x1 = 0.7 * torch.randn(200, 8, generator=g)
    x1[:, 0] -= (2 * y - 1) * 2.0
    x1[:, 1] += 4.0

    def accuracy_after(plugins):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=plugins, train_mb_size=20,
                            train_epochs=5, device="cpu", eval_every=-1, generator=torch.Generator().manual_seed(0))
        for i, x in enumerate((x0, x1)):
            strategy.train(Experience(i, CLDataset.from_tensors(x, y)))
        with torch.no_grad():
            return [float((model(x).argmax(1) == y).float().mean()) for x in (x0, x1)]

    naive = accuracy_after([])
    mas = accuracy_after([MAS(lambda_reg=1.0)])
    assert naive[0] < 0.5 and naive[1] > 0.9
    assert mas[0] > 0.85 and mas[1] > 0.9, (naive, mas)


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_reg": -1}, "lambda_reg must be a non-negative number"),
    ({"alpha": 1.5}, "alpha must be a number in"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAS(**kwargs)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty dataset"):
        mas_importances(linear(), CLDataset.from_tensors(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_registered_with_its_options():
    plugin = clkernel.load("plugin", "mas", lambda_reg=0.5, alpha=0.5, batch_size=4)
    assert isinstance(plugin, MAS) and (plugin.lambda_reg, plugin.alpha, plugin.batch_size) == (0.5, 0.5, 4)
    assert list(clkernel.registry().get("plugin", "mas").options()) == ["lambda_reg", "alpha", "batch_size"]
