"""The clkernel event spec: every point where a plugin can act, and the registration hooks.

The loop, with every event where it fires (``S`` is the strategy's one :class:`~clkernel.TrainState`)::

    at the first strategy.train() or top-level strategy.eval() call (for clkernel.run: its train() call):
        before_run(S)                                         # once per strategy, every rank

    strategy.train(experiences, eval_streams):
        S.eval_streams = eval_streams, then before_run(S) on the first call
        S.is_training, S.metrics, S.stream_name = True, {}, <first experience's stream name>
        before_training(S)                                    # once per train() call
        if first train() call and any(needs_initial_eval(S)): # asked once per strategy
            strategy.eval(stream) for stream in S.eval_streams  # forward transfer's baseline
        for S.experience in experiences:
            S.epoch, S.stop_training = 0, False; model.train()
            before_training_exp(S)                            # per experience
            before_train_dataset_adaptation(S)                # plugins may replace S.experience.dataset
            S.dataset = S.experience.dataset.train()
            after_train_dataset_adaptation(S)                 # plugins may replace S.dataset
            S.dataloader = loader over S.dataset              # one shuffled epoch per iteration over it
            <model adaptation, then optimizer update>         # dynamic modules grow here
            for S.epoch in range(train_epochs):               # modules keep their modes: no model.train() here
                before_training_epoch(S)                      # plugins may replace S.dataloader
                S.epoch_iteration = 0
                for S.mb in S.dataloader:                     # (x, y, t), moved to S.device
                    before_training_iteration(S)              # per iteration, from here down
                    S.optimizer.zero_grad(set_to_none=True)
                    before_forward(S)
                    S.mb_output = model(S.mb_x[, S.mb_task])
                    after_forward(S)
                    S.loss_terms = {plugin: term for every non-None term of loss_terms(S)}
                    S.loss = criterion(S.mb_output, S.mb_y) + sum(S.loss_terms.values())
                    <on CPU: NonFiniteLossError if S.loss is nan or inf>  # or a warning: on_nonfinite
                    before_backward(S)
                    S.loss.backward()
                    after_backward(S)
                    before_update(S)
                    S.optimizer.step()
                    after_update(S)
                    S.iteration += 1; S.epoch_iteration += 1
                    after_training_iteration(S)
                <off CPU: that check, for the epoch's iterations>  # also every 1024 iterations
                after_training_epoch(S)                       # per epoch
                if eval_every > 0 and (S.epoch + 1) % eval_every == 0 and not the last epoch:
                    strategy.eval(stream) for stream in S.eval_streams
                if S.stop_training: break
            S.experiences_trained += 1
            after_training_exp(S)
            if eval_every >= 0: strategy.eval(stream) for stream in S.eval_streams
        after_training(S)
        return S.metrics

    strategy.eval(experiences):                               # all of it under torch.no_grad()
        save S.experience, stream_name, dataset, dataloader, mb, mb_output, epoch_iteration, metrics
        S.is_training, S.metrics, S.stream_name = False, {}, <first experience's stream name>; model.eval()
        before_eval(S)                                        # once per eval() call
        for S.experience in experiences:
            before_eval_exp(S)                                # per experience
            before_eval_dataset_adaptation(S)                 # plugins may replace S.experience.dataset
            S.dataset = S.experience.dataset.eval()
            after_eval_dataset_adaptation(S)                  # plugins may replace S.dataset
            <model adaptation>                                # no optimizer update
            S.dataloader, S.epoch_iteration = loader over S.dataset, 0  # in order, eval_mb_size
            for S.mb in S.dataloader:                         # (x, y, t), moved to S.device
                before_eval_iteration(S)                      # per iteration, from here down
                before_eval_forward(S)
                S.mb_output = model(S.mb_x[, S.mb_task])
                after_eval_forward(S)
                S.epoch_iteration += 1
                after_eval_iteration(S)
            after_eval_exp(S)
        after_eval(S)
        restore what was saved, S.is_training and each module's mode; inside train(), merge the metrics
        return the metrics logged during this call

    strategy.close() (clkernel.run and `with strategy:` call it, also on error):
        after_run(S)                                          # once, every rank, if before_run fired
        files = output_files(S)                               # rank 0: what the plugins wrote

Any plugin may call ``S.log_metrics(values)`` from any event; that fires :func:`log_metrics` on every plugin
implementing it, so metrics and loggers never import each other. Every training event but :func:`log_metrics` takes
the one argument ``state``; a plugin implements only the events it needs, each marked with
:data:`clkernel.hookimpl`. Events that no plugin implements cost nothing per minibatch. Return values are
ignored, except those of the events whose :data:`SPEC` entry says how they are collected
(:func:`needs_initial_eval`, :func:`loss_terms`, :func:`output_files`). :func:`log_metrics` and
:func:`output_files` fire on rank 0 only, so loggers never check the rank.

Errors: an exception raised by a plugin ends the call that fired the event (``train()``, ``eval()`` or
``strategy.close()``); later plugins are not called for that event. The loop re-raises it as
:class:`clkernel.PluginError`, whose ``.plugin`` and ``.event`` name the plugin and the event, with the original
exception as ``__cause__``. Pluggy dispatch is the exception: an event that goes through pluggy's own hook call
(every event of a ``Strategy(..., trace=True)``, and any event that a plugin implements as a hook wrapper) lets
the original exception through as is. The collected events and :func:`log_metrics` never go through pluggy:
they always wrap, ``plugin_manager.add_hookcall_monitoring`` does not see them, and a hook wrapper on them is a
:class:`~clkernel.CompositionError`. An error is wrapped once: a logger failing inside ``state.log_metrics`` is
reported as itself in :func:`log_metrics`, not as the plugin that logged. ``clkernel.run`` and
``with strategy:`` close the strategy after a failure too, so :func:`after_run` fires; a failed ``eval()``
restores the fields it saved and each module's mode before the error propagates.

Every docstring below follows one template: a one-line summary; ``:param:`` lines; then ``State:`` (what the
state holds when the event fires), ``May set:`` (what a plugin may change, or "Nothing to set"), ``Returns:``
(ignored, or how the results are collected, as :data:`SPEC` says) and ``Raises:`` (what a plugin's exception
does); then ``.. versionadded::``. ``clkernel hooks`` prints the summaries as plain text; ``docs/hooks.md``
renders the whole docstrings as Markdown.

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

__all__ = ["EVENTS", "ITERATION_EVENTS", "PROJECT", "REGISTRATION_FREQUENCY", "REGISTRATION_HOOKS", "SECTIONS", "SPEC",
           "EventSpec", "HookDoc", "RegistrationHooks", "TrainingEvents", "hook_doc", "hookimpl", "hookspec",
           "plain_text", "spec_arguments", "spec_summary"]

#: The pluggy project name of the events and of the registration hooks.
PROJECT = "clkernel"
#: Marks the event specifications (this module's, not plugins').
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's method as the implementation of the event of the same name: ``@clkernel.hookimpl``.
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
        """The strategy's first train() or top-level eval() call has started; no event fired before it.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            What the strategy was built with: ``state.model`` (on ``state.device``), ``state.optimizer``,
            ``state.criterion``, ``state.device``, ``state.train_mb_size``, ``state.eval_mb_size``,
            ``state.train_epochs``, ``state.rank`` and ``state.world_size``. From ``train()``,
            ``state.eval_streams`` already holds its ``eval_streams`` (from ``eval()`` it is ``()``). Nothing else
            is set yet: ``state.experience``, ``state.dataset`` and ``state.mb`` are None, the counters 0,
            ``state.is_training`` False and ``state.stream_name`` empty.
        May set:
            Nothing to set. Set up, on the plugin itself, what lasts the whole run (timers, background samplers,
            caches). It fires on every rank: loggers open their files lazily, in :func:`log_metrics` (rank 0).
        Returns:
            Ignored.
        Raises:
            Ends that ``train()`` / ``eval()`` call: re-raised as :class:`~clkernel.PluginError` naming the
            plugin and this event (as is under pluggy dispatch: see *Errors* above). The strategy counts as
            started, so ``strategy.close()`` still fires :func:`after_run`.

        .. versionadded:: 0.2
        """

    # -------------------------------------------------------------------------
    # Training: the call and its experiences
    # -------------------------------------------------------------------------

    @_event("once per train() call")
    def before_training(self, state: TrainState) -> None:
        """A train() call has started, before its first experience.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.is_training`` is True; ``state.stream_name`` names the stream of the first experience
            (``"train"`` for experiences outside a stream); ``state.eval_streams`` holds this call's
            ``eval_streams``; ``state.metrics`` is ``{}``. ``state.experience``, ``state.dataset`` and
            ``state.dataloader`` are None at the first call and, at later calls, still what the previous call
            left (the last trained experience's). ``state.iteration`` and ``state.experiences_trained`` count
            from the strategy's start.
        May set:
            Nothing to set. Set up per-call state on the plugin (timers, logger headers).
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("once per strategy, at its first train() call",
            result="collected: if any plugin returns True, the loop evaluates state.eval_streams before the "
                   "first training experience")
    def needs_initial_eval(self, state: TrainState) -> bool | None:
        """Asks, once per strategy, whether the eval streams must be evaluated before anything is trained.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`before_training`, which fired just before, in the strategy's first ``train()`` call:
            ``state.is_training`` is True, ``state.eval_streams`` holds the streams given to
            ``train(..., eval_streams=...)`` and ``state.experiences_trained`` is 0.
        May set:
            Nothing to set.
        Returns:
            True (any true value) to ask for the evaluation (forward transfer compares against it); False or
            None otherwise. Collected: every plugin is asked, in plugin order; if any answer is true the loop
            evaluates each stream of ``state.eval_streams`` once (a nested ``eval()``, with all its events)
            before the first :func:`before_training_exp`, the same from Python and from ``clkernel run``. With
            no ``eval_streams`` it logs a warning and evaluates nothing.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event,
            always (a collected event never goes through pluggy).

        .. versionadded:: 0.2
        """

    @_event("per training experience")
    def before_training_exp(self, state: TrainState) -> None:
        """A training experience starts, before its dataset is adapted.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.experience`` is the :class:`~clkernel.Experience` about to be trained (``.index``,
            ``.classes``, ``.task_labels``, ``.dataset``) and ``state.stream_name`` its stream's name;
            ``state.epoch`` is 0, ``state.stop_training`` False and ``state.experiences_trained`` the number of
            experiences trained before this one. The model is in train mode, not yet adapted to the experience.
            ``state.dataset`` and ``state.dataloader`` are still the previous experience's (None at first).
        May set:
            Nothing to set. A module set to eval mode here (a frozen ``BatchNorm``) stays so for the whole
            experience: the loop sets no mode again, and its evaluations restore each module's own mode.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per training experience")
    def before_train_dataset_adaptation(self, state: TrainState) -> None:
        """Before state.dataset is set to the experience's training dataset.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`before_training_exp`; ``state.dataset`` is still the previous experience's.
        May set:
            ``state.experience.dataset`` (a :class:`~clkernel.CLDataset`): the loop reads it right after this
            event. This changes the :class:`~clkernel.Experience` itself, which outlives this ``train()`` call.
            Replacing ``state.experience`` has no effect on the loop, which keeps its own reference.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per training experience")
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        """state.dataset holds the experience's training dataset; the loader is built from it next.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.dataset`` is ``state.experience.dataset.train()``: a :class:`~clkernel.CLDataset` of
            ``(x, y, t)`` samples that applies the train transforms. The model is not adapted yet: model
            adaptation (dynamic modules grow, then the optimizer takes the new parameters) runs right after this
            event. ``state.dataloader`` is still the previous experience's.
        May set:
            ``state.dataset``, to another :class:`~clkernel.CLDataset` (for example the experience's data
            concatenated with a replay buffer): the training loader of every epoch of this experience is built
            over it.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Training: epochs and iterations
    # -------------------------------------------------------------------------

    @_event("per epoch")
    def before_training_epoch(self, state: TrainState) -> None:
        """An epoch starts, after model adaptation and the optimizer update.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.epoch`` is the epoch's index within the experience, from 0. ``state.dataloader`` is the
            loader over ``state.dataset`` (each iteration over it is one shuffled epoch of ``(x, y, t)``
            minibatches of at most ``state.train_mb_size`` samples), or what a plugin put there at an earlier
            epoch of this experience. The model is adapted to ``state.experience`` and in train mode, except the
            modules a plugin or an adaptation set to eval mode since :func:`before_training_exp`.
            ``state.epoch_iteration`` is reset to 0 right after this event.
        May set:
            ``state.dataloader``, to any iterable of ``(x, y, t)`` minibatches: the loop iterates it once for
            this epoch and keeps it for the following epochs of this experience (it builds a new loader only
            for the next experience). The loop moves each minibatch to ``state.device``.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_training_iteration(self, state: TrainState) -> None:
        """A training minibatch has been drawn and moved to state.device.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.mb`` is the minibatch ``(x, y, t)`` on ``state.device``: ``x`` of shape
            ``(B, *input_shape)``, ``y`` the ``(B,)`` int64 class ids and ``t`` the ``(B,)`` int64 task labels
            (a CLDataset stores both as int64 whatever it was given), with B at most ``state.train_mb_size``;
            ``state.mb_x``, ``state.mb_y`` and ``state.mb_task`` are its parts. ``state.iteration`` counts the
            training iterations before this one, ``state.epoch_iteration`` those of this epoch.
            ``state.mb_output``, ``state.loss`` and the gradients are still the previous iteration's.
        May set:
            ``state.mb``, to another ``(x, y, t)`` tuple already on ``state.device`` (for example with replayed
            samples appended): the forward pass and the criterion read it.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_forward(self, state: TrainState) -> None:
        """Right before the training forward pass; the gradients have just been zeroed.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`before_training_iteration`, and the ``.grad`` of every parameter of ``state.optimizer``
            is None (``zero_grad(set_to_none=True)``).
        May set:
            ``state.mb``, as at :func:`before_training_iteration`.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_forward(self, state: TrainState) -> None:
        """Right after the training forward pass.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.mb_output`` is the model's output for ``state.mb_x`` (``model(x, t)`` for a model with
            ``takes_task_labels = True``): for a classifier, float logits of shape ``(B, num_classes)``, in the
            autograd graph. ``state.loss`` is still the previous iteration's.
        May set:
            ``state.mb_output`` (for example masked to the experience's classes): the criterion and
            :func:`loss_terms` read it.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration", result="collected: each non-None tensor is added to the loss and recorded under the "
                                      "plugin's name in state.loss_terms")
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        """Collects extra terms of the loss (regularisers, distillation) after the forward pass.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`after_forward`. The criterion's loss ``criterion(state.mb_output, state.mb_y)`` has
            been computed but not stored: ``state.loss`` is still the previous iteration's. ``state.loss_terms``
            is a new dict for this iteration, holding the terms of the plugins called before this one.
        May set:
            Nothing to set: return the term.
        Returns:
            A 0-d float tensor on ``state.device`` (in the autograd graph when it should train something), or
            None to add nothing. Collected: every plugin is called, in plugin order; each non-None term is added
            to the criterion's loss and recorded under the plugin's name in ``state.loss_terms``, and the sum
            becomes ``state.loss``. Plugins never need to coordinate.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event,
            always (a collected event never goes through pluggy, even with ``trace=True``).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_backward(self, state: TrainState) -> None:
        """state.loss holds this iteration's total loss, before loss.backward().

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.loss`` is a 0-d float tensor: the criterion's loss plus every term of ``state.loss_terms``.
            ``state.mb`` and ``state.mb_output`` are this iteration's.
        May set:
            ``state.loss`` (a 0-d tensor in the autograd graph): the loop calls ``state.loss.backward()`` next.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_backward(self, state: TrainState) -> None:
        """After state.loss.backward(): the gradients are in the parameters' .grad.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.loss`` as at :func:`before_backward` (its graph is freed); every parameter that takes part
            in the loss holds this minibatch's gradient in ``.grad``.
        May set:
            Nothing to set. Gradients may be read here (importance estimates); change them in
            :func:`before_update`.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_update(self, state: TrainState) -> None:
        """Before optimizer.step(): the gradients may still be changed.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`after_backward`.
        May set:
            Nothing to set in ``state``; the parameters' ``.grad`` may be changed or replaced (projected,
            clipped, masked): the optimizer's ``step()`` uses them next.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_update(self, state: TrainState) -> None:
        """After optimizer.step(): the parameters hold this iteration's update.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`before_update`, with the parameters updated; ``state.iteration`` and
            ``state.epoch_iteration`` do not count this iteration yet.
        May set:
            Nothing to set.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_training_iteration(self, state: TrainState) -> None:
        """End of a training iteration; the counters include it.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.iteration`` (training iterations since the strategy was built) and
            ``state.epoch_iteration`` count this iteration; ``state.mb``, ``state.mb_output``, ``state.loss``
            and ``state.loss_terms`` are this iteration's.
        May set:
            Nothing to set.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per epoch")
    def after_training_epoch(self, state: TrainState) -> None:
        """End of an epoch, before the periodic evaluation.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.epoch`` is the index of the epoch just finished and ``state.epoch_iteration`` its number of
            iterations; ``state.dataloader`` is the loader it used.
        May set:
            ``state.stop_training = True``, to end this experience's epochs after this one (any event of the
            epoch may set it). The loop checks it after the periodic evaluation, which still runs first (when
            ``eval_every > 0`` and ``state.epoch + 1`` is a multiple of it, except after the last epoch).
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per training experience")
    def after_training_exp(self, state: TrainState) -> None:
        """The experience's epochs are done, before the end-of-experience evaluation.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.experience`` is the experience just trained and ``state.experiences_trained`` already counts
            it; ``state.epoch`` is the index of the last epoch run; ``state.dataset`` and ``state.dataloader``
            are still this experience's. Next, when ``eval_every >= 0``, the loop evaluates
            ``state.eval_streams``.
        May set:
            Nothing to set. Update the plugin's own buffers, importances or teachers here.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("once per train() call")
    def after_training(self, state: TrainState) -> None:
        """A train() call is done, after its last experience and that experience's evaluation.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.is_training`` is True; ``state.experience``, ``state.dataset`` and ``state.dataloader`` are
            the last trained experience's; ``state.metrics`` holds the last value of every metric logged during
            the call, its evaluations included: ``train()`` returns it after this event.
        May set:
            Nothing to set. Values logged here with ``state.log_metrics`` join what ``train()`` returns.
        Returns:
            Ignored.
        Raises:
            Ends ``train()``: re-raised as :class:`~clkernel.PluginError` naming the plugin and this event (as
            is under pluggy dispatch: see *Errors* above).

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Evaluation
    # -------------------------------------------------------------------------

    @_event("once per eval() call")
    def before_eval(self, state: TrainState) -> None:
        """An eval() call has started, before its first experience; the model is in eval mode.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.is_training`` is False; ``state.stream_name`` names the first experience's stream
            (``"eval"`` outside a stream); ``state.metrics`` is ``{}``. The model is in eval mode and the whole
            ``eval()`` runs under ``torch.no_grad()``. ``state.experience``, ``state.dataset`` and
            ``state.dataloader`` still hold what was there before (inside ``train()``: the training
            experience's). ``eval()`` saves ``state.experience``, ``stream_name``, ``dataset``, ``dataloader``,
            ``mb``, ``mb_output``, ``epoch_iteration`` and ``metrics`` now and restores them after
            :func:`after_eval`, with ``is_training`` and each module's mode; inside ``train()`` the metrics it
            logged are merged into the training call's. ``state.loss``, ``loss_terms``, ``epoch``,
            ``iteration`` and ``stop_training`` are neither changed nor restored.
        May set:
            Nothing to set.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def before_eval_exp(self, state: TrainState) -> None:
        """An evaluation experience starts, before its dataset is adapted.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.experience`` is the :class:`~clkernel.Experience` about to be evaluated (``.index``,
            ``.classes``, ``.task_labels``, ``.dataset``) and ``state.stream_name`` its stream's name;
            ``state.is_training`` is False. ``state.dataset`` and ``state.dataloader`` are still the previous
            ones.
        May set:
            Nothing to set.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def before_eval_dataset_adaptation(self, state: TrainState) -> None:
        """Before state.dataset is set to the experience's evaluation dataset.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`before_eval_exp`.
        May set:
            ``state.experience.dataset`` (a :class:`~clkernel.CLDataset`): the loop reads it right after this
            event. This changes the :class:`~clkernel.Experience` itself, which outlives this ``eval()`` call.
            Replacing ``state.experience`` has no effect on the loop, which keeps its own reference.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def after_eval_dataset_adaptation(self, state: TrainState) -> None:
        """state.dataset holds the experience's evaluation dataset; the loader is built from it next.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.dataset`` is ``state.experience.dataset.eval()``: a :class:`~clkernel.CLDataset` that
            applies the eval transforms. The model is not adapted yet: model adaptation (without an optimizer
            update, the model in eval mode) runs right after this event, then the loader is built.
            ``state.dataloader`` is still the previous one.
        May set:
            ``state.dataset``, to another :class:`~clkernel.CLDataset`: the evaluation loader (minibatches of at
            most ``state.eval_mb_size`` samples, in order) is built over it. No event can replace the
            evaluation loader.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_eval_iteration(self, state: TrainState) -> None:
        """An evaluation minibatch has been drawn and moved to state.device.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.mb`` is the minibatch ``(x, y, t)`` on ``state.device``, as in
            :func:`before_training_iteration`, with B at most ``state.eval_mb_size``. ``state.epoch_iteration``
            counts the minibatches of this experience before this one; evaluation does not advance
            ``state.iteration``. No loss is computed in evaluation: ``state.loss`` is still the last training
            loss.
        May set:
            ``state.mb``, to another ``(x, y, t)`` tuple already on ``state.device``: the forward pass reads it.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def before_eval_forward(self, state: TrainState) -> None:
        """Right before the evaluation forward pass (under torch.no_grad()).

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As at :func:`before_eval_iteration`.
        May set:
            ``state.mb``, as at :func:`before_eval_iteration`.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_eval_forward(self, state: TrainState) -> None:
        """Right after the evaluation forward pass.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.mb_output`` is the model's output for ``state.mb_x`` (``model(x, t)`` for a model with
            ``takes_task_labels = True``), computed without gradients: for a classifier, float logits of shape
            ``(B, num_classes)``.
        May set:
            ``state.mb_output`` (for example masked): later plugins and :func:`after_eval_iteration` read it.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per iteration")
    def after_eval_iteration(self, state: TrainState) -> None:
        """End of an evaluation iteration; metrics accumulate here.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.mb`` and ``state.mb_output`` are this minibatch's; ``state.epoch_iteration`` counts it.
        May set:
            Nothing to set.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("per evaluation experience")
    def after_eval_exp(self, state: TrainState) -> None:
        """An evaluation experience is done; experience-level metrics are logged here.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.experience`` is the experience just evaluated, ``state.stream_name`` its stream's name and
            ``state.epoch_iteration`` its number of minibatches; ``state.is_training`` is False.
        May set:
            Nothing to set. Log values with ``state.log_metrics``.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    @_event("once per eval() call")
    def after_eval(self, state: TrainState) -> None:
        """An eval() call is done, after its last experience; stream-level metrics are logged here.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            ``state.experience`` is still the last evaluated experience and ``state.metrics`` holds what this
            ``eval()`` logged, which it returns. The fields saved at :func:`before_eval` are restored right after
            this event.
        May set:
            Nothing to set. Values logged here with ``state.log_metrics`` join what ``eval()`` returns.
        Returns:
            Ignored.
        Raises:
            Ends ``eval()`` (and the ``train()`` that called it) without restoring the saved fields: re-raised
            as :class:`~clkernel.PluginError` naming the plugin and this event (as is under pluggy dispatch: see
            *Errors* above).

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Metric values to loggers
    # -------------------------------------------------------------------------

    @_event("whenever a plugin calls state.log_metrics", rank_zero=True)
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        """Metric values for every logger to write, from whichever plugin called state.log_metrics.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.
        :param values: metric name -> value (a float, a tensor, or an object a logger knows, such as a
            matplotlib figure). Names follow the scheme of :mod:`clkernel.names`.

        State:
            As at the event during which the values were logged: ``state.is_training``, ``state.stream_name``
            and ``state.experience`` say where they come from, and ``state.iteration`` (training iterations so
            far) is the step loggers should use. The values are already in ``state.metrics`` (last value wins),
            which ``train()`` / ``eval()`` return.
        May set:
            Nothing to set. Do not change ``values``: every logger receives the same dict.
        Returns:
            Ignored.
        Raises:
            ``state.log_metrics`` raises :class:`~clkernel.PluginError` naming the logger and this event, always
            (this event never goes through pluggy). It ends the call that logged the values; the event in which
            ``state.log_metrics`` was called wraps it once more (the outer error names the calling plugin and its
            event, with this one as ``__cause__``), except under pluggy dispatch.

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # End of the run
    # -------------------------------------------------------------------------

    @_event("once per strategy, at strategy.close()")
    def after_run(self, state: TrainState) -> None:
        """The run ends: strategy.close(), which clkernel.run and `with strategy:` call, also after an error.

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As the last event left it: after a failure in training, possibly mid-epoch (a failed evaluation
            restores the training fields first). It fires once,
            and only when :func:`before_run` fired (the strategy trained or evaluated); ``state.rank`` says
            which rank this is. ``state.outcome`` says how the run ended (``"completed"``, ``"failed"`` or
            ``"interrupted"``: Ctrl-C, or SIGTERM under ``clkernel run``) and ``state.error`` names the
            exception (``"Type: message"``), None when completed.
        May set:
            Nothing to set. Close what the plugin opened (files, writers, threads) and write its final outputs.
            It fires on every rank: a logger that opened nothing (not rank 0) has nothing to close.
        Returns:
            Ignored.
        Raises:
            ``strategy.close()`` re-raises it as :class:`~clkernel.PluginError` naming the plugin and this event
            (as is under pluggy dispatch: see *Errors* above); later plugins are not called, but
            :func:`output_files` still is, so the files written so far are reported.

        .. versionadded:: 0.2
        """

    @_event("once per strategy, at strategy.close(), after after_run", rank_zero=True,
            result="collected: the paths of every plugin, in plugin order; clkernel run prints them")
    def output_files(self, state: TrainState) -> list[Path] | None:
        """Asks, after after_run, for the files each plugin wrote (result files, plots, event files).

        :param state: the strategy's :class:`~clkernel.TrainState`, the same object at every event.

        State:
            As :func:`after_run` left it, every plugin's files closed. Rank 0 only.
        May set:
            Nothing to set.
        Returns:
            A list of paths (``pathlib.Path`` or ``str``), or None. Collected: every plugin is asked, in plugin
            order; the paths, as ``pathlib.Path``, form the list ``strategy.close()`` returns (again at later
            calls) and ``clkernel run`` prints. A single ``str`` or ``Path`` counts as a list of one. On other
            ranks no plugin is asked and ``close()`` returns ``[]``.
        Raises:
            ``strategy.close()`` re-raises it as :class:`~clkernel.PluginError` naming the plugin and this
            event, always (a collected event never goes through pluggy); no file is returned, then or later.

        .. versionadded:: 0.2
        """


#: The training events, in the order the loop fires them.
EVENTS: tuple[str, ...] = tuple(SPEC)
#: The per-iteration events, which the loop dispatches through prebuilt tuples.
ITERATION_EVENTS: tuple[str, ...] = tuple(name for name, e in SPEC.items() if e.frequency == "per iteration")


class RegistrationHooks:
    """Hooks that entry-point modules implement to add named components to the process-wide registry.

    ``register(name, factory, *, summary="", default=False)`` adds one component. ``name`` is a non-empty string
    without ``:`` or ``,``, registered once per kind by a module. ``factory(**options)`` builds the component; its
    signature documents the options (``clkernel show KIND NAME`` prints them). ``summary`` defaults to the first
    paragraph of the factory's docstring. ``default=True`` marks a component that ``clkernel run`` uses when the
    user names none of that kind. ``clkernel run`` fills the factory parameters named after what the run knows
    (``num_classes``, ``input_size``, ``input_shape``, ``in_channels``, ``run_dir``, ``config``, ``benchmark``,
    ``seed``, ``device``, ``dataset_root``) unless the user gives them.

    The registry runs each module's hooks once, when it is built (the first ``clkernel.load``, ``available`` or
    ``registry()`` call), in the order of :data:`REGISTRATION_HOOKS`. A module's components are added only if all
    its hooks succeed. A name of one kind registered by two entry points is unusable until one of them is
    uninstalled or disabled (``CLKERNEL_DISABLE_PLUGINS``, by entry-point or distribution name).
    """

    @hookspec
    def register_benchmarks(self, register: Callable[..., None]) -> None:
        """Register benchmark factories, each returning a :class:`~clkernel.Benchmark`.

        :param register: ``register(name, factory, *, summary="", default=False)`` adds one benchmark.

        State:
            No training state: the registry calls this once per entry point when it is built, before any
            strategy exists.
        May set:
            Nothing to set. Call ``register`` once per benchmark.
        Returns:
            Ignored.
        Raises:
            The entry point is recorded as failed (``clkernel plugins`` shows the error) and none of its
            components, of any kind, is registered; other entry points load as usual. ``register`` raises
            ValueError or TypeError for a bad or repeated name or a factory that is not callable, to that effect.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_models(self, register: Callable[..., None]) -> None:
        """Register model factories, each returning a torch.nn.Module.

        :param register: ``register(name, factory, *, summary="", default=False)`` adds one model.

        State:
            No training state: the registry calls this once per entry point when it is built, before any
            strategy exists.
        May set:
            Nothing to set. Call ``register`` once per model. Factory parameters named ``num_classes``,
            ``input_size``, ``input_shape`` or ``in_channels`` are filled from the benchmark by ``clkernel run``
            unless the user gives them.
        Returns:
            Ignored.
        Raises:
            The entry point is recorded as failed (``clkernel plugins`` shows the error) and none of its
            components, of any kind, is registered; other entry points load as usual. ``register`` raises
            ValueError or TypeError for a bad or repeated name or a factory that is not callable, to that effect.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_plugins(self, register: Callable[..., None]) -> None:
        """Register training-plugin factories (replay, ewc, ...), each returning an object implementing events.

        :param register: ``register(name, factory, *, summary="", default=False)`` adds one training plugin.

        State:
            No training state: the registry calls this once per entry point when it is built, before any
            strategy exists.
        May set:
            Nothing to set. Call ``register`` once per plugin; each object the factory returns must implement at
            least one event of :class:`TrainingEvents` with :data:`hookimpl`.
        Returns:
            Ignored.
        Raises:
            The entry point is recorded as failed (``clkernel plugins`` shows the error) and none of its
            components, of any kind, is registered; other entry points load as usual. ``register`` raises
            ValueError or TypeError for a bad or repeated name or a factory that is not callable, to that effect.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_metrics(self, register: Callable[..., None]) -> None:
        """Register metric factories, each returning a plugin object that calls state.log_metrics.

        :param register: ``register(name, factory, *, summary="", default=False)`` adds one metric.

        State:
            No training state: the registry calls this once per entry point when it is built, before any
            strategy exists.
        May set:
            Nothing to set. Call ``register`` once per metric; ``default=True`` metrics are used by
            ``clkernel run`` when the user names no metric.
        Returns:
            Ignored.
        Raises:
            The entry point is recorded as failed (``clkernel plugins`` shows the error) and none of its
            components, of any kind, is registered; other entry points load as usual. ``register`` raises
            ValueError or TypeError for a bad or repeated name or a factory that is not callable, to that effect.

        .. versionadded:: 0.1
        """

    @hookspec
    def register_loggers(self, register: Callable[..., None]) -> None:
        """Register logger factories, each returning a plugin object implementing log_metrics.

        :param register: ``register(name, factory, *, summary="", default=False)`` adds one logger.

        State:
            No training state: the registry calls this once per entry point when it is built, before any
            strategy exists.
        May set:
            Nothing to set. Call ``register`` once per logger; each object the factory returns implements
            :func:`log_metrics` (and usually :func:`after_run` and :func:`output_files`). Factory parameters
            named ``run_dir`` or ``config`` are filled by ``clkernel run``.
        Returns:
            Ignored.
        Raises:
            The entry point is recorded as failed (``clkernel plugins`` shows the error) and none of its
            components, of any kind, is registered; other entry points load as usual. ``register`` raises
            ValueError or TypeError for a bad or repeated name or a factory that is not callable, to that effect.

        .. versionadded:: 0.1
        """


#: The registration hooks, in the order the registry runs them.
REGISTRATION_HOOKS: tuple[str, ...] = ("register_benchmarks", "register_models", "register_plugins",
                                       "register_metrics", "register_loggers")
#: When the registration hooks run, in the words of the ``frequency`` of an :class:`EventSpec`.
REGISTRATION_FREQUENCY = "once per entry point, when the registry is built"

# ---------------------------------------------------------------------------------------------------- rendering

#: The sections of every event's and registration hook's docstring, in this order, after the one-line summary
#: and the ``:param:`` lines, and before ``.. versionadded::``.
SECTIONS: tuple[str, ...] = ("State", "May set", "Returns", "Raises")

_LITERAL = re.compile(r"``(.+?)``", re.S)
_ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`]+)`")
_EMPHASIS = re.compile(r"(?<![\w*])\*(\w[^*\n]*?)\*(?![\w*])")
_PARAM = re.compile(r":param (\w+):\s*(.*)")
_VERSION = re.compile(r"\.\. versionadded:: (\S+)")


@frozen
class HookDoc:
    """The parts of one event's or registration hook's docstring, as written (reStructuredText).

    :param summary: the first paragraph, on one line.
    :param params: argument name -> its ``:param:`` text, on one line.
    :param sections: section name (of :data:`SECTIONS`) -> its text, on one line, in the docstring's order.
    :param version: the version of ``.. versionadded::``, or None.
    :param layout: the blocks after the summary, in order (``":param state"``, ``"State"``, ...,
        ``"versionadded"``; ``"text"`` for anything outside the template).
    """

    summary: str
    params: dict[str, str]
    sections: dict[str, str]
    version: str | None
    layout: tuple[str, ...]


def hook_doc(hooks: type, name: str) -> HookDoc:
    """The parts of the docstring of event or registration hook ``name`` of ``hooks`` (the template's)."""
    summary, _, body = (inspect.getdoc(getattr(hooks, name)) or "").partition("\n\n")
    blocks: list[tuple[str, str, list[str]]] = []  # (layout entry, key, lines)
    for line in body.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and blocks and blocks[-1][0] != "versionadded":
            blocks[-1][2].append(line.strip())
        elif m := _PARAM.fullmatch(line):
            blocks.append((f":param {m[1]}", m[1], [m[2]]))
        elif line.endswith(":") and line[:-1] in SECTIONS:
            blocks.append((line[:-1], line[:-1], []))
        elif m := _VERSION.fullmatch(line):
            blocks.append(("versionadded", m[1], []))
        else:
            blocks.append(("text", "", [line.strip()]))
    return HookDoc(" ".join(summary.split()),
                   {key: " ".join(lines) for entry, key, lines in blocks if entry.startswith(":param ")},
                   {key: " ".join(lines) for entry, key, lines in blocks if entry in SECTIONS},
                   next((key for entry, key, _ in blocks if entry == "versionadded"), None),
                   tuple(entry for entry, _, _ in blocks))


def plain_text(text: str) -> str:
    """reStructuredText as plain text: ``:func:`~a.b``` becomes ``b``, ````x```` becomes ``x``, ``*x*`` becomes
    ``x``, ``:param x:`` becomes ``x:`` and ``.. versionadded:: 0.2`` becomes ``Added in 0.2.``."""
    parts = _LITERAL.split(text)  # odd indices: the contents of inline literals, kept as they are
    for i in range(0, len(parts), 2):
        part = _ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], parts[i])
        part = _VERSION.sub(r"Added in \1.", _EMPHASIS.sub(r"\1", part))
        parts[i] = re.sub(r":param (\w+):", r"\1:", part)
    return "".join(parts)


def spec_arguments(hooks: type, name: str) -> list[str]:
    """The argument names of event or registration hook ``name`` of ``hooks``, without ``self``."""
    return [a for a in inspect.signature(getattr(hooks, name)).parameters if a != "self"]


def spec_summary(hooks: type, name: str) -> str:
    """The first paragraph of ``name``'s docstring, on one line, as plain text."""
    doc = inspect.getdoc(getattr(hooks, name)) or ""
    return " ".join(plain_text(doc.split("\n\n")[0]).split())
