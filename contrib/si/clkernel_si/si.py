"""Synaptic Intelligence (Zenke, Poole & Ganguli, 2017, "Continual Learning Through Synaptic Intelligence",
ICML), as in the paper and its authors' code (``ganguli-lab/pathint``).

While an experience ``mu`` is trained, every parameter ``theta_k`` accumulates the path integral of its
contribution to the drop of the loss (paper, Eq. 3)::

    omega_k^mu = - sum over updates of  g_k * (theta_k after the update - theta_k before it)

where ``g_k`` is the gradient of the loss *without SI's own penalty* (the authors' ``unreg_grads``). At the end of
the experience the importance is consolidated (Eq. 5; the clamp at zero is the authors' code)::

    Omega_k = max(0, Omega_k + omega_k^mu / ((Delta_k^mu)^2 + xi)),   Delta_k^mu = theta_k(end of mu) - theta_k(start of mu)

and the parameters are anchored there. On later experiences the loss gets the term (Eq. 4, no 1/2 factor)::

    si_lambda * sum_k Omega_k * (theta_k - theta_anchor_k)^2

Parameters that grow (a larger classifier head) keep their importance on their old part; new units are free.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import non_negative_number, positive_number
from clkernel_ewc import quadratic_penalty

__all__ = ["SynapticIntelligence", "si_importance"]

Tensors = dict[str, torch.Tensor]


def si_importance(omega: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """One experience's importance, ``omega / (delta^2 + eps)`` (Zenke et al., 2017, Eq. 5), elementwise.

    :param omega: the path integral accumulated over the experience, any shape, float.
    :param delta: the parameters' total change over the experience, same shape.
    :param eps: the damping ``xi`` (> 0), which bounds the importance where a parameter hardly moved.
    :returns: a tensor of ``omega``'s shape and dtype (not clamped: negative values are possible).
    """
    return omega / (delta.pow(2) + eps)


def _grow(t: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """``t`` zero-padded to ``shape``: a parameter that grew keeps its old part, new entries start at zero."""
    if t.shape == shape:
        return t
    if len(t.shape) != len(shape) or any(a > b for a, b in zip(t.shape, shape)):
        raise ValueError(f"si: parameter {name!r} changed shape from {tuple(t.shape)} to {tuple(shape)}; SI only "
                         f"follows parameters that grow")
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class SynapticIntelligence:
    """Synaptic Intelligence (Zenke et al., 2017) as a training plugin; the module docstring gives the formulas.

    Per-iteration work is a few elementwise operations per parameter (no device sync). The hooks call the public
    methods :meth:`begin_experience`, :meth:`record_gradients`, :meth:`record_start_of_step`,
    :meth:`record_step` and :meth:`end_experience`, which a hand-written loop can call itself.

    :param si_lambda: the strength ``c`` of the penalty (>= 0); the paper uses 0.1 on Permuted MNIST.
    :param eps: the damping ``xi`` (> 0); the paper uses 0.1 on Permuted MNIST and 1e-3 on Split MNIST.
    :raises ValueError: for an option out of range.

    Attributes (parameter name -> tensor of the parameter's shape): ``importances`` (``Omega``, empty before the
    first experience ends), ``anchor`` (parameters at the end of the last experience), ``omega`` (the current
    experience's path integral) and ``start`` (parameters at its start).
    """

    name = "si"

    def __init__(self, si_lambda: float = 0.1, eps: float = 0.1) -> None:
        self.si_lambda = non_negative_number(si_lambda, "si_lambda", self.name)
        self.eps = positive_number(eps, "eps", self.name)
        self.importances: Tensors = {}
        self.anchor: Tensors = {}
        self.omega: Tensors = {}
        self.start: Tensors = {}
        self.experiences = 0
        # (parameter, importance, anchor) for the penalty; (parameter, omega, gradient, previous value) per step
        self._penalised: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._tracked: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self._penalty_grads: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------------ bookkeeping, usable outside the loop

    @torch.no_grad()
    def begin_experience(self, model: torch.nn.Module) -> None:
        """Start an experience: zero the path integral and remember where the parameters start."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.omega = {n: torch.zeros_like(p) for n, p in params.items()}
        self.start = {n: p.detach().clone() for n, p in params.items()}
        self._bind(model)

    @torch.no_grad()
    def _bind(self, model: torch.nn.Module) -> None:
        """Pair each parameter with its buffers, grown and moved to its shape and device."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        for store in (self.importances, self.anchor):
            for n in store:
                if n in params:
                    store[n] = _grow(store[n], params[n].shape, n).to(params[n].device, params[n].dtype)
        for store in (self.omega, self.start):
            for n, p in params.items():
                if n in store:
                    store[n] = store[n].to(p.device, p.dtype)
        self._penalised = [(params[n], self.importances[n], self.anchor[n]) for n in self.importances if n in params]
        self._tracked = [(p, self.omega[n], torch.zeros_like(p), torch.zeros_like(p))
                         for n, p in params.items() if n in self.omega]
        grads = {id(p): grad for p, _, grad, _ in self._tracked}
        self._penalty_grads = [(p, imp, anchor, grads[id(p)]) for p, imp, anchor in self._penalised
                               if id(p) in grads]

    def penalty(self, model: torch.nn.Module | None = None) -> torch.Tensor | None:
        """``si_lambda * sum_k Omega_k (theta_k - anchor_k)^2``: a scalar tensor on the parameters' device,
        differentiable with respect to them; None before the first experience ends.

        :param model: bind to this model's parameters first (the plugin binds to the training model itself).
        """
        if model is not None:
            self._bind(model)
        if not self._penalised:
            return None
        return self.si_lambda * quadratic_penalty(*zip(*self._penalised))

    @torch.no_grad()
    def record_gradients(self) -> None:
        """After ``backward()``: keep each parameter's gradient minus that of SI's own penalty
        (``2 si_lambda Omega (theta - anchor)``), the gradient of the loss the path integral follows."""
        if self._tracked is None:
            raise RuntimeError("si: record_gradients() before begin_experience()")
        for p, _, grad, _ in self._tracked:
            if p.grad is None:
                grad.zero_()
            else:
                grad.copy_(p.grad)
        if self.si_lambda:
            for p, imp, anchor, grad in self._penalty_grads:
                grad.addcmul_(imp, p - anchor, value=-2.0 * self.si_lambda)

    @torch.no_grad()
    def record_start_of_step(self) -> None:
        """Before ``optimizer.step()``: remember the parameters' values."""
        for p, _, _, prev in self._tracked or ():
            prev.copy_(p)

    @torch.no_grad()
    def record_step(self) -> None:
        """After ``optimizer.step()``: ``omega -= gradient * (theta_now - theta_before)``."""
        for p, omega, grad, prev in self._tracked or ():
            omega.addcmul_(grad, p - prev, value=-1.0)

    @torch.no_grad()
    def end_experience(self, model: torch.nn.Module) -> None:
        """End an experience: add ``omega / (Delta^2 + eps)`` to the importances (clamped at zero) and anchor the
        parameters at their current values.

        :raises ValueError: when a parameter changed shape other than by growing.
        """
        params = {n: p for n, p in model.named_parameters() if n in self.omega}
        for n, p in params.items():
            new = si_importance(self.omega[n], p.detach() - self.start[n], self.eps)
            old = self.importances.get(n)
            total = new if old is None else _grow(old, p.shape, n).to(new.device, new.dtype) + new
            self.importances[n] = total.clamp_min(0.0)
            self.anchor[n] = p.detach().clone()
        self.experiences += 1
        self._bind(model)

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if state.epoch == 0:
            self.begin_experience(state.model)
        elif self._tracked is None:  # resumed inside an experience: keep the loaded path integral
            self._bind(state.model)

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self._tracked is None:  # loaded from a checkpoint taken inside an experience: keep its path integral
            self._bind(state.model)
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
    def after_training_exp(self, state: TrainState) -> None:
        self.end_experience(state.model)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        copy = lambda d: {n: t.detach().clone() for n, t in d.items()}  # noqa: E731
        return {"importances": copy(self.importances), "anchor": copy(self.anchor), "omega": copy(self.omega),
                "start": copy(self.start), "experiences": self.experiences}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint. Taken inside an experience, it holds the experience's path integral so far
        (``omega``) and starting point (``start``); the plugin binds them to the model at the next minibatch, as
        a resumed epoch does not fire ``before_training_epoch`` again."""
        self.importances = {n: t.clone() for n, t in state["importances"].items()}
        self.anchor = {n: t.clone() for n, t in state["anchor"].items()}
        self.omega = {n: t.clone() for n, t in state["omega"].items()}
        self.start = {n: t.clone() for n, t in state["start"].items()}
        self.experiences = int(state["experiences"])
        self._penalised, self._tracked, self._penalty_grads = [], None, []
