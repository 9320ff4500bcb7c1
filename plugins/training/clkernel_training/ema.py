"""An exponential moving average of the weights (Polyak & Juditsky, 1992; as in timm's ``ModelEmaV3`` and
``torch.optim.swa_utils.get_ema_multi_avg_fn``), evaluated in place of the weights when asked.

After every ``every``-th optimizer update (an iteration whose ``optimizer.step()`` changed the parameters: with
gradient accumulation every k-th minibatch, not a skipped mixed-precision step), each floating-point parameter's
average moves towards it: ``avg = decay * avg + (1 - decay) * param``. With ``warmup``, the decay of the n-th
averaging step is ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``), so that early averages are not dominated by the random initialisation. The average starts from
the weights when training starts (and at each experience with ``reset_per_experience``); a parameter that appears
or changes shape (a growing classifier head) starts from its current value. Buffers (batch-norm statistics) are
not averaged: evaluation uses the model's own.

With ``eval_with_ema``, every evaluation runs with the averaged parameters: they are copied into the model at
:func:`before_eval` and the trained ones are put back at :func:`after_eval` (and, should an evaluation fail
before that, when training starts again), so training never sees the average.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import positive_int, unit_interval
from clkernel_training.monitor import optimizer_updated

__all__ = ["EMA"]


class EMA:
    """An exponential moving average of the model's parameters (see the module docstring).

    :param decay: the average's decay, in ``[0, 1)`` (0: the last weights).
    :param every: optimizer updates between two averaging steps (>= 1).
    :param eval_with_ema: evaluate with the averaged parameters.
    :param warmup: use ``min(decay, (1 + n) / (10 + n))`` at the n-th averaging step.
    :param reset_per_experience: restart the average from the current weights at each experience.
    :raises ValueError: naming the option, for a value out of range.

    ``average`` holds the averaged parameters by name; :meth:`copy_to` loads them into a model.
    """

    name = "ema"

    def __init__(self, decay: float = 0.999, every: int = 1, eval_with_ema: bool = True, warmup: bool = False,
                 reset_per_experience: bool = False) -> None:
        self.decay = unit_interval(decay, "decay", self.name, include_one=False)
        self.every = positive_int(every, "every", self.name)
        for option, value in (("eval_with_ema", eval_with_ema), ("warmup", warmup),
                              ("reset_per_experience", reset_per_experience)):
            if not isinstance(value, bool):
                raise ValueError(f"{self.name}: {option} must be true or false, got {value!r}")
        self.eval_with_ema, self.warmup, self.reset_per_experience = eval_with_ema, warmup, reset_per_experience
        #: Parameter name -> its average (None before training starts).
        self.average: dict[str, torch.Tensor] | None = None
        #: Averaging steps taken, and optimizer updates seen.
        self.updates = 0
        self.steps = 0
        self._live: dict[str, torch.Tensor] | None = None  # the trained parameters, while an evaluation runs

    # ------------------------------------------------------------------ averaging

    def _params(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p for n, p in model.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def _start(self, model: torch.nn.Module) -> None:
        self.average = {n: p.detach().clone() for n, p in self._params(model).items()}

    @torch.no_grad()
    def _follow(self, model: torch.nn.Module) -> None:
        """Parameters that appeared or changed shape start from their current value."""
        assert self.average is not None
        for n, p in self._params(model).items():
            avg = self.average.get(n)
            if avg is None or avg.shape != p.shape:
                self.average[n] = p.detach().clone()
            elif avg.device != p.device:
                self.average[n] = avg.to(p.device)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One averaging step towards ``model``'s parameters (what :func:`after_update` does)."""
        if self.average is None:
            self._start(model)
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for n, p in self._params(model).items():
            avg = self.average.get(n)  # type: ignore[union-attr]
            if avg is None or avg.shape != p.shape:
                self.average[n] = p.detach().clone()  # type: ignore[index]
            else:
                avg.lerp_(p.detach(), 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged parameters into ``model`` (the same architecture); its buffers are left alone.

        :raises ValueError: before any average exists, or when a parameter's shape differs.
        """
        if self.average is None:
            raise ValueError(f"{self.name}: no average yet: train first")
        params = self._params(model)
        for n, avg in self.average.items():
            if n in params:
                if params[n].shape != avg.shape:
                    raise ValueError(f"{self.name}: parameter {n!r} has shape {tuple(params[n].shape)}, its "
                                     f"average {tuple(avg.shape)}")
                params[n].copy_(avg)

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training(self, state: TrainState) -> None:
        self._swap_back(state.model)
        if self.average is None:
            self._start(state.model)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._swap_back(state.model)

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if state.epoch == 0:  # after model adaptation: new heads are there now
            if self.reset_per_experience:
                self._start(state.model)
            else:
                self._follow(state.model)

    @clkernel.hookimpl
    def after_update(self, state: TrainState) -> None:
        if optimizer_updated(state.optimizer):
            self.steps += 1
            if self.steps % self.every == 0:
                self.update(state.model)

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        if not self.eval_with_ema or self.average is None or self._live is not None:
            return
        params = self._params(state.model)
        with torch.no_grad():
            self._live = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                avg = self.average.get(n)
                if avg is not None and avg.shape == p.shape:
                    p.copy_(avg)

    @clkernel.hookimpl
    def after_eval(self, state: TrainState) -> None:
        self._swap_back(state.model)

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        self._swap_back(state.model)

    @torch.no_grad()
    def _swap_back(self, model: torch.nn.Module) -> None:
        if self._live is None:
            return
        params = self._params(model)
        for n, live in self._live.items():
            p = params.get(n)
            if p is not None:  # a parameter that grew during the evaluation keeps its new part
                p[tuple(slice(0, s) for s in live.shape)].copy_(live)
        self._live = None

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The averaged parameters (copies) and the counters."""
        average = None if self.average is None else {n: t.clone() for n, t in self.average.items()}
        return {"average": average, "updates": self.updates, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        average = state["average"]
        self.average = None if average is None else {n: t.clone() for n, t in average.items()}
        self.updates, self.steps = int(state["updates"]), int(state["steps"])
