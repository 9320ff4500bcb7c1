"""ema: the average is the hand-computed exponential moving average of the weights after each optimizer update,
evaluation runs with it and training never sees it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import clkernel
from clkernel_training import EMA, GradAccumulation


class Weights:
    """Records the parameters at the start, after every optimizer update that changed them, and those the first
    evaluation minibatch of each evaluation ran with (with the plugin's average and the live weights then)."""

    name = "weights"

    def __init__(self, ema: EMA) -> None:
        self.ema, self.start, self.updates, self.evals = ema, None, [], []
        self._pending: tuple[Any, Any] | None = None

    @staticmethod
    def read(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    @clkernel.hookimpl
    def before_training(self, state: Any) -> None:
        if self.start is None:
            self.start = self.read(state.model)

    @clkernel.hookimpl
    def after_update(self, state: Any) -> None:
        if any(p.grad is not None for p in state.model.parameters()):
            self.updates.append(self.read(state.model))

    @clkernel.hookimpl(tryfirst=True)  # before the plugin swaps the average in
    def before_eval(self, state: Any) -> None:
        self._pending = (self.read(state.model), {n: t.clone() for n, t in (self.ema.average or {}).items()})

    @clkernel.hookimpl
    def before_eval_iteration(self, state: Any) -> None:
        if self._pending is not None:
            live, average = self._pending
            self.evals.append((self.read(state.model), average, live))
            self._pending = None


def hand_average(start, updates, decay, every, warmup):
    avg, n = {k: v.double() for k, v in start.items()}, 0
    for i, params in enumerate(updates):
        if (i + 1) % every:
            continue
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        avg = {k: d * avg[k] + (1 - d) * params[k].double() for k in avg}
        n += 1
    return avg, n


@pytest.mark.parametrize("every, warmup", [(1, False), (3, True)])
def test_the_average_is_the_exponential_moving_average_of_the_weights_after_each_update(digits, make_strategy,
                                                                                        every, warmup):
    ema = EMA(decay=0.9, every=every, warmup=warmup)
    weights = Weights(ema)
    make_strategy([ema, weights], epochs=2).train(digits.train_stream)
    expected, n = hand_average(weights.start, weights.updates, 0.9, every, warmup)
    assert ema.updates == n == len(weights.updates) // every and n > 10
    for name, avg in ema.average.items():
        assert torch.allclose(avg.double(), expected[name], rtol=0, atol=1e-6), name
    last = weights.updates[-1]
    assert max(float((ema.average[k] - last[k]).abs().max()) for k in last) > 1e-3  # not the weights themselves


@pytest.mark.parametrize("eval_with_ema", [True, False])
def test_evaluation_runs_with_the_average_and_training_never_sees_it(digits, make_strategy, eval_with_ema):
    ema = EMA(decay=0.8, eval_with_ema=eval_with_ema)
    weights = Weights(ema)
    strategy = make_strategy([ema, weights, clkernel.load("metric", "accuracy")], epochs=2, eval_every=1)
    strategy.train(digits.train_stream, eval_streams=[digits.test_stream])
    assert len(weights.evals) == 4  # after epoch 0 and after the experience, for both experiences
    for seen, average, live in weights.evals:
        assert all(torch.equal(seen[k], (average if eval_with_ema else live)[k]) for k in seen)
        assert not all(torch.equal(average[k], live[k]) for k in seen)
    # after each evaluation the trained weights came back: the next update started from them
    final = Weights.read(strategy.state.model)
    assert all(torch.equal(final[k], weights.updates[-1][k]) for k in final)


def test_only_real_optimizer_updates_count_with_gradient_accumulation(digits, make_strategy):
    ema = EMA(decay=0.5)
    make_strategy([GradAccumulation(4), ema]).train(digits.train_stream[0])
    iterations = -(-len(digits.train_stream[0].dataset) // 32)
    assert ema.updates == ema.steps == -(-iterations // 4)


def test_reset_per_experience_restarts_the_average_from_the_current_weights(digits, make_strategy):
    ema = EMA(decay=0.99, reset_per_experience=True)
    weights = Weights(ema)
    strategy = make_strategy([ema, weights])
    strategy.train(digits.train_stream[0])
    first = len(weights.updates)
    strategy.train(digits.train_stream[1])
    expected, _ = hand_average(weights.updates[first - 1], weights.updates[first:], 0.99, 1, False)
    assert all(torch.allclose(ema.average[k].double(), expected[k], atol=1e-6) for k in expected)


def test_a_failed_evaluation_gives_the_trained_weights_back_when_the_run_closes(digits, make_strategy):
    class Broken:
        name = "broken"

        @clkernel.hookimpl
        def after_eval_iteration(self, state: Any) -> None:
            raise RuntimeError("broken metric")

    ema = EMA(decay=0.5)
    strategy = make_strategy([ema, Broken()])
    with pytest.raises(clkernel.PluginError, match="broken metric"), strategy:
        strategy.train(digits.train_stream[0], eval_streams=[digits.test_stream])
    trained = {n: p.detach().clone() for n, p in strategy.state.model.named_parameters()}
    assert not all(torch.equal(trained[k], ema.average[k]) for k in trained)  # the average is not in the model
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    ema.copy_to(model)
    assert all(torch.equal(p, ema.average[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"decay": 1.0}, r"ema: decay must be a number in \[0, 1\), got 1.0"),
    ({"every": 0}, "ema: every must be a positive integer, got 0"),
    ({"warmup": 1}, "ema: warmup must be true or false, got 1"),
])
def test_bad_options_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EMA(**kwargs)
