"""Synaptic Intelligence: path-integral importances against closed forms, the penalty, the plugin, options."""

from __future__ import annotations

import math

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Strategy
from clkernel_si import SynapticIntelligence, si_importance

H = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)  # curvatures of the quadratic loss, one per coordinate


class Quadratic(torch.nn.Module):
    """``theta - x``: with every row of ``x`` equal to ``theta_star`` and :func:`quadratic_loss`, the loss is
    ``0.5 * sum_k h_k (theta_k - theta_star_k)^2`` and its gradient ``h * (theta - theta_star)``."""

    def __init__(self, theta0: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(theta0.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta - x


def quadratic_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (H * out.pow(2)).mean(0).sum()


def optimum(theta_star: list[float], index: int) -> Experience:
    x = torch.tensor(theta_star, dtype=torch.float64).repeat(4, 1)
    return Experience(index, CLDataset.from_tensors(x, torch.zeros(4, dtype=torch.long)))


class LossTerms:
    name = "loss-terms"

    def __init__(self) -> None:
        self.si: list[float | None] = []

    @clkernel.hookimpl
    def before_backward(self, state):
        term = state.loss_terms.get("si")
        self.si.append(None if term is None else float(term.detach()))


def quadratic_run(si: SynapticIntelligence, lr: float, steps: int, optima: list[list[float]], theta0: list[float],
                  probe: LossTerms | None = None) -> Quadratic:
    model = Quadratic(torch.tensor(theta0, dtype=torch.float64))
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=lr), quadratic_loss,
                        plugins=[si] + ([probe] if probe else []), train_mb_size=4, train_epochs=steps,
                        device="cpu", eval_every=-1)
    for i, star in enumerate(optima):
        strategy.train(optimum(star, i))
    return model


def test_importance_on_a_quadratic_equals_the_closed_form():
    # Plain SGD on 0.5 h (theta - theta*)^2 from d0 = theta0 - theta*: d_t = r^t d0 with r = 1 - lr h, the
    # gradient is h d_t and each step moves theta by -lr h d_t, so
    # omega = sum_{t<T} lr h^2 d0^2 r^(2t) = lr h^2 d0^2 (1 - r^(2T)) / (1 - r^2),  Delta = d0 (r^T - 1).
    lr, steps, xi = 0.05, 30, 0.1
    theta0, star = [1.0, -2.0, 0.5], [0.0, 1.0, 1.5]
    si = SynapticIntelligence(si_lambda=0.3, eps=xi)
    model = quadratic_run(si, lr, steps, [star], theta0)
    d0 = torch.tensor(theta0, dtype=torch.float64) - torch.tensor(star, dtype=torch.float64)
    r = 1 - lr * H
    omega = lr * H ** 2 * d0 ** 2 * (1 - r ** (2 * steps)) / (1 - r ** 2)
    delta = d0 * (r ** steps - 1)
    torch.testing.assert_close(si.omega["theta"], omega, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(si.importances["theta"], omega / (delta ** 2 + xi), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(si.anchor["theta"], model.theta.detach())
    # the path integral is the drop of each coordinate's loss along the path, times 2 / (2 - lr h): exactly
    # the drop in the gradient-flow limit lr -> 0
    drop = 0.5 * H * (d0 ** 2 - (d0 * r ** steps) ** 2)
    torch.testing.assert_close(si.omega["theta"], drop * 2 / (2 - lr * H), rtol=1e-10, atol=1e-12)


def test_second_experience_follows_the_unregularised_gradient_and_adds_up():
    # Independent scalar recurrence: theta <- theta - lr (h (theta - s2) + 2 c Omega1 (theta - a)); omega2
    # accumulates -h (theta - s2) * step (the gradient without SI's penalty), and the penalty on each iteration
    # is c sum Omega1 (theta - a)^2.
    lr, steps, xi, c = 0.05, 20, 0.1, 0.7
    theta0, s1, s2 = [1.0, -2.0, 0.5], [0.0, 1.0, 1.5], [2.0, 0.0, -1.0]
    probe = LossTerms()
    si = SynapticIntelligence(si_lambda=c, eps=xi)
    quadratic_run(si, lr, steps, [s1, s2], theta0, probe)
    expected_penalty = [0.0] * steps
    omega1_total = []
    for k, h in enumerate(H.tolist()):
        theta, omega1 = theta0[k], 0.0
        for _ in range(steps):
            step = -lr * h * (theta - s1[k])
            omega1 -= h * (theta - s1[k]) * step
            theta += step
        big_omega1 = max(0.0, omega1 / ((theta - theta0[k]) ** 2 + xi))
        anchor = start = theta
        omega2 = 0.0
        for t in range(steps):
            expected_penalty[t] += c * big_omega1 * (theta - anchor) ** 2
            g = h * (theta - s2[k])
            step = -lr * (g + 2 * c * big_omega1 * (theta - anchor))
            omega2 -= g * step
            theta += step
        omega1_total.append(max(0.0, big_omega1 + omega2 / ((theta - start) ** 2 + xi)))
    assert probe.si[:steps] == [None] * steps  # nothing to protect during the first experience
    assert probe.si[steps:] == pytest.approx(expected_penalty, rel=1e-9, abs=1e-12)
    assert si.importances["theta"].tolist() == pytest.approx(omega1_total, rel=1e-9)
    assert si.experiences == 2


def test_importance_function_and_the_clamp_at_zero_by_hand():
    omega, delta = torch.tensor([1.0, -1.0, 0.0]), torch.tensor([1.0, 0.0, 2.0])
    torch.testing.assert_close(si_importance(omega, delta, 0.5), torch.tensor([1 / 1.5, -1 / 0.5, 0.0]))
    # the bookkeeping a hand-written loop calls: one step of +0.5 against gradient -2 (downhill) on the first
    # coordinate, one of +1 along gradient +1 (uphill) on the second
    model = Quadratic(torch.zeros(2, dtype=torch.float64))
    si = SynapticIntelligence(eps=0.5)
    si.begin_experience(model)
    model.theta.grad = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    si.record_gradients()
    si.record_start_of_step()
    with torch.no_grad():
        model.theta.add_(torch.tensor([0.5, 1.0], dtype=torch.float64))
    si.record_step()
    assert si.omega["theta"].tolist() == [1.0, -1.0]  # -g * step
    si.end_experience(model)
    # 1 / (0.5^2 + 0.5); the uphill coordinate's negative importance is clamped to 0 (authors' code)
    assert si.importances["theta"].tolist() == pytest.approx([1 / 0.75, 0.0])


def test_penalty_gradient_and_checkpoint_round_trip():
    si = SynapticIntelligence(si_lambda=2.0)
    model = quadratic_run(si, 0.05, 10, [[0.0, 1.0, 1.5]], [1.0, -2.0, 0.5])
    assert float(si.penalty(model).detach()) == 0.0  # at the anchor
    with torch.no_grad():
        model.theta.add_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    moved = si.penalty(model)
    omega_big = si.importances["theta"]
    expected = 2.0 * (omega_big * torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64) ** 2).sum()
    torch.testing.assert_close(moved.detach(), expected)
    model.theta.grad = None  # the last training step's
    moved.backward()
    torch.testing.assert_close(model.theta.grad, 2 * 2.0 * omega_big * torch.tensor([0.1, -0.2, 0.3],
                                                                                    dtype=torch.float64))
    again = SynapticIntelligence(si_lambda=2.0)
    again.load_state_dict(si.state_dict())
    torch.testing.assert_close(again.penalty(model), si.penalty(model))


def test_grown_parameters_keep_their_old_importance_and_new_units_are_free():
    si = SynapticIntelligence(si_lambda=1.0)
    si.importances, si.anchor = {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, {
        "weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    grown = torch.nn.Linear(3, 4)
    with torch.no_grad():
        grown.weight.fill_(1.0)
        grown.bias.zero_()
    assert float(si.penalty(grown).detach()) == pytest.approx(6.0)  # 6 old weights moved by 1; new rows free
    with pytest.raises(ValueError, match="changed shape from"):
        si.penalty(torch.nn.Linear(2, 2))


def test_strong_si_keeps_a_conflicting_first_experience():
    # Two experiences of the same two classes, in different regions, separated along dimension 0 in opposite
    # directions: naive fine-tuning on the second turns the first's boundary round; SI keeps it.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat_interleave(100)
    x0 = 0.7 * torch.randn(200, 8, generator=g)
    x0[:, 0] += (2 * y - 1) * 2.0
    x1 = 0.7 * torch.randn(200, 8, generator=g)
    x1[:, 0] -= (2 * y - 1) * 2.0
    x1[:, 1] += 4.0
    exps = [Experience(0, CLDataset.from_tensors(x0, y)), Experience(1, CLDataset.from_tensors(x1, y))]

    def accuracy_after(plugins):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=plugins, train_mb_size=20,
                            train_epochs=5, device="cpu", eval_every=-1, generator=torch.Generator().manual_seed(0))
        for exp in exps:
            strategy.train(exp)
        with torch.no_grad():
            return [float((model(inputs).argmax(1) == y).float().mean()) for inputs in (x0, x1)]

    naive = accuracy_after([])
    si = accuracy_after([SynapticIntelligence(si_lambda=20.0, eps=0.1)])
    assert naive[0] < 0.5 and naive[1] > 0.9  # naive forgets the first experience
    assert si[0] > 0.85 and si[1] > 0.9, (naive, si)


@pytest.mark.parametrize("kwargs, match", [
    ({"si_lambda": -1}, "si_lambda must be a non-negative number"),
    ({"eps": 0}, "eps must be a positive number"),
    ({"eps": math.inf}, "eps must be a positive number"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynapticIntelligence(**kwargs)


def test_registered_with_its_options():
    assert "si" in clkernel.available("plugin")
    plugin = clkernel.load("plugin", "si", si_lambda=0.5, eps=0.01)
    assert isinstance(plugin, SynapticIntelligence) and (plugin.si_lambda, plugin.eps) == (0.5, 0.01)
    assert list(clkernel.registry().get("plugin", "si").options()) == ["si_lambda", "eps"]
