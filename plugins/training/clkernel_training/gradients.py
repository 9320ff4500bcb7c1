"""Gradient clipping and gradient accumulation, between ``loss.backward()`` and ``optimizer.step()``.

Both act at :func:`before_update`, on the parameters of ``state.optimizer``. The order there is fixed, whatever
the order of the plugin list: :class:`~clkernel_training.AMP` unscales the gradients first (``tryfirst``), then
the plugins in list order (:class:`GradAccumulation`, projections such as GEM's), then :class:`GradClip` last
(``trylast``), so that clipping applies to the gradient the optimizer actually uses: unscaled, and, with
accumulation, the accumulated one.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import positive_int, positive_number
from clkernel_training.monitor import optimizer_parameters

__all__ = ["GradAccumulation", "GradClip"]


class GradClip:
    """Clip the gradients before each optimizer step, by their total norm or by value.

    By norm (``max_norm``): ``torch.nn.utils.clip_grad_norm_``: when the ``norm_type``-norm of all the gradients
    together exceeds ``max_norm``, every gradient is multiplied by ``max_norm / (norm + 1e-6)`` (Pascanu et al.,
    2013, "On the difficulty of training recurrent neural networks"). By value (``clip_value``):
    ``torch.nn.utils.clip_grad_value_``: every gradient element is clamped to ``[-clip_value, clip_value]``.

    :param max_norm: the largest total norm (> 0); exclusive with ``clip_value``.
    :param norm_type: the norm's order (> 0, or ``inf`` / ``"inf"`` for the largest absolute element).
    :param clip_value: the largest absolute gradient element (> 0); exclusive with ``max_norm``.
    :param error_if_nonfinite: by norm, raise when the total norm is nan or inf (``clip_grad_norm_``'s option).
    :raises ValueError: naming the option, for both or neither of ``max_norm`` and ``clip_value``, or a value
        out of range.
    """

    name = "grad-clip"

    def __init__(self, max_norm: float | None = None, norm_type: float | str = 2.0, clip_value: float | None = None,
                 error_if_nonfinite: bool = False) -> None:
        if (max_norm is None) == (clip_value is None):
            raise ValueError(f"{self.name}: give exactly one of max_norm (clip by norm) and clip_value (clip by "
                             f"value), got max_norm={max_norm!r}, clip_value={clip_value!r}")
        self.max_norm = None if max_norm is None else positive_number(max_norm, "max_norm", self.name)
        self.clip_value = None if clip_value is None else positive_number(clip_value, "clip_value", self.name)
        if norm_type in ("inf", math.inf):
            self.norm_type = math.inf
        else:
            self.norm_type = positive_number(norm_type, "norm_type", self.name)
        if not isinstance(error_if_nonfinite, bool):
            raise ValueError(f"{self.name}: error_if_nonfinite must be true or false, got {error_if_nonfinite!r}")
        self.error_if_nonfinite = error_if_nonfinite

    @clkernel.hookimpl(trylast=True)  # the gradient the optimizer uses: unscaled, accumulated, projected
    def before_update(self, state: TrainState) -> None:
        grads = [p for p in optimizer_parameters(state.optimizer) if p.grad is not None]
        if not grads:  # gradient accumulation between its steps, or a skipped mixed-precision step
            return
        if self.max_norm is not None:
            torch.nn.utils.clip_grad_norm_(grads, self.max_norm, self.norm_type,
                                           error_if_nonfinite=self.error_if_nonfinite)
        else:
            torch.nn.utils.clip_grad_value_(grads, self.clip_value)  # type: ignore[arg-type]


class GradAccumulation:
    """Accumulate the gradients of ``steps`` minibatches per optimizer step: the same update as one minibatch
    ``steps`` times larger, for a model without batch-dependent layers (no batch norm) and a loss that is a mean
    over the minibatch's samples (the default criterion) plus any loss terms.

    The loop zeroes the gradients and calls ``optimizer.step()`` at every minibatch. At :func:`before_update`
    this plugin adds ``n * grad`` (``n``: the minibatch's samples, ``state.mb``'s, replayed samples included) to
    its own sums and sets every ``.grad`` to None, so that the optimizer's step changes nothing (torch's
    optimizers skip parameters without a gradient: no update, no momentum, no weight decay, no Adam step count).
    At the ``steps``-th minibatch of a group it puts ``sum(n * grad) / sum(n)`` back into ``.grad``: the gradient
    of the mean loss over the group's samples, which the optimizer then applies once. The loss and the metrics
    are untouched (no loss scaling).

    Groups restart at each epoch. A group cut short by the epoch's end (fewer than ``steps`` minibatches left)
    steps at the epoch's last minibatch with what it accumulated, averaged over its own samples: as a plain loop
    whose last, larger minibatch holds the epoch's remaining samples. When ``len(state.dataloader)`` is not
    known (a plugin's loader without a length), that last step is taken at :func:`after_training_epoch` by
    calling ``state.optimizer.step()`` directly.

    :param steps: minibatches per optimizer step (>= 1; 1 changes nothing).
    :raises ValueError: for ``steps`` that is not a positive integer.
    """

    name = "grad-accumulation"

    def __init__(self, steps: int = 2) -> None:
        self.steps = positive_int(steps, "steps", self.name)
        self._sums: dict[int, torch.Tensor] = {}  # optimizer parameter position -> sum of n * grad
        self._count = 0  # minibatches in the current group
        self._samples = 0  # samples in the current group
        self._length: int | None = None  # minibatches in this epoch, when known

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        try:
            self._length = len(state.dataloader)  # type: ignore[arg-type]
        except TypeError:
            self._length = None

    @clkernel.hookimpl
    def before_update(self, state: TrainState) -> None:
        n = len(state.mb[1])  # type: ignore[index]
        params = optimizer_parameters(state.optimizer)
        with torch.no_grad():
            for i, p in enumerate(params):
                if p.grad is None:
                    continue
                total = self._sums.get(i)
                if total is None:
                    self._sums[i] = p.grad.detach() * n
                else:
                    total.add_(p.grad, alpha=n)
        self._count += 1
        self._samples += n
        last = self._length is not None and state.epoch_iteration + 1 >= self._length
        if self._count >= self.steps or last:
            self._put_back(params)
        else:
            for p in params:
                p.grad = None

    def _put_back(self, params: list[torch.Tensor]) -> None:
        samples = max(self._samples, 1)
        for i, p in enumerate(params):
            total = self._sums.get(i)
            p.grad = None if total is None else total.div_(samples)
        self._sums, self._count, self._samples = {}, 0, 0

    @clkernel.hookimpl
    def after_training_epoch(self, state: TrainState) -> None:
        if self._count:  # a loader without a length: the group cut short by the epoch's end steps now
            params = optimizer_parameters(state.optimizer)
            self._put_back(params)
            state.optimizer.step()
            for p in params:
                p.grad = None

    @property
    def pending(self) -> int:
        """Minibatches accumulated since the last optimizer step."""
        return self._count

    def state_dict(self) -> dict[str, Any]:
        """The sums of the current group (copies; empty between groups), its counts, and the epoch's length."""
        return {"sums": {i: t.clone() for i, t in self._sums.items()}, "count": self._count,
                "samples": self._samples, "length": self._length}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sums = {int(i): t.clone() for i, t in state["sums"].items()}
        self._count, self._samples, self._length = int(state["count"]), int(state["samples"]), state["length"]
