"""Channels-last memory format: the model's convolution weights and the input images stored as NHWC.

Convolutions on GPUs (Tensor Cores, with cuDNN) and on CPUs (oneDNN) run fastest when a 4-D tensor's channels
are its innermost dimension (``torch.channels_last``; ``torch.channels_last_3d`` for 5-D volumes). Only the
memory layout changes: shapes, values, parameter names and the optimizer's references to its parameters stay as
they are, so checkpoints are unaffected. See PyTorch's tutorial "(beta) Channels Last Memory Format in PyTorch".

* **Model.** At :func:`before_training_exp`, :func:`before_training_epoch` (after the loop's model adaptation,
  which may add modules) and :func:`before_eval`, every 4-D parameter and buffer becomes channels-last (5-D:
  channels-last-3d) in place (``p.data = p.data.contiguous(memory_format=...)``), so the optimizer keeps
  updating the same ``Parameter`` objects. Other tensors (linear weights, biases, norm statistics) have no
  channels and stay as they are.
* **Inputs.** At :func:`before_forward` and :func:`before_eval_forward`, last among the plugins (so it sees the
  minibatch other plugins built, replayed samples included), a 4-D (5-D) ``state.mb_x`` is made channels-last
  (3-d). Any other input is left as it is.
"""

from __future__ import annotations

import torch

import clkernel
from clkernel import TrainState

__all__ = ["ChannelsLast", "to_channels_last"]

_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store ``model``'s 4-D parameters and buffers as ``torch.channels_last`` (5-D: ``channels_last_3d``), in
    place, keeping each ``Parameter`` object (an optimizer built on the model still updates it). Returns
    ``model``. Unlike ``model.to(memory_format=torch.channels_last)``, a model with 5-D weights (Conv3d) does not
    raise."""
    for tensor in [*model.parameters(), *model.buffers()]:
        fmt = _FORMATS.get(tensor.dim())
        if fmt is not None and not tensor.is_contiguous(memory_format=fmt):
            tensor.data = tensor.data.contiguous(memory_format=fmt)
    return model


class ChannelsLast:
    """Train and evaluate with the model's weights and the input images in channels-last memory format (see the
    module docstring). No options; stateless; numerically the same computation (a convolution algorithm may sum
    in another order: results agree to float rounding, not bit for bit, with a contiguous run).
    """

    name = "channels-last"

    def _model(self, state: TrainState) -> None:
        to_channels_last(state.model)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._model(state)

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        self._model(state)

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        self._model(state)

    def _inputs(self, state: TrainState) -> None:
        x = state.mb[0]  # type: ignore[index]
        fmt = _FORMATS.get(x.dim()) if isinstance(x, torch.Tensor) else None
        if fmt is not None and not x.is_contiguous(memory_format=fmt):
            state.mb = (x.contiguous(memory_format=fmt), *state.mb[1:])  # type: ignore[index]

    @clkernel.hookimpl(trylast=True)
    def before_forward(self, state: TrainState) -> None:
        self._inputs(state)

    @clkernel.hookimpl(trylast=True)
    def before_eval_forward(self, state: TrainState) -> None:
        self._inputs(state)

    def __repr__(self) -> str:
        return "ChannelsLast()"

