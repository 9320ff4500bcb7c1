"""Early stopping within each experience, on a monitored metric (Prechelt, 1998, "Early Stopping - But When?"),
with the semantics of Keras' ``EarlyStopping`` and Avalanche's ``EarlyStoppingPlugin``.

Each experience starts afresh. Each time the monitored value comes (see :class:`~clkernel_training.MetricMonitor`:
an evaluation metric when its stream is evaluated after an epoch, which needs ``eval_every=K`` with K smaller than
the number of epochs; a training metric at the end of each epoch), it is compared with the best value of the
experience so far: it improves when it is lower than ``best - min_delta`` (mode ``min``) or higher than
``best + min_delta`` (mode ``max``). An improvement makes it the best (and, with ``restore_best_weights``, copies
the model's weights); otherwise a counter grows, and when ``patience`` values in a row have not improved the
experience's epochs stop (``state.stop_training``) after this epoch and, with ``restore_best_weights``, the model
gets the best weights back before the experience ends (so the end-of-experience evaluation and the plugins acting
at :func:`after_training_exp` see them). When every epoch runs, the weights after the last epoch are kept (that
epoch was not measured during training: the loop's periodic evaluation skips the last epoch), as in Avalanche.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.log import get_logger
from clkernel.validate import non_negative_number, positive_int
from clkernel_training.monitor import MetricMonitor

__all__ = ["EarlyStopping"]

log = get_logger("clkernel.training")


class EarlyStopping:
    """Stop the current experience's epochs when the monitored metric stops improving (see the module docstring).

    :param monitor: the metric name (:class:`~clkernel_training.MetricMonitor`); the default,
        ``loss_exp/eval/valid``, is the validation loss of the experience being trained.
    :param mode: ``"min"``, ``"max"`` or ``"auto"`` (``max`` for a quantity holding ``acc``, else ``min``).
    :param patience: how many values in a row without improvement stop the experience (>= 1).
    :param min_delta: the smallest change that counts as an improvement (>= 0, in the metric's unit).
    :param restore_best_weights: when stopping, load the weights (parameters and buffers) of the best value.
    :raises ValueError: naming the option, for a bad monitor name, mode, patience or min_delta; at
        :func:`before_training`, when ``train()`` does not evaluate the monitored stream; when a monitored value
        is missing where it should be logged; after the first experience of several epochs whose epochs gave no
        value (no evaluation during the experience).

    After training, ``stopped`` maps each experience index that stopped early to the epoch after which it stopped
    and ``best_epochs`` each experience index to the epoch of its best value.
    """

    name = "early-stopping"

    def __init__(self, monitor: str = "loss_exp/eval/valid", mode: str = "auto", patience: int = 3,
                 min_delta: float = 0.0, restore_best_weights: bool = True) -> None:
        self.monitor = MetricMonitor(monitor, self.name, mode=mode)
        self.patience = positive_int(patience, "patience", self.name)
        self.min_delta = non_negative_number(min_delta, "min_delta", self.name)
        if not isinstance(restore_best_weights, bool):
            raise ValueError(f"{self.name}: restore_best_weights must be true or false, got {restore_best_weights!r}")
        self.restore_best_weights = restore_best_weights
        #: Experience index -> the epoch after which its training stopped (only experiences that stopped early).
        self.stopped: dict[int, int] = {}
        #: Experience index -> the epoch of its best monitored value.
        self.best_epochs: dict[int, int] = {}
        self._clear()

    def _clear(self) -> None:
        self.best: float | None = None
        self.wait = 0
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._index: int | None = None
        self._window = self._measured = False

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training(self, state: TrainState) -> None:
        self.monitor.check_streams(state)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._clear()
        self._index = state.experience.index  # type: ignore[union-attr]

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        self._window = False
        if self.monitor.phase == "train":
            self.monitor.mark(state)

    @clkernel.hookimpl(trylast=True)  # after the metric plugins: a monitored training metric is logged by then
    def after_training_epoch(self, state: TrainState) -> None:
        if self.monitor.phase == "train":
            self._update(state, self.monitor.train_value(state))
        elif state.epoch + 1 < state.train_epochs:  # the loop evaluates periodically only before the last epoch
            self._window = True

    @clkernel.hookimpl(trylast=True)  # after the metric plugins have logged the stream's values
    def after_eval(self, state: TrainState) -> None:
        if self._window:
            value = self.monitor.eval_value(state, self._index)
            if value is not None:
                self._window = False
                self._update(state, value)

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self._window = False
        if self.monitor.phase == "eval" and state.train_epochs > 1 and not self._measured:
            raise ValueError(
                f"{self.name}: monitor {self.monitor.name(self._index)!r} was never logged between the epochs of "
                f"experience {self._index}, so early stopping cannot act: evaluate stream {self.monitor.stream!r} "
                f"during the experience, every K < {state.train_epochs} epochs (Strategy(eval_every=K), "
                f"`clkernel run --eval-every K --eval-streams {self.monitor.stream},...`)")
        self._best_weights = None  # the experience is over: its best weights are no longer needed

    # ------------------------------------------------------------------ the rule

    def _update(self, state: TrainState, value: float) -> None:
        self._measured = True
        if self.monitor.improved(value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            self.best_epochs[self._index] = state.epoch  # type: ignore[index]
            if self.restore_best_weights:
                self._best_weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.stop_training = True
            self.stopped[self._index] = state.epoch  # type: ignore[index]
            restored = self.restore_best_weights and self._best_weights is not None
            if restored:
                state.model.load_state_dict(self._best_weights)  # type: ignore[arg-type]
            log.info("early_stopping", experience=self._index, epoch=state.epoch, monitor=self.monitor.metric,
                     best=self.best, best_epoch=self.best_epochs.get(self._index), restored=restored)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The experience's best value, counter and best weights (copies), and the per-experience records."""
        weights = None if self._best_weights is None else {k: v.clone() for k, v in self._best_weights.items()}
        return {"best": self.best, "wait": self.wait, "best_weights": weights, "index": self._index,
                "window": self._window, "measured": self._measured, "stopped": dict(self.stopped),
                "best_epochs": dict(self.best_epochs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.wait, self._index = int(state["wait"]), state["index"]
        weights = state["best_weights"]
        self._best_weights = None if weights is None else {k: v.clone() for k, v in weights.items()}
        self._window, self._measured = bool(state["window"]), bool(state["measured"])
        self.stopped, self.best_epochs = dict(state["stopped"]), dict(state["best_epochs"])
