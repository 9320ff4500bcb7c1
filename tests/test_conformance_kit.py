"""The conformance kit (:mod:`clkernel.testing`) passes conforming plugins and names the check a broken one fails."""

from __future__ import annotations

import types

import pytest
import torch

import clkernel
from clkernel.discovery import Registry, registry, reset_registry
from clkernel.testing import CHECKS, check_training_plugin


class Anchor:
    """An L2 pull towards the previous experience's weights, with a correct checkpoint."""

    name = "anchor"

    def __init__(self, strength: float = 0.1) -> None:
        self.strength, self.anchor = strength, []

    @clkernel.hookimpl
    def loss_terms(self, state):
        if not self.anchor:
            return None
        return self.strength * sum(((p - a) ** 2).sum() for p, a in zip(state.model.parameters(), self.anchor))

    @clkernel.hookimpl
    def after_training_exp(self, state):
        self.anchor = [p.detach().clone() for p in state.model.parameters()]

    def state_dict(self):
        return {"anchor": list(self.anchor)}

    def load_state_dict(self, state):
        self.anchor = list(state["anchor"])


class DerivedAtExperienceStart:
    """Weighs its penalty by a factor derived from its state in before_training_exp only: a run resumed inside an
    experience (where that event does not fire again) trains without it."""

    name = "derived"

    def __init__(self) -> None:
        self.experiences, self.weight = 0, None

    @clkernel.hookimpl
    def before_training_exp(self, state):
        self.weight = 0.01 * self.experiences

    @clkernel.hookimpl
    def loss_terms(self, state):
        return None if self.weight is None else self.weight * sum(p.square().sum() for p in state.model.parameters())

    @clkernel.hookimpl
    def after_training_exp(self, state):
        self.experiences += 1

    def state_dict(self):
        return {"experiences": self.experiences}

    def load_state_dict(self, state):
        self.experiences = state["experiences"]


class Clip:
    """Stateless: clips gradients."""

    @clkernel.hookimpl
    def before_update(self, state):
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), 1.0)


class ForgetsAnchor(Anchor):
    def load_state_dict(self, state):
        pass


class HalfRestored(Anchor):
    """Checkpoints its anchor but not the counter that scales the penalty."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    @clkernel.hookimpl
    def after_training_exp(self, state):
        super().after_training_exp(state)
        self.seen += 1

    @clkernel.hookimpl
    def loss_terms(self, state):
        term = super().loss_terms(state)
        return None if term is None else term * self.seen


class PickledState(Anchor):
    def state_dict(self):
        return {"anchor": self.anchor, "note": types.SimpleNamespace(x=1)}


class LiveState(Anchor):
    def state_dict(self):
        return {"anchor": self.anchor}

    @clkernel.hookimpl
    def after_training_exp(self, state):
        if self.anchor:
            with torch.no_grad():
                for a, p in zip(self.anchor, state.model.parameters()):
                    a.copy_(p)
        else:
            super().after_training_exp(state)


class NoLoad(Clip):
    def state_dict(self):
        return {}


class Counts(Clip):
    """Keeps state but has no state_dict."""

    def __init__(self) -> None:
        self.steps = 0

    @clkernel.hookimpl
    def after_update(self, state):
        self.steps += 1


class Explodes(Clip):
    @clkernel.hookimpl
    def loss_terms(self, state):
        return state.mb_output.sum() * float("inf")


def test_conforming_plugins_pass_every_check():
    for factory in (Anchor, Clip):
        results = check_training_plugin(factory)
        assert [(r.check, r.status) for r in results] == [("options", "skipped"), *((c, "passed") for c in CHECKS[1:])]


@pytest.mark.parametrize("factory, check, words", [
    (ForgetsAnchor, "state_dict", "after load_state_dict()"),
    (HalfRestored, "resume", "model tensors differ"),
    (PickledState, "state_dict", "weights_only=True"),
    (LiveState, "state_dict", "return copies"),
    (NoLoad, "state_dict", "but not load_state_dict"),
    (Counts, "state_dict", "attributes['steps'] (0 vs"),
    (Explodes, "compose", "not finite"),
])
def test_each_failure_names_its_check(factory, check, words):
    with pytest.raises(AssertionError, match=f"fails check '{check}'") as info:
        check_training_plugin(factory)
    assert words in str(info.value)


def test_options_check_compares_the_registered_factory_with_clkernel_show():
    def unannotated(strength=None):
        return Anchor()

    module = types.SimpleNamespace(register_plugins=clkernel.hookimpl(
        lambda register: (register("kit-anchor", Anchor), register("kit-bare", unannotated))))
    reg = Registry.from_entry_points()
    reg.add_module(module, "kit")
    previous = registry()
    reset_registry(reg)
    try:
        assert check_training_plugin(name="kit-anchor", options={"strength": 0.5})[0].status == "passed"
        with pytest.raises(AssertionError, match="fails check 'options'.*'strength' has no annotation and a default "
                                                 "of None, which gives no type"):
            check_training_plugin(name="kit-bare")
        with pytest.raises(AssertionError, match="fails check 'options'.*does not take"):
            check_training_plugin(Anchor, name="kit-anchor", options={"strenght": 0.5})
    finally:
        reset_registry(previous)


def test_resume_is_checked_at_an_experience_end_and_inside_an_experience():
    # at the end only (resume_inside=False) it resumes faithfully; inside, the derived weight is missing
    results = check_training_plugin(DerivedAtExperienceStart, resume_inside=False)
    assert results[-1].status == "passed" and results[-1].detail == "resumed after 2 of 4 experiences"
    with pytest.raises(AssertionError, match=r"fails check 'resume': after resuming inside experience 3, \d+ of "
                                             r"\d+ model tensors differ"):
        check_training_plugin(DerivedAtExperienceStart)


def test_unusable_arguments_are_value_errors():
    with pytest.raises(ValueError, match="factory or a registered plugin name"):
        check_training_plugin()
    with pytest.raises(ValueError, match="resume_at"):
        check_training_plugin(Clip, resume_at=4)


def test_model_and_benchmark_can_be_given(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    results = check_training_plugin(Anchor, model=blobs.make_model(num_classes=bench.num_classes), benchmark=bench,
                                    resume_at=1)
    assert results[-1].detail == ("resumed after 1 of 3 experiences and inside experience 2 of 3, after its first "
                                  "minibatch")
    results = check_training_plugin(Anchor, model=lambda: blobs.make_model(num_classes=bench.num_classes),
                                    benchmark=bench)
    assert all(r.status == "passed" for r in results[1:])
