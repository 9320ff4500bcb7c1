"""Less-Forgetful Learning (Jung, Ju, Jung & Kim, 2016, "Less-forgetting Learning in Deep Neural Networks",
arXiv:1607.00122), with the semantics of Avalanche's ``LFLPlugin``.

The feature extractor is the model minus its classifier: the features of a sample are the input of the model's
classifier submodule (named by the ``classifier`` option; every model of clkernel-models calls it
``classifier``), flattened to ``(B, D)``. After each experience a frozen copy of the model is kept; on every
later training minibatch ``x`` the loss gets::

    lambda_e * mean over samples and feature units of (f(x) - f_prev(x))^2

(``torch.nn.functional.mse_loss``, as Avalanche; the paper's per-sample ``1/2 ||f - f_prev||^2`` is this times
``D / 2`` before averaging). From the second experience the classifier's existing parameters are frozen
(``requires_grad = False``), which keeps the decision boundaries (the paper's first property); units or heads a
dynamic classifier adds later still train.

The current features are read from the loop's own forward pass (a forward pre-hook on the classifier, active for
that one call), so there is no extra pass; the frozen model runs once per minibatch in eval mode. Avalanche
recomputes the current features in eval mode; the two agree for models without dropout or batch normalisation.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn.functional as F

import clkernel
from clkernel import TrainState, model_forward
from clkernel.validate import non_negative_number

__all__ = ["LFL", "classifier_inputs", "find_classifier"]


def find_classifier(model: torch.nn.Module, classifier: str, owner: str = "lfl") -> torch.nn.Module:
    """The submodule of ``model`` named ``classifier`` (a dotted path such as ``"classifier"`` or ``"3"``).

    :raises ValueError: naming the model's class and its submodules when there is none of that name.
    """
    try:
        return model.get_submodule(classifier)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"{owner}: {type(model).__name__} has no submodule {classifier!r} to take as its classifier "
                         f"(its submodules: {', '.join(names) or 'none'}); set classifier=NAME to the module whose "
                         f"input is the features (e.g. classifier={names[-1]!r})" if names else
                         f"{owner}: {type(model).__name__} has no submodules; LFL needs a classifier submodule whose "
                         f"input is the features") from None


class _Capture:
    """A forward pre-hook keeping the (flattened) first input of the module it is registered on."""

    def __init__(self) -> None:
        self.armed = True
        self.value: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if self.armed:
            self.value = args[0].flatten(1)


def classifier_inputs(model: torch.nn.Module, x: Any, task_labels: torch.Tensor,
                      classifier: str = "classifier") -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``x`` (through :func:`clkernel.model_forward`) and return ``(features, output)``: the
    input of its ``classifier`` submodule flattened to ``(B, D)``, and the model's output.

    :raises ValueError: when ``model`` has no such submodule, or its forward pass did not call it.
    """
    module = find_classifier(model, classifier)
    capture = _Capture()
    handle = module.register_forward_pre_hook(capture)
    try:
        out = model_forward(model, x, task_labels)
    finally:
        handle.remove()
    if capture.value is None:
        raise ValueError(f"lfl: the forward pass of {type(model).__name__} did not call its submodule {classifier!r}")
    return capture.value, out


class LFL:
    """Less-Forgetful Learning (Jung et al., 2016) as a training plugin; the module docstring gives the term.

    :param lambda_e: weight of the feature distance (>= 0); the continual-learning-baselines Permuted MNIST
        configuration uses 1e-4.
    :param classifier: dotted name of the model's classifier submodule; the features are its input.
    :param freeze_classifier: from the second experience, keep the classifier's existing parameters fixed
        (the paper and Avalanche do).
    :raises ValueError: for a negative ``lambda_e``; at the first experience, naming the model, when it has no
        submodule ``classifier``.
    """

    name = "lfl"

    def __init__(self, lambda_e: float = 1e-4, classifier: str = "classifier", freeze_classifier: bool = True) -> None:
        self.lambda_e = non_negative_number(lambda_e, "lambda_e", self.name)
        if not isinstance(classifier, str) or not classifier:
            raise ValueError(f"{self.name}: classifier must be the name of a submodule, got {classifier!r}")
        self.classifier = classifier
        self.freeze_classifier = bool(freeze_classifier)
        self.prev_model: torch.nn.Module | None = None
        self.experiences = 0
        self._prev_capture = _Capture()
        self._capture = _Capture()
        self._handle: Any = None
        self._pending: Mapping[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ the frozen model

    def freeze_previous(self, model: torch.nn.Module, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Keep a frozen copy of ``model`` (eval mode, no gradients) as the previous model, with ``weights`` (a
        ``state_dict``) loaded into it when given. The plugin calls it after each experience.

        :raises ValueError: when the copy has no submodule ``classifier``.
        """
        prev = copy.deepcopy(model).eval()
        if weights is not None:
            prev.load_state_dict(weights)
        for p in prev.parameters():
            p.requires_grad_(False)
        self._prev_capture = _Capture()
        find_classifier(prev, self.classifier).register_forward_pre_hook(self._prev_capture)
        self.prev_model = prev

    @torch.no_grad()
    def previous_features(self, x: Any, task_labels: torch.Tensor) -> torch.Tensor:
        """The frozen model's features for ``x``, ``(B, D)``.

        :raises RuntimeError: before the first experience ends.
        """
        if self.prev_model is None:
            raise RuntimeError("lfl: no previous model before the first experience ends")
        self._prev_capture.value = None
        model_forward(self.prev_model, x, task_labels)
        if self._prev_capture.value is None:
            raise ValueError(f"lfl: the forward pass of {type(self.prev_model).__name__} did not call its submodule "
                             f"{self.classifier!r}")
        return self._prev_capture.value

    def penalty(self, features: torch.Tensor, x: Any, task_labels: torch.Tensor) -> torch.Tensor | None:
        """``lambda_e * mse(features, previous_features(x))``: a scalar, differentiable with respect to
        ``features`` (the current model's, ``(B, D)``); None before the first experience ends."""
        if self.prev_model is None:
            return None
        return self.lambda_e * F.mse_loss(features, self.previous_features(x, task_labels))

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        module = find_classifier(state.model, self.classifier)  # fails early, naming the model
        if self._pending is not None:  # loaded from a checkpoint: the live model gives the structure
            self.freeze_previous(state.model, self._pending)
            self._pending = None
        if self.freeze_classifier and self.experiences > 0:
            for p in module.parameters():
                p.requires_grad_(False)

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if self._handle is None:  # after model adaptation: the classifier the forward pass will call
            self._handle = find_classifier(state.model, self.classifier).register_forward_pre_hook(self._capture)

    @clkernel.hookimpl
    def before_forward(self, state: TrainState) -> None:
        if self._handle is None:  # a run resumed inside an experience: the two events above did not fire again
            self.before_training_exp(state)
            self.before_training_epoch(state)
        self._capture.armed, self._capture.value = True, None

    @clkernel.hookimpl
    def after_forward(self, state: TrainState) -> None:
        self._capture.armed = False  # only the loop's own forward pass is read

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self.prev_model is None:
            return None
        if self._capture.value is None:
            raise ValueError(f"lfl: the forward pass of {type(state.model).__name__} did not call its submodule "
                             f"{self.classifier!r}")
        return self.penalty(self._capture.value, state.mb_x, state.mb_task)

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self._remove_hook()  # before copying: the frozen copy must not carry it
        self._capture.value = None
        self.freeze_previous(state.model)
        self.experiences += 1

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        prev = self._pending
        if prev is None and self.prev_model is not None:
            prev = {k: v.detach().clone() for k, v in self.prev_model.state_dict().items()}
        return {"prev_model": None if prev is None else dict(prev), "experiences": self.experiences}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the frozen model is rebuilt from the live model at the next training experience."""
        self.experiences = int(state["experiences"])
        self.prev_model = None
        self._pending = None if state["prev_model"] is None else dict(state["prev_model"])
