"""Riemannian Walk (Chaudhry, Dokania, Ajanthan & Torr, 2018, "Riemannian Walk for Incremental Learning:
Understanding Forgetting and Intransigence", ECCV), with the semantics of Avalanche's ``RWalkPlugin``.

On every training iteration, with ``g`` the gradient of the loss without RWalk's own penalty and ``theta`` the
parameters before the optimizer step:

- the KL-Fisher is a moving average of squared gradients (EWC++, paper Eq. 6):
  ``F = alpha * g^2 + (1 - alpha) * F`` (``F = g^2`` on the very first iteration);
- the first-order loss change is accumulated: ``L -= g * (theta_after_step - theta)``.

Every ``delta_t`` training iterations (counted over the whole run) the parameter scores are updated and ``L``
restarts from the current parameters ``theta_c`` (paper Eq. 7)::

    s += L / (0.5 * F * (theta - theta_c)^2 + eps)        # eps: the parameters' dtype's machine epsilon

At the end of an experience the experience's scores are folded in (``S = s`` after the first experience, then
``S = (S + s) / 2``), ``s`` restarts from zero, the parameters are anchored, and the penalty weights are
normalised into [0, 1] by their largest value over all parameters::

    P = F / max(F) + relu(S) / max(relu(S))

From then on the loss gets (paper Eq. 8, no 1/2 factor as in Avalanche)::

    ewc_lambda * sum_k P_k * (theta_k - theta_anchor_k)^2

Parameters that appear later (a new head) start with zero Fisher and scores; parameters that grow keep their old
part and start the new one at zero. A parameter that gets no gradient (another task's head) counts as ``g = 0``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import non_negative_number, positive_int, unit_interval
from clkernel_ewc import quadratic_penalty

__all__ = ["RWalk"]

Tensors = dict[str, torch.Tensor]


def _grow(t: torch.Tensor, p: torch.Tensor, name: str, fill: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` on ``p``'s device and dtype, grown to ``p``'s shape; new entries are zero (or ``fill``'s)."""
    t = t.to(p.device, p.dtype)
    if t.shape == p.shape:
        return t
    if len(t.shape) != len(p.shape) or any(a > b for a, b in zip(t.shape, p.shape)):
        raise ValueError(f"rwalk: parameter {name!r} changed shape from {tuple(t.shape)} to {tuple(p.shape)}; "
                         f"RWalk only follows parameters that grow")
    out = torch.zeros_like(p) if fill is None else fill.detach().clone()
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class RWalk:
    """Riemannian Walk (Chaudhry et al., 2018) as a training plugin; the module docstring gives the formulas.

    The gradient ``g`` is read from the loop's own backward pass, minus the gradient of RWalk's penalty
    (``2 ewc_lambda P (theta - anchor)``): no extra forward or backward pass. Avalanche instead recomputes the
    criterion's gradient in eval mode on every iteration; the two agree for a model without dropout or batch
    normalisation trained with no other loss term. Per iteration the cost is a few elementwise operations per
    parameter, with no device sync.

    :param ewc_lambda: weight of the penalty (>= 0).
    :param alpha: weight of the newest squared gradient in the Fisher's moving average, in [0, 1].
    :param delta_t: training iterations between two score updates (>= 1).
    :raises ValueError: for an option out of range.

    Attributes (parameter name -> tensor of the parameter's shape): ``fisher`` (``F``), ``exp_scores`` (``S``),
    ``penalty_weights`` (``P``, empty before the first experience ends), ``anchor``, and ``scores`` / ``loss`` /
    ``checkpoint`` (the current experience's ``s``, ``L`` and ``theta_c``).
    """

    name = "rwalk"

    def __init__(self, ewc_lambda: float = 0.1, alpha: float = 0.9, delta_t: int = 10) -> None:
        self.ewc_lambda = non_negative_number(ewc_lambda, "ewc_lambda", self.name)
        self.alpha = unit_interval(alpha, "alpha", self.name)
        self.delta_t = positive_int(delta_t, "delta_t", self.name)
        self.fisher: Tensors = {}
        self.loss: Tensors = {}
        self.checkpoint: Tensors = {}
        self.scores: Tensors = {}
        self.exp_scores: Tensors = {}
        self.anchor: Tensors = {}
        self.penalty_weights: Tensors = {}
        self.experiences = 0
        #: False until the first squared gradient starts the Fisher's moving average.
        self.fisher_started = False
        # per parameter: (parameter, name, g, value before the step); per penalised one: (parameter, P, anchor, g)
        self._tracked: list[tuple[torch.nn.Parameter, str, torch.Tensor, torch.Tensor]] = []
        self._penalised: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._bound = False

    # ------------------------------------------------------------------ binding

    @torch.no_grad()
    def bind(self, model: torch.nn.Module) -> None:
        """Follow ``model``'s parameters: create the buffers of new ones (the checkpoint at their current value),
        grow those of grown ones, and move everything to the parameters' devices.

        :raises ValueError: when a parameter changed shape other than by growing.
        """
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        for n, p in params.items():
            for store in (self.fisher, self.loss, self.scores):
                store[n] = _grow(store[n], p, n) if n in store else torch.zeros_like(p)
            self.checkpoint[n] = (_grow(self.checkpoint[n], p, n, fill=p) if n in self.checkpoint
                                  else p.detach().clone())
        for store in (self.exp_scores, self.anchor, self.penalty_weights):
            for n in list(store):
                if n in params:
                    store[n] = _grow(store[n], params[n], n)
        self._tracked = [(p, n, torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()]
        grads = {n: grad for _, n, grad, _ in self._tracked}
        self._penalised = [(params[n], self.penalty_weights[n], self.anchor[n], grads[n])
                           for n in self.penalty_weights if n in params]
        self._bound = True

    def penalty(self, model: torch.nn.Module | None = None) -> torch.Tensor | None:
        """``ewc_lambda * sum_k P_k (theta_k - anchor_k)^2``: a scalar tensor on the parameters' device,
        differentiable with respect to them; None before the first experience ends.

        :param model: bind to this model's parameters first (the plugin binds to the training model itself).
        """
        if model is not None:
            self.bind(model)
        if not self._penalised:
            return None
        params, weights, anchors, _ = zip(*self._penalised)
        return self.ewc_lambda * quadratic_penalty(params, weights, anchors)

    # ------------------------------------------------------------------ per iteration

    @torch.no_grad()
    def record_gradients(self) -> None:
        """After ``backward()``: ``g`` = gradient minus the penalty's, and the Fisher's moving average."""
        for p, n, grad, _ in self._tracked:
            if p.grad is None:
                grad.zero_()
            else:
                grad.copy_(p.grad)
        if self.ewc_lambda:
            for p, w, anchor, grad in self._penalised:
                grad.addcmul_(w, p - anchor, value=-2.0 * self.ewc_lambda)
        first = not self.fisher_started
        for p, n, grad, _ in self._tracked:
            fisher = self.fisher[n]
            if first:
                fisher.copy_(grad.pow(2))
            else:
                fisher.mul_(1.0 - self.alpha).addcmul_(grad, grad, value=self.alpha)
        self.fisher_started = True

    @torch.no_grad()
    def record_start_of_step(self) -> None:
        """Before ``optimizer.step()``: remember the parameters."""
        for p, _, _, prev in self._tracked:
            prev.copy_(p)

    @torch.no_grad()
    def record_step(self) -> None:
        """After ``optimizer.step()``: ``L -= g * (theta_now - theta_before)``."""
        for p, n, grad, prev in self._tracked:
            self.loss[n].addcmul_(grad, p - prev, value=-1.0)

    @torch.no_grad()
    def update_scores(self) -> None:
        """Every ``delta_t`` iterations: ``s += L / (0.5 F (theta - theta_c)^2 + eps)``, then ``L = 0`` and
        ``theta_c = theta``."""
        for p, n, _, _ in self._tracked:
            eps = torch.finfo(p.dtype).eps
            denom = (p - self.checkpoint[n]).pow(2).mul_(self.fisher[n]).mul_(0.5).add_(eps)
            self.scores[n].add_(self.loss[n] / denom)
            self.loss[n].zero_()
            self.checkpoint[n].copy_(p)

    @torch.no_grad()
    def end_experience(self, model: torch.nn.Module) -> None:
        """Fold the experience's scores in, anchor the parameters and compute the normalised penalty weights."""
        if not self._bound:
            self.bind(model)
        params = {n: p for n, p in model.named_parameters() if n in self.scores}
        for n, p in params.items():
            old = self.exp_scores.get(n)
            self.exp_scores[n] = self.scores[n].clone() if old is None else 0.5 * (_grow(old, p, n) + self.scores[n])
            self.scores[n].zero_()
            self.anchor[n] = p.detach().clone()
        max_fisher = max((float(f.max()) for f in self.fisher.values() if f.numel()), default=0.0)
        max_score = max((float(s.clamp_min(0).max()) for s in self.exp_scores.values() if s.numel()), default=0.0)
        self.penalty_weights = {}
        for n in self.exp_scores:
            f = self.fisher[n] / max_fisher if max_fisher > 0 else torch.zeros_like(self.fisher[n])
            s = self.exp_scores[n].clamp_min(0)
            self.penalty_weights[n] = f + (s / max_score if max_score > 0 else torch.zeros_like(s))
        self.experiences += 1
        self.bind(model)

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if state.epoch == 0 or not self._bound:
            self.bind(state.model)

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if not self._bound:  # loaded from a checkpoint taken inside an experience: go on with its running sums
            self.bind(state.model)
        return self.penalty()

    @clkernel.hookimpl
    def after_backward(self, state: TrainState) -> None:
        self.record_gradients()

    @clkernel.hookimpl
    def before_update(self, state: TrainState) -> None:
        self.record_start_of_step()

    @clkernel.hookimpl
    def after_update(self, state: TrainState) -> None:
        self.record_step()

    @clkernel.hookimpl
    def after_training_iteration(self, state: TrainState) -> None:
        if state.iteration % self.delta_t == 0:  # state.iteration counts the iterations done, this one included
            self.update_scores()

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self.end_experience(state.model)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        stores = {"fisher": self.fisher, "loss": self.loss, "checkpoint": self.checkpoint, "scores": self.scores,
                  "exp_scores": self.exp_scores, "anchor": self.anchor, "penalty": self.penalty_weights}
        out: dict[str, Any] = {k: {n: t.detach().clone() for n, t in d.items()} for k, d in stores.items()}
        out["experiences"] = self.experiences
        out["fisher_started"] = self.fisher_started
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint. Taken inside an experience, it holds the experience's running ``s``, ``L``,
        ``theta_c`` and Fisher; the plugin binds them to the model at the next minibatch, as a resumed epoch does
        not fire ``before_training_epoch`` again."""
        copy = lambda d: {n: t.clone() for n, t in d.items()}  # noqa: E731
        self.fisher, self.loss, self.checkpoint = copy(state["fisher"]), copy(state["loss"]), copy(state["checkpoint"])
        self.scores, self.exp_scores = copy(state["scores"]), copy(state["exp_scores"])
        self.anchor, self.penalty_weights = copy(state["anchor"]), copy(state["penalty"])
        self.experiences = int(state["experiences"])
        self.fisher_started = bool(state["fisher_started"])
        self._tracked, self._penalised, self._bound = [], [], False
