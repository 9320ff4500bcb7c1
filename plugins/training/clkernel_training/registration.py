"""Entry point of clkernel-training: registers the training plugins by name (torch is imported in the factories).

``lr-scheduler``, ``early-stopping``, ``grad-clip``, ``amp``, ``grad-accumulation``, ``ema``, ``channels-last``
and ``compile``; each factory's signature is what ``clkernel show plugin NAME`` prints and what
``--plugin NAME:key=value`` parses.
"""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["PLUGINS", "amp", "channels_last", "compile_model", "early_stopping", "ema", "grad_accumulation",
           "grad_clip", "lr_scheduler", "register_plugins"]


def lr_scheduler(scheduler: str, step_every: str = "epoch", reset_per_experience: bool = False,
                 monitor: str | None = None, log_every: str | None = None, config: dict | None = None,
                 **options: Any) -> Any:
    """A torch.optim.lr_scheduler class by name, with its own options (lr-scheduler:scheduler=StepLR,step_size=2).

    scheduler: the class name (CosineAnnealingLR, StepLR, OneCycleLR, ReduceLROnPlateau...); step_every: epoch or iteration (every optimizer update); reset_per_experience restarts the schedule at each
    experience; monitor: the metric ReduceLROnPlateau steps on; log_every: epoch, iteration or never (default:
    step_every). Any other option goes to the scheduler class, checked against its signature. config (filled by
    clkernel run): the monitored metric must be computed and evaluated as the run is configured.
    """
    from clkernel_training.scheduler import LRScheduler

    plugin = LRScheduler(scheduler, step_every=step_every, reset_per_experience=reset_per_experience,
                         monitor=monitor, log_every=log_every, **options)
    if config is not None and plugin.monitor is not None:
        plugin.monitor.check_run_config(config, between_epochs=False)
    return plugin


def early_stopping(monitor: str = "loss_exp/eval/valid", mode: str = "auto", patience: int = 3,
                   min_delta: float = 0.0, restore_best_weights: bool = True, config: dict | None = None) -> Any:
    """Stop an experience's epochs when a monitored metric (of a validation stream) stops improving.

    monitor: a metric name; loss_exp/eval/valid is the current experience's validation loss (needs an evaluation
    during the experience: clkernel run --eval-every 1 --eval-streams valid,test). mode: min, max or auto (max
    for accuracies); patience: measurements without improvement before stopping; min_delta: the smallest change
    that counts; restore_best_weights: go back to the best weights when stopping. config (filled by clkernel
    run): the run must evaluate the monitored stream between epochs.
    """
    from clkernel_training.early_stopping import EarlyStopping

    plugin = EarlyStopping(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta,
                           restore_best_weights=restore_best_weights)
    if config is not None:
        plugin.monitor.check_run_config(config, between_epochs=True)
    return plugin


def grad_clip(max_norm: float | None = None, norm_type: float | str = 2.0, clip_value: float | None = None,
              error_if_nonfinite: bool = False) -> Any:
    """Clip the gradients before each optimizer step: by total norm (max_norm, norm_type) or by value (clip_value).

    Exactly one of max_norm and clip_value; norm_type: a number > 0, or inf (the largest absolute element).
    """
    from clkernel_training.gradients import GradClip

    return GradClip(max_norm=max_norm, norm_type=norm_type, clip_value=clip_value,
                    error_if_nonfinite=error_if_nonfinite)


def amp(dtype: str = "auto", grad_scaler: bool | None = None, eval_autocast: bool = True,
        init_scale: float = 65536.0, growth_interval: int = 2000) -> Any:
    """Mixed precision: the forward pass under torch.autocast, with a gradient scaler for float16.

    dtype: bfloat16, float16 or auto (bfloat16 on CPU and on CUDA devices that support it, else float16);
    grad_scaler: default on for float16 only; eval_autocast: evaluation under autocast too; init_scale and
    growth_interval: the scaler's.
    """
    from clkernel_training.amp import AMP

    return AMP(dtype=dtype, grad_scaler=grad_scaler, eval_autocast=eval_autocast, init_scale=init_scale,
               growth_interval=growth_interval)


def grad_accumulation(steps: int = 2) -> Any:
    """Accumulate the gradients of `steps` minibatches per optimizer step (one steps-times-larger minibatch).

    A group cut short by an epoch's end steps with what it accumulated, averaged over its samples.
    """
    from clkernel_training.gradients import GradAccumulation

    return GradAccumulation(steps=steps)


def ema(decay: float = 0.999, every: int = 1, eval_with_ema: bool = True, warmup: bool = False,
        reset_per_experience: bool = False) -> Any:
    """An exponential moving average of the weights, swapped in for evaluation (eval_with_ema).

    decay in [0, 1); every: optimizer updates between two averaging steps; warmup: decay grows as
    (1 + n) / (10 + n) up to decay; reset_per_experience: restart the average at each experience.
    """
    from clkernel_training.ema import EMA

    return EMA(decay=decay, every=every, eval_with_ema=eval_with_ema, warmup=warmup,
               reset_per_experience=reset_per_experience)


def channels_last() -> Any:
    """The model's 4-D weights and the input images in channels-last memory format (faster convolutions).

    Parameters stay the same objects with the same names; only the memory layout changes.
    """
    from clkernel_training.memory_format import ChannelsLast

    return ChannelsLast()


def compile_model(mode: str = "default", backend: str = "inductor", dynamic: bool | None = None,
                  fullgraph: bool = False) -> Any:
    """torch.compile the model in place when the run starts (nn.Module.compile: state_dict names unchanged).

    mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs (inductor only); backend: a
    torch.compiler backend (inductor; eager or aot_eager to debug); dynamic: trace shapes as symbols (true,
    false, or unset: after a shape changed); fullgraph: fail on a graph break. The first minibatches compile.
    """
    from clkernel_training.compile import Compile

    return Compile(mode=mode, backend=backend, dynamic=dynamic, fullgraph=fullgraph)


#: Registered name -> factory.
PLUGINS: dict[str, Callable[..., Any]] = {
    "lr-scheduler": lr_scheduler, "early-stopping": early_stopping, "grad-clip": grad_clip, "amp": amp,
    "grad-accumulation": grad_accumulation, "ema": ema, "channels-last": channels_last, "compile": compile_model,
}


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    for name, factory in PLUGINS.items():
        register(name, factory)
