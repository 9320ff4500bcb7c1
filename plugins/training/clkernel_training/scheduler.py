"""Learning-rate schedules: any ``torch.optim.lr_scheduler`` class, stepped per epoch or per optimizer update.

The scheduler is built on ``state.optimizer`` when the first training experience starts, exactly as a plain
PyTorch loop builds it before training (its constructor sets the first learning rate), and stepped:

* ``step_every="epoch"``: after each epoch (:func:`after_training_epoch`), as ``scheduler.step()`` at the end of
  an epoch of a plain loop; epochs count across experiences unless ``reset_per_experience``.
* ``step_every="iteration"``: after every optimizer update (:func:`after_update`) that changed the parameters:
  every minibatch in a plain run, every k-th with gradient accumulation, not after a mixed-precision step skipped
  for non-finite gradients. Give ``OneCycleLR``'s ``total_steps`` (or ``CosineAnnealingLR``'s ``T_max``) in
  optimizer updates.
* ``ReduceLROnPlateau`` steps once per epoch on a monitored metric (:class:`~clkernel_training.MetricMonitor`):
  a training metric at the end of each epoch, or an evaluation metric when its stream is evaluated after an epoch
  (``eval_every``) or after the experience's last epoch.

``reset_per_experience=True`` gives every experience the same schedule: before each experience after the first,
each parameter group's learning rate goes back to its value before the first scheduler was built, and a new
scheduler is built (``ReduceLROnPlateau``'s best value and patience counters start again).

The learning rate is logged through ``state.log_metrics`` as ``lr_epoch/train/<stream>`` (the rate an epoch
started with, logged at its end) or ``lr_mb/train/<stream>`` (the rate of each optimizer update, logged after it);
parameter groups after the first are ``lr_pg1_...``, ``lr_pg2_...``.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from typing import Any, Callable, Mapping

import torch
from torch.optim import lr_scheduler as torch_schedulers

import clkernel
from clkernel import TrainState, metric_name
from clkernel_training.monitor import MetricMonitor, optimizer_updated

__all__ = ["STEP_EVERY", "LRScheduler", "scheduler_classes"]

#: When the scheduler steps.
STEP_EVERY = ("epoch", "iteration")
_LOG_EVERY = ("epoch", "iteration", "never")
#: Schedulers built over other schedulers: they need the scheduler objects, so they are built from Python.
_COMPOSITE = ("SequentialLR", "ChainedScheduler")

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def scheduler_classes() -> dict[str, type]:
    """The scheduler classes of ``torch.optim.lr_scheduler`` that can be named, by name (every public subclass of
    ``LRScheduler``, ``ReduceLROnPlateau`` included, except those built over other schedulers)."""
    out = {}
    for name in dir(torch_schedulers):
        obj = getattr(torch_schedulers, name)
        if (not name.startswith("_") and isinstance(obj, type) and issubclass(obj, torch_schedulers.LRScheduler)
                and obj is not torch_schedulers.LRScheduler and name not in _COMPOSITE):
            out[name] = obj
    return out


_SIMPLE = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
           "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
           "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str), "None": lambda v: v is None}


#: The plugin's own options (the factory's), besides the scheduler class's.
_OWN_OPTIONS = ("scheduler", "step_every", "reset_per_experience", "monitor", "log_every")


def _check_options(cls: type, options: Mapping[str, Any], owner: str) -> None:
    """Every key is a parameter of ``cls``, every required parameter is given, and values annotated with plain
    types (``int``, ``float``, ``bool``, ``str``, ``None`` and their unions) have one of them."""
    params = {k: p for k, p in inspect.signature(cls).parameters.items()
              if k != "optimizer" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    where = f"{owner}: {cls.__name__}"
    for key, value in options.items():
        if key not in params:  # a misspelling of the plugin's own options is as likely as of the class's
            close = difflib.get_close_matches(key, [*params, *_OWN_OPTIONS], n=1)
            raise ValueError(f"{where} has no option {key!r}; its options: {', '.join(params) or '(none)'} (and "
                             f"{owner}'s own: {', '.join(_OWN_OPTIONS)})"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        annotation = params[key].annotation
        if isinstance(annotation, str):
            kinds = [part.strip() for part in annotation.split("|")]
            if all(k in _SIMPLE for k in kinds) and not any(_SIMPLE[k](value) for k in kinds):
                raise ValueError(f"{where}: option {key}={value!r} must be {annotation}")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in options]
    if missing:
        raise ValueError(f"{where} needs option {missing[0]}: give it as {owner}:scheduler={cls.__name__},"
                         f"{missing[0]}=... (its options: {', '.join(params)})")


class LRScheduler:
    """A ``torch.optim.lr_scheduler`` scheduler driven by the loop (see the module docstring for when it steps).

    :param scheduler: the name of a class of ``torch.optim.lr_scheduler`` (:func:`scheduler_classes`), such a
        class, or, from Python, a function ``optimizer -> scheduler`` (for ``SequentialLR`` and other
        compositions; it is called again at every reset).
    :param step_every: ``"epoch"`` or ``"iteration"`` (every optimizer update); ``ReduceLROnPlateau`` steps per
        epoch only.
    :param reset_per_experience: restart the schedule (learning rates and scheduler) at each experience.
    :param monitor: ``ReduceLROnPlateau`` only, where it is required: the metric name it steps on
        (``loss_epoch/train/train``, ``loss_exp/eval/valid``...; see :class:`~clkernel_training.MetricMonitor`).
        Without a ``mode`` option, the scheduler's mode is ``max`` for a metric whose quantity holds ``acc``.
    :param log_every: when the learning rate is logged: ``"epoch"``, ``"iteration"`` or ``"never"`` (default:
        as ``step_every``).
    :param options: the scheduler class's own options (``T_max=10``, ``gamma=0.5``...), checked against its
        signature.
    :raises ValueError: naming the option, for an unknown scheduler (with a did-you-mean), an option the class does
        not take, a missing required one, a value of the wrong type, a bad ``step_every`` / ``log_every``, or a
        ``monitor`` missing for ``ReduceLROnPlateau`` or given for another scheduler.
    """

    name = "lr-scheduler"

    def __init__(self, scheduler: str | type | SchedulerFactory, *, step_every: str = "epoch",
                 reset_per_experience: bool = False, monitor: str | None = None, log_every: str | None = None,
                 **options: Any) -> None:
        who = self.name
        if isinstance(scheduler, str):
            classes = scheduler_classes()
            if scheduler in _COMPOSITE:
                raise ValueError(f"{who}: {scheduler} is built over other schedulers: from Python, pass a function "
                                 f"optimizer -> {scheduler}(optimizer, [...]) as the scheduler")
            if scheduler not in classes:
                close = difflib.get_close_matches(scheduler, classes, n=1)
                raise ValueError(f"{who}: unknown scheduler {scheduler!r}" +
                                 (f"; did you mean {close[0]!r}?" if close else "") +
                                 f"; schedulers: {', '.join(classes)}")
            scheduler = classes[scheduler]
        if isinstance(scheduler, type):
            if not issubclass(scheduler, torch_schedulers.LRScheduler):
                raise ValueError(f"{who}: {scheduler.__name__} is not a torch.optim.lr_scheduler.LRScheduler")
            _check_options(scheduler, options, who)
            cls, label = scheduler, scheduler.__name__
        elif callable(scheduler):
            if options:
                raise ValueError(f"{who}: options {sorted(options)} are for a scheduler class; a function builds "
                                 f"its scheduler itself")
            cls, label = None, getattr(scheduler, "__name__", "function")
        else:
            raise ValueError(f"{who}: scheduler must be a scheduler name, class or function, got {scheduler!r}")
        if step_every not in STEP_EVERY:
            raise ValueError(f"{who}: step_every must be 'epoch' or 'iteration', got {step_every!r}")
        log_every = step_every if log_every is None else log_every
        if log_every not in _LOG_EVERY:
            raise ValueError(f"{who}: log_every must be one of {', '.join(_LOG_EVERY)}, got {log_every!r}")
        if not isinstance(reset_per_experience, bool):
            raise ValueError(f"{who}: reset_per_experience must be true or false, got {reset_per_experience!r}")
        plateau = cls is not None and issubclass(cls, torch_schedulers.ReduceLROnPlateau)
        if plateau:
            if monitor is None:
                raise ValueError(f"{who}: ReduceLROnPlateau steps on a metric: give monitor=METRIC "
                                 f"(e.g. loss_epoch/train/train or loss_exp/eval/valid)")
            if step_every != "epoch":
                raise ValueError(f"{who}: ReduceLROnPlateau steps once per epoch, on its metric: step_every must "
                                 f"be 'epoch', got {step_every!r}")
        elif monitor is not None:
            raise ValueError(f"{who}: monitor applies to ReduceLROnPlateau only, not to {label}")
        #: What steps the scheduler on (None: it steps on its own).
        self.monitor = MetricMonitor(monitor, who) if monitor is not None else None
        if plateau and "mode" not in options:
            options = {**options, "mode": self.monitor.mode}  # type: ignore[union-attr]
        self.scheduler_name, self.options = label, dict(options)
        self.step_every, self.log_every, self.reset_per_experience = step_every, log_every, reset_per_experience
        self._factory: SchedulerFactory = (lambda opt: cls(opt, **self.options)) if cls is not None \
            else scheduler  # type: ignore[assignment]
        #: The torch scheduler, built when training starts.
        self.scheduler: Any = None
        self._pending: dict[str, Any] | None = None  # a loaded state, applied when the scheduler is built
        self._initial_lrs: list[float] | None = None
        self._experiences = 0  # training experiences started
        self._index: int | None = None  # the index of the experience being trained
        self._epoch_lrs: list[float] = []
        self._window = self._measured = False  # (plateau) an epoch ended and its value may come; a value came

    # ------------------------------------------------------------------ building

    def _build(self, optimizer: torch.optim.Optimizer) -> None:
        lrs = [group["lr"] for group in optimizer.param_groups]
        if self._initial_lrs is None:
            self._initial_lrs = list(lrs)
        self.scheduler = self._factory(optimizer)
        if self._pending is not None:  # resuming: the loaded optimizer holds the learning rates
            self.scheduler.load_state_dict(self._pending)
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
            self._pending = None

    def _reset(self, optimizer: torch.optim.Optimizer) -> None:
        for group, lr in zip(optimizer.param_groups, self._initial_lrs):  # type: ignore[arg-type]
            group["lr"] = lr
            group.pop("initial_lr", None)
        self.scheduler = self._factory(optimizer)

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training(self, state: TrainState) -> None:
        if self.monitor is not None:
            self.monitor.check_streams(state)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._check_measured(state)
        optimizer = state.optimizer
        if self.scheduler is None or self.scheduler.optimizer is not optimizer:
            self._build(optimizer)
        groups = len(optimizer.param_groups)
        if self._initial_lrs is not None and len(self._initial_lrs) != groups:
            raise ValueError(f"{self.name}: the optimizer has {groups} parameter groups, but the scheduler was "
                             f"built for {len(self._initial_lrs)}")
        if self.reset_per_experience and self._experiences > 0:
            self._reset(optimizer)
        self._experiences += 1
        self._index = state.experience.index  # type: ignore[union-attr]
        self._window = self._measured = False

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        self._window = False
        self._epoch_lrs = [group["lr"] for group in state.optimizer.param_groups]
        if self.monitor is not None and self.monitor.phase == "train":
            self.monitor.mark(state)

    @clkernel.hookimpl
    def after_update(self, state: TrainState) -> None:
        if self.step_every == "iteration" or self.log_every == "iteration":
            if self.scheduler is None:  # resumed inside an experience: before_training_exp did not fire
                self._build(state.optimizer)
            if self.log_every == "iteration":
                self._log(state, "mb", [group["lr"] for group in state.optimizer.param_groups])
            if self.step_every == "iteration" and optimizer_updated(state.optimizer):
                self.scheduler.step()

    @clkernel.hookimpl(trylast=True)  # after the metric plugins: a monitored training metric is logged by then
    def after_training_epoch(self, state: TrainState) -> None:
        if self.scheduler is None:  # resumed inside an experience: before_training_exp did not fire
            self._build(state.optimizer)
        if self.log_every == "epoch":
            self._log(state, "epoch", self._epoch_lrs)
        if self.monitor is None:
            if self.step_every == "epoch":
                self.scheduler.step()
        elif self.monitor.phase == "train":
            self._step_on(self.monitor.train_value(state))
        else:
            self._window = True

    @clkernel.hookimpl(trylast=True)  # after the metric plugins have logged the stream's values
    def after_eval(self, state: TrainState) -> None:
        if not self._window or self.monitor is None:
            return
        value = self.monitor.eval_value(state, self._index)
        if value is not None:
            self._window = False
            if self.scheduler is None:
                self._build(state.optimizer)
            self._step_on(value)

    @clkernel.hookimpl
    def after_training(self, state: TrainState) -> None:
        self._check_measured(state)
        self._window = False

    # ------------------------------------------------------------------ helpers

    def _step_on(self, value: float) -> None:
        self._measured = True
        self.scheduler.step(value)

    def _check_measured(self, state: TrainState) -> None:
        """A plateau scheduler on an evaluation metric that got no value during a whole experience is misused."""
        if (self.monitor is not None and self.monitor.phase == "eval" and self._experiences > 0
                and not self._measured and self.scheduler is not None):
            raise ValueError(f"{self.name}: monitor {self.monitor.name(self._index)!r} was never logged during "
                             f"experience {self._index}: stream {self.monitor.stream!r} must be evaluated after "
                             f"the epochs (Strategy(eval_every=K), `clkernel run --eval-every K`; eval_every=-1 "
                             f"evaluates nothing)")

    def _log(self, state: TrainState, granularity: str, lrs: list[float]) -> None:
        values = {}
        for i, lr in enumerate(lrs):
            quantity = "lr" if i == 0 else f"lr_pg{i}"
            values[metric_name(quantity, granularity, "train", state.stream_name)] = float(lr)
        state.log_metrics(values)

    @property
    def last_lr(self) -> list[float]:
        """The learning rate of each parameter group after the scheduler's last step (empty before it is built)."""
        return list(self.scheduler.get_last_lr()) if self.scheduler is not None else []

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's own ``state_dict()`` (a copy), the initial learning rates and the plugin's counters."""
        sched = copy.deepcopy(self.scheduler.state_dict()) if self.scheduler is not None else \
            copy.deepcopy(self._pending)
        return {"scheduler": sched, "initial_lrs": None if self._initial_lrs is None else list(self._initial_lrs),
                "experiences": self._experiences, "index": self._index, "window": self._window,
                "measured": self._measured, "epoch_lrs": list(self._epoch_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned; the scheduler is rebuilt on the optimizer when training starts
        (with the optimizer's state loaded first, so that its learning rates are the checkpoint's)."""
        self._pending = copy.deepcopy(state["scheduler"])
        self.scheduler = None
        self._initial_lrs = None if state["initial_lrs"] is None else list(state["initial_lrs"])
        self._experiences, self._index = int(state["experiences"]), state["index"]
        self._window, self._measured = bool(state["window"]), bool(state["measured"])
        self._epoch_lrs = list(state["epoch_lrs"])
