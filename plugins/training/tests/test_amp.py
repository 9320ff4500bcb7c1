"""amp: bfloat16 on CPU trains split-digits to within 0.02 of float32's accuracy, composes with replay, EWC and
LwF, never leaves autocast on after an exception, and with float16 scales the loss and skips non-finite steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import clkernel
from clkernel_training import AMP


class Dtypes:
    """Records the dtype of the first linear layer's output inside the loop's forward passes (not in the plugins'
    own forward passes, such as EWC's importances or LwF's teacher), of state.mb_output, and the loss terms."""

    name = "dtypes"

    def __init__(self, model: torch.nn.Module) -> None:
        self.inner: dict[str, set[torch.dtype]] = {"train": set(), "eval": set()}
        self.outputs: set[torch.dtype] = set()
        self.terms: dict[str, list[torch.Tensor]] = {}
        self._phase: str | None = None
        model[1].register_forward_hook(lambda m, i, o: self._phase and self.inner[self._phase].add(o.dtype))

    @clkernel.hookimpl
    def before_forward(self, state: Any) -> None:
        self._phase = "train"

    @clkernel.hookimpl
    def after_forward(self, state: Any) -> None:
        self._phase = None
        self.outputs.add(state.mb_output.dtype)

    @clkernel.hookimpl
    def before_backward(self, state: Any) -> None:
        for name, term in state.loss_terms.items():
            self.terms.setdefault(name, []).append(term.detach())

    @clkernel.hookimpl
    def before_eval_forward(self, state: Any) -> None:
        self._phase = "eval"

    @clkernel.hookimpl
    def after_eval_forward(self, state: Any) -> None:
        self._phase = None


def train(digits, make_strategy, make_mlp, plugins, *, epochs=3, model=None):
    model = model if model is not None else make_mlp(0)
    dtypes = Dtypes(model)
    accuracy = clkernel.load("metric", "accuracy")
    strategy = make_strategy([*plugins, dtypes, accuracy], epochs=epochs, lr=0.05, model=model)
    after_first = strategy.train(digits.train_stream[0], eval_streams=[digits.test_stream])
    results = strategy.train(digits.train_stream[1], eval_streams=[digits.test_stream])
    return after_first, results, dtypes


def test_bfloat16_on_cpu_trains_to_within_two_points_of_float32(digits, make_strategy, make_mlp):
    first32, last32, d32 = train(digits, make_strategy, make_mlp, [])
    first16, last16, d16 = train(digits, make_strategy, make_mlp, [AMP()])
    assert d32.inner == {"train": {torch.float32}, "eval": {torch.float32}}
    assert d16.inner == {"train": {torch.bfloat16}, "eval": {torch.bfloat16}}  # training and evaluation
    assert d16.outputs == {torch.float32}  # the criterion and loss terms get float32 logits
    for f32, b16, key in ((first32, first16, "acc_exp/eval/test/exp000"), (last32, last16, "acc_exp/eval/test/exp001"),
                          (last32, last16, "acc_stream/eval/test")):
        assert abs(float(b16[key]) - float(f32[key])) <= 0.02, (key, float(b16[key]), float(f32[key]))
    assert float(first32["acc_exp/eval/test/exp000"]) > 0.9  # both learn


def test_bfloat16_composes_with_replay_ewc_and_lwf(digits, make_strategy, make_mlp):
    plugins = [AMP(), clkernel.load("plugin", "replay", mem_size=100, seed=0),
               clkernel.load("plugin", "ewc", ewc_lambda=10.0), clkernel.load("plugin", "lwf", alpha=1.0)]
    _, results, dtypes = train(digits, make_strategy, make_mlp, plugins, epochs=1)
    assert dtypes.inner["train"] == {torch.bfloat16}
    assert set(dtypes.terms) == {"ewc", "lwf"}  # both terms were added in experience 1
    for name, terms in dtypes.terms.items():
        assert all(t.dtype == torch.float32 and bool(torch.isfinite(t)) for t in terms), name
        assert max(float(t) for t in terms) > 0, name
    assert 0.3 < float(results["acc_stream/eval/test"]) <= 1


class Faulty(torch.nn.Module):
    """Raises inside its forward pass at the given call."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.net(x)
        if self.calls == self.fail_at:
            raise RuntimeError("broken forward")
        return out


def test_an_exception_inside_the_forward_pass_leaves_neither_autocast_on_nor_the_model_wrapped(digits,
                                                                                                make_strategy):
    model = Faulty(fail_at=3)
    with pytest.raises(RuntimeError, match="broken forward"):
        make_strategy([AMP()], model=model).train(digits.train_stream[0])
    assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled()
    assert "forward" not in model.__dict__
    assert model(torch.zeros(2, 1, 8, 8)).dtype == torch.float32


class Inject:
    """Makes one gradient element infinite at one training iteration, and records parameters and losses."""

    name = "inject"

    def __init__(self, at: int) -> None:
        self.at, self.losses, self.params = at, [], {}

    @clkernel.hookimpl
    def before_backward(self, state: Any) -> None:
        self.losses.append(state.loss)

    @clkernel.hookimpl
    def after_backward(self, state: Any) -> None:
        if state.iteration == self.at:
            next(state.model.parameters()).grad[0, 0] = float("inf")

    @clkernel.hookimpl
    def before_forward(self, state: Any) -> None:
        self.params[state.iteration, "before"] = [p.detach().clone() for p in state.model.parameters()]

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        self.params[state.iteration - 1, "after"] = [p.detach().clone() for p in state.model.parameters()]
        self.losses[-1] = (self.losses[-1], state.loss)


def test_float16_scales_the_loss_and_skips_a_step_whose_gradients_are_not_finite(digits, make_strategy):
    inject = Inject(at=2)
    amp = AMP(dtype="float16", init_scale=1024.0, growth_interval=1000)
    strategy = make_strategy([inject, amp])  # inject's before_backward sees the loss before amp scales it
    strategy.train(digits.train_stream[0])
    assert amp.scaler is not None and amp.skipped_steps == 1
    assert amp.scaler.get_scale() == 512.0  # halved once, never grown
    for i in range(len(inject.losses)):
        before, after = inject.params[i, "before"], inject.params[i, "after"]
        unchanged = all(torch.equal(a, b) for a, b in zip(before, after))
        assert unchanged == (i == 2), i  # only the injected step was skipped
    for unscaled, seen_by_metrics in inject.losses:
        assert seen_by_metrics is unscaled  # after backward, state.loss is the unscaled loss again
    assert strategy.state.optimizer.state[next(strategy.state.model.parameters())]["momentum_buffer"] is not None


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "float32"}, "amp: dtype must be one of auto, bfloat16, float16, got 'float32'"),
    ({"grad_scaler": "yes"}, "amp: grad_scaler must be true or false, got 'yes'"),
    ({"init_scale": 0}, "amp: init_scale must be a positive number, got 0"),
    ({"growth_interval": 0}, "amp: growth_interval must be a positive integer, got 0"),
])
def test_bad_options_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AMP(**kwargs)


def test_state_round_trip_keeps_the_scale_and_its_growth_tracker(digits, make_strategy):
    amp = AMP(dtype="float16", init_scale=256.0, growth_interval=5)
    make_strategy([amp]).train(digits.train_stream[0])
    state = amp.state_dict()
    steps = -(-len(digits.train_stream[0].dataset) // 32)
    assert amp.skipped_steps == 0 and state["scaler"]["scale"] == 256.0 * 2 ** (steps // 5)
    assert state["scaler"]["_growth_tracker"] == steps % 5
    fresh = AMP(dtype="float16", init_scale=256.0, growth_interval=5)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    make_strategy([fresh]).train(digits.train_stream[1])
    more = -(-len(digits.train_stream[1].dataset) // 32)
    assert fresh.skipped_steps == 0
    assert fresh.scaler.get_scale() == state["scaler"]["scale"] * 2 ** ((steps % 5 + more) // 5)
