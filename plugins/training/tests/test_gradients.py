"""grad-accumulation equals one k-times-larger minibatch of a plain PyTorch loop (to 1e-6); grad-clip clips the
gradient the optimizer uses, by norm or by value."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import clkernel
from clkernel import Strategy
from clkernel.discovery import parse_options
from clkernel_training import AMP, GradAccumulation, GradClip


def optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    return torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)


def plain_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, dataset: Any, batch: int, epochs: int,
               seed: int) -> None:
    """A hand-written PyTorch loop over the same sample order as the kernel's loader: each epoch, the order of a
    ``DistributedSampler`` (one process) seeded by a number drawn from the loop's generator."""
    x, y, _ = dataset.get_batch(torch.arange(len(dataset)))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        epoch_seed = int(torch.randint(2 ** 31, (1,), generator=g))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(epoch_seed))
        for start in range(0, len(dataset), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


class NoLength:
    """Replaces the loader with an iterable that has no length (as some plugins' loaders)."""

    name = "no-length"

    @clkernel.hookimpl
    def before_training_epoch(self, state: Any) -> None:
        if not isinstance(state.dataloader, Unsized):
            state.dataloader = Unsized(state.dataloader)


class Unsized:
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        return iter(self.loader)


@pytest.mark.parametrize("opt_name, unsized", [("sgd", False), ("adam", False), ("sgd", True)],
                         ids=["sgd", "adam", "sgd-loader-without-length"])
def test_accumulating_k_minibatches_equals_one_k_times_larger_minibatch(digits, make_mlp, opt_name, unsized):
    k, mb, epochs = 4, 8, 2
    exp = digits.train_stream[0]
    n = len(exp.dataset)
    assert n % (k * mb) != 0  # the epoch ends with a group cut short: its step is checked too
    model = make_mlp(0)
    plugins = [NoLength()] * unsized + [GradAccumulation(k)]
    Strategy(model, optimizer(opt_name, model), plugins=plugins, train_mb_size=mb, train_epochs=epochs,
             device="cpu", generator=torch.Generator().manual_seed(1)).train(exp)
    reference = make_mlp(0)
    plain_loop(reference, optimizer(opt_name, reference), exp.dataset.train(), k * mb, epochs, seed=1)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), (name, float((p - q).abs().max()))
    small = make_mlp(0)  # not vacuous: minibatches of 8 without accumulation end elsewhere
    plain_loop(small, optimizer(opt_name, small), exp.dataset.train(), mb, epochs, seed=1)
    assert max(float((p - q).detach().abs().max()) for p, q in zip(small.parameters(), reference.parameters())) > 1e-2


class Grads:
    """Records the gradients at before_update (before grad-clip, which runs last there) and after the step."""

    name = "grads"

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor] | None] = []
        self.after: list[list[torch.Tensor] | None] = []

    @staticmethod
    def read(state: Any) -> list[torch.Tensor] | None:
        grads = [p.grad for p in state.model.parameters()]
        return None if all(g is None for g in grads) else [g.detach().clone() for g in grads]

    @clkernel.hookimpl
    def before_update(self, state: Any) -> None:
        self.before.append(self.read(state))

    @clkernel.hookimpl
    def after_update(self, state: Any) -> None:
        self.after.append(self.read(state))


@pytest.mark.parametrize("norm_type, max_norm", [(2.0, 0.5), (1.0, 5.0), ("inf", 0.03)])
def test_clipping_by_norm_scales_every_gradient_by_max_norm_over_the_total_norm(digits, make_strategy, norm_type,
                                                                                max_norm):
    grads = Grads()
    # grad-clip listed first: it still runs last at before_update, after the recorder
    make_strategy([GradClip(max_norm=max_norm, norm_type=norm_type), grads], lr=0.05).train(digits.train_stream[0])
    clipped = 0
    for before, after in zip(grads.before, grads.after):
        flat = torch.cat([g.flatten() for g in before]).double()
        total = float(flat.abs().max()) if norm_type == "inf" else float(flat.abs().pow(norm_type).sum()) ** (
            1 / norm_type)
        factor = min(1.0, max_norm / (total + 1e-6))
        clipped += factor < 1
        for b, a in zip(before, after):
            assert torch.allclose(a, b * factor, rtol=1e-5, atol=1e-7)
    assert clipped > len(grads.before) // 2  # not vacuous


def test_clipping_by_value_clamps_every_element(digits, make_strategy):
    grads = Grads()
    make_strategy([GradClip(clip_value=0.01), grads]).train(digits.train_stream[0])
    assert any(float(g.abs().max()) > 0.01 for gs in grads.before for g in gs)
    for before, after in zip(grads.before, grads.after):
        for b, a in zip(before, after):
            assert torch.equal(a, b.clamp(-0.01, 0.01))


def test_clipping_applies_to_the_accumulated_gradient(digits, make_strategy):
    grads = Grads()
    make_strategy([GradClip(max_norm=0.2), GradAccumulation(3), grads]).train(digits.train_stream[0])
    iterations = math.ceil(len(digits.train_stream[0].dataset) / 32)
    steps = [i for i, g in enumerate(grads.after) if g is not None]
    assert steps == [i for i in range(iterations) if i % 3 == 2 or i == iterations - 1]
    norms = [float(torch.cat([g.flatten() for g in grads.after[i]]).norm()) for i in steps]
    assert max(norms) == pytest.approx(0.2, rel=1e-4)  # clipped to max_norm: the accumulated gradient's norm


def test_float16_gradients_are_unscaled_before_clipping(digits, make_strategy):
    """amp unscales first (tryfirst), grad-clip clips last (trylast), whatever the list order."""
    grads = Grads()
    amp = AMP(dtype="float16", init_scale=2.0 ** 10)
    make_strategy([GradClip(max_norm=0.5), grads, amp]).train(digits.train_stream[0])
    before = [torch.cat([g.flatten() for g in gs]).norm() for gs in grads.before if gs is not None]
    assert max(float(n) for n in before) < 50  # true gradients (scaled ones would be ~1000 times larger)
    after = [float(torch.cat([g.flatten() for g in gs]).norm()) for gs in grads.after if gs is not None]
    assert max(after) <= 0.5 + 1e-4


@pytest.mark.parametrize("kwargs, message", [
    ({}, "grad-clip: give exactly one of max_norm .* and clip_value"),
    ({"max_norm": 1.0, "clip_value": 1.0}, "give exactly one of max_norm"),
    ({"max_norm": 0}, "grad-clip: max_norm must be a positive number, got 0"),
    ({"clip_value": -1.0}, "grad-clip: clip_value must be a positive number, got -1.0"),
    ({"max_norm": 1.0, "norm_type": "two"}, "grad-clip: norm_type must be a positive number, got 'two'"),
])
def test_bad_clipping_options_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradClip(**kwargs)


def test_bad_accumulation_steps_are_refused():
    with pytest.raises(ValueError, match="grad-accumulation: steps must be a positive integer, got 0"):
        GradAccumulation(0)


def test_command_line_options():
    assert parse_options("plugin", "grad-clip:max_norm=1,norm_type=inf") == (
        "grad-clip", {"max_norm": 1.0, "norm_type": "inf"})
    assert GradClip(**parse_options("plugin", "grad-clip:max_norm=1,norm_type=inf")[1]).norm_type == math.inf
    assert parse_options("plugin", "grad-accumulation:steps=4") == ("grad-accumulation", {"steps": 4})
