"""RWalk: Fisher, path scores and penalty weights against an independent scalar recurrence; plugin; options."""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Strategy
from clkernel_rwalk import RWalk

H = [0.5, 2.0, 4.0]  # curvatures of the quadratic loss 0.5 * sum_k h_k (theta_k - star_k)^2
EPS = torch.finfo(torch.float64).eps


class Quadratic(torch.nn.Module):
    """``theta - x``: with every row of ``x`` equal to ``star`` and :func:`quadratic_loss`, the loss is
    ``0.5 * sum_k h_k (theta_k - star_k)^2`` and its gradient ``h * (theta - star)``."""

    def __init__(self, theta0: list[float]) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta - x


def quadratic_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.tensor(H, dtype=torch.float64) * out.pow(2)).mean(0).sum()


def optimum(star: list[float], index: int) -> Experience:
    x = torch.tensor(star, dtype=torch.float64).repeat(4, 1)
    return Experience(index, CLDataset.from_tensors(x, torch.zeros(4, dtype=torch.long)))


class LossTerms:
    name = "loss-terms"

    def __init__(self) -> None:
        self.rwalk: list[float | None] = []

    @clkernel.hookimpl
    def before_backward(self, state):
        term = state.loss_terms.get("rwalk")
        self.rwalk.append(None if term is None else float(term.detach()))


def reference(optima, theta0, lr, steps, lam, alpha, delta_t):
    """RWalk on the quadratic with plain SGD, one coordinate at a time except the max-normalisation: an
    independent implementation in Python floats. Returns the penalty weights after each experience and the
    penalty on every iteration."""
    k = len(theta0)
    theta, fisher, loss, ckpt, scores = list(theta0), [0.0] * k, [0.0] * k, list(theta0), [0.0] * k
    exp_scores, anchor, weights = None, None, None
    penalties, all_weights, iteration, started = [], [], 0, False
    for star in optima:
        for _ in range(steps):
            penalties.append(None if weights is None else
                             lam * sum(weights[i] * (theta[i] - anchor[i]) ** 2 for i in range(k)))
            g = [H[i] * (theta[i] - star[i]) for i in range(k)]
            fisher = [g[i] ** 2 if not started else alpha * g[i] ** 2 + (1 - alpha) * fisher[i] for i in range(k)]
            started = True
            total = [g[i] + (0.0 if weights is None else 2 * lam * weights[i] * (theta[i] - anchor[i]))
                     for i in range(k)]
            new = [theta[i] - lr * total[i] for i in range(k)]
            loss = [loss[i] - g[i] * (new[i] - theta[i]) for i in range(k)]
            theta = new
            iteration += 1
            if iteration % delta_t == 0:
                scores = [scores[i] + loss[i] / (0.5 * fisher[i] * (theta[i] - ckpt[i]) ** 2 + EPS) for i in range(k)]
                loss, ckpt = [0.0] * k, list(theta)
        exp_scores = list(scores) if exp_scores is None else [0.5 * (exp_scores[i] + scores[i]) for i in range(k)]
        scores, anchor = [0.0] * k, list(theta)
        max_f, max_s = max(fisher), max(max(s, 0.0) for s in exp_scores)
        weights = [fisher[i] / max_f + max(exp_scores[i], 0.0) / max_s for i in range(k)]
        all_weights.append(weights)
    return all_weights, penalties


def test_weights_and_penalty_match_an_independent_recurrence():
    optima, theta0, lr, steps, lam, alpha, delta_t = [[0.0, 1.0, 1.5], [2.0, 0.0, -1.0]], [1.0, -2.0, 0.5], \
        0.05, 7, 0.3, 0.9, 3
    rwalk, probe = RWalk(ewc_lambda=lam, alpha=alpha, delta_t=delta_t), LossTerms()
    model = Quadratic(theta0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=lr), quadratic_loss, plugins=[rwalk, probe],
                        train_mb_size=4, train_epochs=steps, device="cpu", eval_every=-1)
    weights = []
    for i, star in enumerate(optima):
        strategy.train(optimum(star, i))
        weights.append(rwalk.penalty_weights["theta"].tolist())
    expected_weights, expected_penalties = reference(optima, theta0, lr, steps, lam, alpha, delta_t)
    for got, want in zip(weights, expected_weights):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert probe.rwalk[:steps] == [None] * steps
    assert probe.rwalk[steps:] == pytest.approx(expected_penalties[steps:], rel=1e-9, abs=1e-12)
    assert max(weights[0]) <= 2.0 and min(weights[0]) >= 0.0  # each of the two terms normalised into [0, 1]


def test_fisher_is_a_moving_average_of_squared_gradients():
    rwalk = RWalk(alpha=0.25, delta_t=100)
    model = Quadratic([0.0, 0.0, 0.0])
    rwalk.bind(model)
    for g in ([1.0, 2.0, 0.0], [3.0, 0.0, -2.0]):
        model.theta.grad = torch.tensor(g, dtype=torch.float64)
        rwalk.record_gradients()
    # first F = g1^2, then 0.25 g2^2 + 0.75 F
    assert rwalk.fisher["theta"].tolist() == pytest.approx([0.25 * 9 + 0.75 * 1, 0.75 * 4, 0.25 * 4])


def test_checkpoint_round_trip_keeps_the_penalty():
    rwalk = RWalk(ewc_lambda=2.0, delta_t=2)
    model = Quadratic([1.0, -2.0, 0.5])
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), quadratic_loss, plugins=[rwalk],
                        train_mb_size=4, train_epochs=5, device="cpu", eval_every=-1)
    strategy.train(optimum([0.0, 1.0, 1.5], 0))
    with torch.no_grad():
        model.theta.add_(0.3)
    again = RWalk(ewc_lambda=2.0, delta_t=2)
    again.load_state_dict(rwalk.state_dict())
    assert float(rwalk.penalty(model).detach()) > 0.0
    torch.testing.assert_close(again.penalty(model), rwalk.penalty(model))


def test_strong_rwalk_keeps_a_conflicting_first_experience():
    # Two experiences of the same two classes, in different regions, separated along dimension 0 in opposite
    # directions: naive fine-tuning on the second turns the first's boundary round; RWalk keeps it.
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
    rwalk = accuracy_after([RWalk(ewc_lambda=5.0)])
    assert naive[0] < 0.5 and naive[1] > 0.9
    assert rwalk[0] > 0.85 and rwalk[1] > 0.9, (naive, rwalk)


@pytest.mark.parametrize("kwargs, match", [
    ({"ewc_lambda": -0.1}, "ewc_lambda must be a non-negative number"),
    ({"alpha": 1.1}, "alpha must be a number in"),
    ({"delta_t": 0}, "delta_t must be a positive integer"),
    ({"delta_t": 2.5}, "delta_t must be a positive integer"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RWalk(**kwargs)


def test_registered_with_its_options():
    plugin = clkernel.load("plugin", "rwalk", ewc_lambda=0.5, alpha=0.8, delta_t=5)
    assert isinstance(plugin, RWalk) and (plugin.ewc_lambda, plugin.alpha, plugin.delta_t) == (0.5, 0.8, 5)
    assert list(clkernel.registry().get("plugin", "rwalk").options()) == ["ewc_lambda", "alpha", "delta_t"]
