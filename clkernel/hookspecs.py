"""The clkernel event spec: every point where a plugin can act, and the registration hooks.

The training loop, with every event where it fires (``S`` is the one :class:`~clkernel.TrainState`)::

    clkernel.run(strategy, benchmark) / strategy.train / strategy.eval, the first of them:
        before_run(S)                                         # once per strategy, on every rank

    strategy.train(experiences, eval_streams):                # S.eval_streams = eval_streams
        before_training(S)                                    # once per train() call
        if not S.experiences_trained and any(needs_initial_eval(S)):
            strategy.eval(s) for s in S.eval_streams          # forward transfer's baseline
        for S.experience in experiences:
            before_training_exp(S)                            # per experience
            before_train_dataset_adaptation(S)
            S.dataset = S.experience.dataset.train()          # plugins may replace S.dataset
            after_train_dataset_adaptation(S)
            S.dataloader = loader over S.dataset              # plugins may replace it per epoch
            <model adaptation, then optimizer update>         # dynamic modules grow here
            for S.epoch in range(train_epochs):
                before_training_epoch(S)                      # per epoch
                for S.mb in S.dataloader:
                    before_training_iteration(S)              # per iteration, from here down
                    S.optimizer.zero_grad()
                    before_forward(S)
                    S.mb_output = model(S.mb_x[, S.mb_task])
                    after_forward(S)
                    S.loss = criterion(S.mb_output, S.mb_y) + sum(loss_terms(S))
                    before_backward(S)
                    S.loss.backward()
                    after_backward(S)
                    before_update(S)
                    S.optimizer.step()
                    after_update(S)
                    after_training_iteration(S)
                after_training_epoch(S)                       # then periodic eval (eval_every > 0)
                if S.stop_training: break
            after_training_exp(S)                             # then eval (eval_every >= 0)
        after_training(S)

    strategy.eval(experiences):
        before_eval(S)                                        # once per eval() call
        for S.experience in experiences:
            before_eval_exp(S)                                # per experience
            before_eval_dataset_adaptation(S)
            S.dataset = S.experience.dataset.eval()
            after_eval_dataset_adaptation(S)
            <model adaptation>
            for S.mb in loader over S.dataset:                # under torch.no_grad()
                before_eval_iteration(S)                      # per iteration
                before_eval_forward(S)
                S.mb_output = model(S.mb_x[, S.mb_task])
                after_eval_forward(S)
                after_eval_iteration(S)
            after_eval_exp(S)
        after_eval(S)

    strategy.close() (clkernel.run does it, also on error):
        after_run(S)                                          # once, on every rank
        files = output_files(S)                               # rank 0: what the plugins wrote

Any plugin may call ``S.log_metrics(values)`` at any point; that fires :func:`log_metrics` on every plugin, so
metrics and loggers never import each other. Every training event takes the one argument ``state``; a plugin
implements only the events it needs, each marked with :data:`clkernel.hookimpl`. Events that no plugin
implements cost nothing per minibatch. Return values are ignored, except those of the events whose
:data:`SPEC` entry says how they are collected (:func:`needs_initial_eval`, :func:`loss_terms`,
:func:`output_files`). :func:`log_metrics` and :func:`output_files` fire on rank 0 only, so loggers never check
the rank.

Registration hooks are separate: they are implemented by the modules that entry points of the group
``clkernel.plugins`` name, and each adds named components (benchmarks, models, training plugins, metrics,
loggers) to the process-wide registry by calling ``register(name, factory, summary=...)``.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any, Callable

import pluggy
from attrs import frozen

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from clkernel.state import TrainState

__all__ = ["EVENTS", "ITERATION_EVENTS", "PROJECT", "REGISTRATION_HOOKS", "SPEC", "EventSpec", "RegistrationHooks",
           "TrainingEvents", "hookimpl", "hookspec", "plain_text", "spec_arguments", "spec_summary"]

PROJECT = "clkernel"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@frozen
class EventSpec:
    """What the loop promises about one event: when it fires, on which ranks, and what its results mean.

    :param frequency: when it fires, in words (``"per iteration"``); ``"per iteration"`` events are dispatched
        through the loop's prebuilt calls.
    :param result: ``None`` when return values are ignored, else how the loop collects and combines them.
    :param rank_zero: True when the event fires on rank 0 only (results and files: written once).
    """

    name: str
    frequency: str
    result: str | None = None
    rank_zero: bool = False


#: Every event of :class:`TrainingEvents`, in the order the loop fires them.
SPEC: dict[str, EventSpec] = {}


def _event(frequency: str, *, result: str | None = None, rank_zero: bool = False
           ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(spec: Callable[..., Any]) -> Callable[..., Any]:
        SPEC[spec.__name__] = EventSpec(spec.__name__, frequency, result, rank_zero)
        return hookspec(spec)

    return mark


class TrainingEvents:
    """The events the loop fires, in the order it fires them. One plugin manager per strategy holds them."""

    # -------------------------------------------------------------------------
    # The run
    # -------------------------------------------------------------------------

    @_event("once per strategy")
    def before_run(self, state: TrainState) -> None:
        """Called once, when the strategy first trains or evaluates (``clkernel.run`` or the first ``train()`` /
        ``eval()`` call), before any other event.

        :param state: ``state.model``, ``state.optimizer``, ``state.device``, ``state.rank`` and
            ``state.world_size`` are set; no experience is set (``state.experience`` is None).

        A plugin may set up what lasts the whole run: timers, background samplers, caches. It fires on every
        rank; loggers open their files lazily, in :func:`log_metrics`, which fires on rank 0 only.

        :raises: any exception stops the run; :func:`after_run` still fires (through ``strategy.close()``).

        .. versionadded:: 0.2
        """

    @_event("once per strategy, at its first train() call",
            result="collected: if any plugin returns True, the loop evaluates state.eval_streams before the "
                   "first training experience")
    def needs_initial_eval(self, state: TrainState) -> bool | None:
        """Asked once, at the first ``train()`` call (after :func:`before_training`), whether a plugin needs the
        evaluation streams evaluated before anything is trained (forward transfer compares against it).

        :param state: ``state.eval_streams`` holds the streams given to ``train(..., eval_streams=...)``;
            ``state.experiences_trained`` is 0.
        :returns: True to ask for the evaluation; False or None otherwise. The loop evaluates each stream of
            ``state.eval_streams`` once if any plugin returns True, the same from Python and from
            ``clkernel run``.

        .. versionadded:: 0.2
        """

    # -------------------------------------------------------------------------
    # Training: experience boundaries
    # -------------------------------------------------------------------------

    @_event("once per train() call")
    def before_training(self, state: TrainState) -> None:
        """Called at the start of :meth:`Strategy.train`, before the first experience.

        :param state: the training state; ``state.is_training`` is True, ``state.experience`` is not set yet.

        Use it to set up per-run state (timers, logger headers).

        .. versionadded:: 0.1
        """

    @_event("per training experience")
    def before_training_exp(self, state: TrainState) -> None:
        """Called when a training experience starts, before its dataset is adapted.

        :param state: ``state.experience`` is the experience about to be trained; the model has not been
            adapted to it yet.

        .. versionadded:: 0.1
        """

    @_event("per training experience")
    def before_train_dataset_adaptation(self, state: TrainState) -> None:
        """Called before ``state.dataset`` is set to the experience's training dataset.

        :param state: ``state.experience.dataset`` may be read or replaced here.

        .. versionadded:: 0.1
        """

    @_event("per training experience")
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        """Called after ``state.dataset`` holds the experience's dataset (train transforms), before the loader
        is built from it.

        :param state: a plugin may replace ``state.dataset`` (for example concatenate a replay buffer);
            the loader is then built over the replacement.

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Training: epochs and iterations
    # -------------------------------------------------------------------------

    @_event("per epoch")
    def before_training_epoch(self, state: TrainState) -> None:
        """Called at the start of each epoch, after model adaptation and the optimizer update.

        :param state: ``state.epoch`` counts epochs of the current experience from 0. A plugin may replace
            ``state.dataloader`` (any iterable of ``(x, y, t)`` minibatches) for this epoch.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_training_iteration(self, state: TrainState) -> None:
        """Called when a training minibatch has been loaded and moved to the device.

        :param state: ``state.mb`` is the ``(x, y, t)`` minibatch; a plugin may replace it (for example to
            add replayed samples).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_forward(self, state: TrainState) -> None:
        """Called after the gradients were zeroed, right before the forward pass.

        :param state: ``state.mb`` may still be replaced.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_forward(self, state: TrainState) -> None:
        """Called right after the forward pass.

        :param state: ``state.mb_output`` holds the model's output and may be changed (for example masked).

        .. versionadded:: 0.1
        """

    @_event("per iteration", result="collected: each non-None tensor is added to the loss and recorded under the "
                                      "plugin's name in state.loss_terms")
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        """Called after :func:`after_forward` to collect extra terms of the loss (regularisers, distillation).

        :param state: the output of the forward pass is ``state.mb_output``.

        All results are collected: each non-None tensor is added to the criterion's loss, and recorded under
        the plugin's name in ``state.loss_terms``. Plugins never need to coordinate.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_backward(self, state: TrainState) -> None:
        """Called when ``state.loss`` holds the total loss, before ``loss.backward()``.

        :param state: ``state.loss`` may be replaced.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_backward(self, state: TrainState) -> None:
        """Called after ``loss.backward()``: gradients are in the parameters' ``.grad``.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_update(self, state: TrainState) -> None:
        """Called before ``optimizer.step()``: gradients may be changed (projected, clipped, masked).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_update(self, state: TrainState) -> None:
        """Called after ``optimizer.step()``.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_training_iteration(self, state: TrainState) -> None:
        """Called at the end of each training iteration; ``state.iteration`` has been incremented.

        .. versionadded:: 0.1
        """

    @_event("per epoch")
    def after_training_epoch(self, state: TrainState) -> None:
        """Called at the end of each epoch, before the periodic evaluation.

        :param state: a plugin may set ``state.stop_training = True`` to end this experience's epochs early.

        .. versionadded:: 0.1
        """

    @_event("per training experience")
    def after_training_exp(self, state: TrainState) -> None:
        """Called when the experience's epochs are done, before the end-of-experience evaluation.

        :param state: the model is trained on ``state.experience``; buffers and importances are updated here.

        .. versionadded:: 0.1
        """

    @_event("once per train() call")
    def after_training(self, state: TrainState) -> None:
        """Called at the end of :meth:`Strategy.train`, after the last experience.

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Evaluation
    # -------------------------------------------------------------------------

    @_event("once per eval() call")
    def before_eval(self, state: TrainState) -> None:
        """Called at the start of :meth:`Strategy.eval`; the model is in eval mode.

        :param state: ``state.is_training`` is False and ``state.stream_name`` names the evaluated stream.
            When eval() is called inside train(), the training fields are restored afterwards.

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def before_eval_exp(self, state: TrainState) -> None:
        """Called when an evaluation experience starts.

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def before_eval_dataset_adaptation(self, state: TrainState) -> None:
        """Called before ``state.dataset`` is set to the experience's dataset (eval transforms).

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def after_eval_dataset_adaptation(self, state: TrainState) -> None:
        """Called after ``state.dataset`` is set; a plugin may replace it before the loader is built.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_eval_iteration(self, state: TrainState) -> None:
        """Called when an evaluation minibatch ``state.mb`` has been loaded and moved to the device.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_eval_forward(self, state: TrainState) -> None:
        """Called right before the evaluation forward pass (under ``torch.no_grad()``).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_eval_forward(self, state: TrainState) -> None:
        """Called right after the evaluation forward pass; ``state.mb_output`` holds the output.

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_eval_iteration(self, state: TrainState) -> None:
        """Called at the end of each evaluation iteration; metrics accumulate here.

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def after_eval_exp(self, state: TrainState) -> None:
        """Called when an evaluation experience is done; experience-level metrics are emitted here.

        .. versionadded:: 0.1
        """

    @_event("once per eval() call")
    def after_eval(self, state: TrainState) -> None:
        """Called at the end of :meth:`Strategy.eval`; stream-level metrics are emitted here.

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Metric values to loggers
    # -------------------------------------------------------------------------

    @_event("whenever a plugin calls state.log_metrics", rank_zero=True)
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        """Called with metric values, from whichever plugin computed them, for every logger to write.

        :param state: ``state.iteration`` (training iterations so far) is the step loggers should use.
        :param values: metric name -> value (a float, a tensor, or an object a logger knows, such as a
            matplotlib figure). Names follow the scheme of :mod:`clkernel.names`.

        Values also become the result of ``train()`` / ``eval()`` (last value wins).

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # End of the run
    # -------------------------------------------------------------------------

    @_event("once per strategy, at strategy.close()")
    def after_run(self, state: TrainState) -> None:
        """Called once when the run ends: ``strategy.close()``, which ``clkernel.run`` and ``with strategy:``
        call, also when training failed.

        :param state: the state as the last event left it.

        A plugin closes here what it opened (files, writers, threads) and writes its final outputs. It fires on
        every rank; a logger that opened nothing (not rank 0) has nothing to close.

        .. versionadded:: 0.2
        """

    @_event("once per strategy, at strategy.close(), after after_run", rank_zero=True,
            result="collected: the paths of every plugin, in plugin order; clkernel run prints them")
    def output_files(self, state: TrainState) -> list[Path] | None:
        """Asked after :func:`after_run` for the files a plugin wrote (result files, plots, event files).

        :returns: a list of paths (``pathlib.Path`` or ``str``), or None. ``strategy.close()`` returns them
            all, in plugin order, and ``clkernel run`` prints them.

        .. versionadded:: 0.2
        """


#: The training events, in the order the loop fires them.
EVENTS: tuple[str, ...] = tuple(SPEC)
#: The per-iteration events, which the loop dispatches through prebuilt tuples.
ITERATION_EVENTS: tuple[str, ...] = tuple(name for name, e in SPEC.items() if e.frequency == "per iteration")


class RegistrationHooks:
    """Hooks that entry-point modules implement to add named components to the process-wide registry.

    ``register(name, factory, *, summary="", default=False)`` adds one component. ``factory(**options)``
    builds it; its signature documents the options (``clkernel show KIND NAME`` prints them). ``default=True``
    marks a component that ``clkernel run`` uses when the user names none of that kind.
    """

    @hookspec
    def register_benchmarks(self, register: Callable[..., None]) -> None:
        """Register benchmark factories, each returning a :class:`~clkernel.Benchmark`.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_models(self, register: Callable[..., None]) -> None:
        """Register model factories, each returning a ``torch.nn.Module``.

        Factory parameters named ``num_classes``, ``input_size``, ``input_shape`` or ``in_channels`` are filled
        from the benchmark by ``clkernel run`` unless the user gives them.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_plugins(self, register: Callable[..., None]) -> None:
        """Register training-plugin factories (replay, ewc, ...), each returning an object implementing events.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_metrics(self, register: Callable[..., None]) -> None:
        """Register metric factories, each returning a plugin object that calls ``state.log_metrics``.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_loggers(self, register: Callable[..., None]) -> None:
        """Register logger factories, each returning a plugin object implementing :func:`log_metrics`.

        Factory parameters named ``run_dir`` or ``config`` are filled by ``clkernel run``.

        .. versionadded:: 0.1
        """

#: The registration hooks, in the order the registry runs them.
REGISTRATION_HOOKS: tuple[str, ...] = ("register_benchmarks", "register_models", "register_plugins",
                                       "register_metrics", "register_loggers")

_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc):`~?([^`]+)`")


def plain_text(text: str) -> str:
    """A docstring with its reStructuredText markup removed: ``:func:`x``` and ````x```` become ``x``."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).startswith((":func:`~", ":class:`~",
                                                                                        ":meth:`~", ":data:`~"))
                     else m.group(1), text)
    return text.replace("``", "")


def spec_arguments(hooks: type, name: str) -> list[str]:
    """The argument names of event or registration hook ``name`` of ``hooks``, without ``self``."""
    return [a for a in inspect.signature(getattr(hooks, name)).parameters if a != "self"]


def spec_summary(hooks: type, name: str) -> str:
    """The first paragraph of ``name``'s docstring, on one line, as plain text."""
    doc = inspect.getdoc(getattr(hooks, name)) or ""
    return " ".join(plain_text(doc.split("\n\n")[0]).split())
