"""Automatic mixed precision (Micikevicius et al., 2018, "Mixed Precision Training"): the forward pass under
``torch.autocast``, and for float16 a dynamic loss scale (``torch.amp.GradScaler``).

* **Forward.** At :func:`before_forward` (and :func:`before_eval_forward`, unless ``eval_autocast=False``) the
  model's next call is wrapped in ``torch.autocast(device_type, dtype)``; the wrapper removes itself when that
  call returns or raises, so an exception inside the forward pass never leaves autocast enabled (nor the model
  wrapped). At :func:`after_forward` a float16 / bfloat16 output tensor becomes float32
  (``state.mb_output.float()``, in the autograd graph), so the criterion and every loss term (EWC's penalty,
  LwF's distillation, which runs its teacher in float32) are computed in float32, as PyTorch's AMP recipe
  advises. Parameters, gradients and the optimizer stay float32.
* **Loss scaling (float16).** At :func:`before_backward`, ``state.loss`` becomes ``scaler.scale(loss)``; right
  after the backward pass (:func:`after_backward`, first) it is the unscaled loss again, so metrics and
  loggers see the true loss. At :func:`before_update`, before any other plugin (``tryfirst``: clipping and
  accumulation see true gradients), ``scaler.unscale_(optimizer)``; when a gradient is not finite, every
  ``.grad`` is set to None so that the loop's ``optimizer.step()`` leaves the parameters (and the optimizer's
  state) unchanged: the step is skipped, as ``scaler.step`` would. At :func:`after_update`, ``scaler.update()``
  lowers the scale after a skipped step and raises it after ``growth_interval`` good ones. Only the scaler's
  public API is used. Gradients read at :func:`after_backward` (importance estimates) are still scaled.

The scaler's state (scale, growth tracker) and the count of skipped steps are in :meth:`AMP.state_dict`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import positive_int, positive_number
from clkernel_training.monitor import optimizer_parameters

__all__ = ["AMP", "DTYPES"]

#: The ``dtype`` option's values.
DTYPES = ("auto", "bfloat16", "float16")
_LOW = (torch.float16, torch.bfloat16)


class _Autocast:
    """The model's forward for one call, under autocast; it puts the model's own forward back when the call
    returns or raises. Holds the module as an attribute (not in a closure), so that a deep copy of the module
    taken meanwhile gets a wrapper of its own."""

    def __init__(self, module: torch.nn.Module, previous: Any, device_type: str, dtype: torch.dtype) -> None:
        self.module, self.previous, self.device_type, self.dtype = module, previous, device_type, dtype
        self.forward = previous if previous is not None else type(module).forward.__get__(module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with torch.autocast(self.device_type, dtype=self.dtype):
                return self.forward(*args, **kwargs)
        finally:
            _unwrap(self.module)


def _wrap(module: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
    _unwrap(module)
    module.__dict__["forward"] = _Autocast(module, module.__dict__.get("forward"), device_type, dtype)


def _unwrap(module: torch.nn.Module) -> None:
    wrapper = module.__dict__.get("forward")
    if isinstance(wrapper, _Autocast):
        if wrapper.previous is None:
            del module.__dict__["forward"]
        else:
            module.__dict__["forward"] = wrapper.previous


def _float32(output: Any) -> Any:
    if isinstance(output, torch.Tensor) and output.dtype in _LOW:
        return output.float()
    return output


class AMP:
    """Mixed-precision training and evaluation (see the module docstring).

    :param dtype: ``"bfloat16"``, ``"float16"`` or ``"auto"``: bfloat16 on CPU and on CUDA devices that support
        it (compute capability 8.0 and up), float16 on other CUDA devices and other accelerators.
    :param grad_scaler: use a ``torch.amp.GradScaler``; default (None): for float16 only (bfloat16 has float32's
        exponent range and needs none).
    :param eval_autocast: run the evaluation forward pass under autocast too.
    :param init_scale: the scaler's first loss scale (> 0).
    :param growth_interval: good steps in a row before the scaler doubles the scale (>= 1).
    :raises ValueError: naming the option, for a bad value; when training or evaluation starts, for a device on
        which torch has no autocast.
    """

    name = "amp"

    def __init__(self, dtype: str = "auto", grad_scaler: bool | None = None, eval_autocast: bool = True,
                 init_scale: float = 65536.0, growth_interval: int = 2000) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        for option, value in (("grad_scaler", grad_scaler), ("eval_autocast", eval_autocast)):
            if not isinstance(value, bool) and not (option == "grad_scaler" and value is None):
                raise ValueError(f"{self.name}: {option} must be true or false, got {value!r}")
        self.dtype_option, self.grad_scaler, self.eval_autocast = dtype, grad_scaler, eval_autocast
        self.init_scale = positive_number(init_scale, "init_scale", self.name)
        self.growth_interval = positive_int(growth_interval, "growth_interval", self.name)
        #: The autocast dtype and device type, resolved when training or evaluation starts.
        self.dtype: torch.dtype | None = None
        self.device_type: str | None = None
        #: The gradient scaler (None without one).
        self.scaler: torch.amp.GradScaler | None = None
        #: Optimizer steps skipped because a gradient was not finite.
        self.skipped_steps = 0
        self._pending: dict[str, Any] | None = None
        self._loss: torch.Tensor | None = None
        self._unscaled = False

    def _setup(self, state: TrainState) -> None:
        _unwrap(state.model)
        device = state.device
        if self.device_type == device.type:
            return
        if not torch.amp.is_autocast_available(device.type):
            raise ValueError(f"{self.name}: torch has no autocast for device {device}")
        if self.dtype_option != "auto":
            dtype = getattr(torch, self.dtype_option)
        elif device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
            dtype = torch.bfloat16
        else:
            dtype = torch.float16
        self.dtype, self.device_type = dtype, device.type
        if self.grad_scaler if self.grad_scaler is not None else dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(device.type, init_scale=self.init_scale,
                                               growth_interval=self.growth_interval)
            if self._pending:
                self.scaler.load_state_dict(self._pending)
        self._pending = None

    # ------------------------------------------------------------------ forward passes

    @clkernel.hookimpl
    def before_training(self, state: TrainState) -> None:
        self._setup(state)

    @clkernel.hookimpl
    def before_forward(self, state: TrainState) -> None:
        if self.device_type is None:  # resumed inside an experience: before_training did not fire
            self._setup(state)
        _wrap(state.model, self.device_type, self.dtype)  # type: ignore[arg-type]

    @clkernel.hookimpl
    def after_forward(self, state: TrainState) -> None:
        _unwrap(state.model)  # already done by the wrapper, unless something else called the model
        state.mb_output = _float32(state.mb_output)

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        self._setup(state)

    @clkernel.hookimpl
    def before_eval_forward(self, state: TrainState) -> None:
        if self.eval_autocast:
            if self.device_type is None:
                self._setup(state)
            _wrap(state.model, self.device_type, self.dtype)  # type: ignore[arg-type]

    @clkernel.hookimpl
    def after_eval_forward(self, state: TrainState) -> None:
        if self.eval_autocast:
            _unwrap(state.model)
            state.mb_output = _float32(state.mb_output)

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        _unwrap(state.model)

    # ------------------------------------------------------------------ loss scaling

    @clkernel.hookimpl
    def before_backward(self, state: TrainState) -> None:
        if self.scaler is not None:
            self._loss = state.loss
            state.loss = self.scaler.scale(state.loss)  # type: ignore[arg-type]

    @clkernel.hookimpl(tryfirst=True)  # the true loss again before any plugin reads it
    def after_backward(self, state: TrainState) -> None:
        if self._loss is not None:
            state.loss, self._loss = self._loss, None

    @clkernel.hookimpl(tryfirst=True)  # clipping, accumulation and projections must see unscaled gradients
    def before_update(self, state: TrainState) -> None:
        if self.scaler is None:
            return
        grads = [p.grad for p in optimizer_parameters(state.optimizer) if p.grad is not None]
        if not grads:
            return
        self.scaler.unscale_(state.optimizer)
        self._unscaled = True
        if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            for p in optimizer_parameters(state.optimizer):
                p.grad = None  # optimizer.step() skips every parameter: the step is skipped
            self.skipped_steps += 1

    @clkernel.hookimpl
    def after_update(self, state: TrainState) -> None:
        if self._unscaled:
            self._unscaled = False
            self.scaler.update()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The gradient scaler's ``state_dict()`` (empty without a scaler) and the count of skipped steps."""
        scaler = self.scaler.state_dict() if self.scaler is not None else dict(self._pending or {})
        return {"scaler": scaler, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        if self.scaler is not None:
            if state["scaler"]:
                self.scaler.load_state_dict(dict(state["scaler"]))
        else:
            self._pending = dict(state["scaler"])
