"""The clkernel event spec: every point where a plugin can act, and the registration hooks.

The training loop, with every event where it fires (``S`` is the one :class:`~clkernel.TrainState`)::

    strategy.train(experiences, eval_streams):
        before_training(S)                                    # once per train() call
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

Any plugin may call ``S.log_metrics(values)`` at any point; that fires :func:`log_metrics` on every plugin, so
metrics and loggers never import each other. Every training event takes the one argument ``state``; a plugin
implements only the events it needs, each marked with :data:`clkernel.hookimpl`. Events that no plugin
implements cost nothing per minibatch. Return values are ignored, except those of :func:`loss_terms`.

Registration hooks are separate: they are implemented by the modules that entry points of the group
``clkernel.plugins`` name, and each adds named components (benchmarks, models, training plugins, metrics,
loggers) to the process-wide registry by calling ``register(name, factory, summary=...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import torch

    from clkernel.state import TrainState

PROJECT = "clkernel"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: How often each training event fires; ``clkernel hooks`` prints it.
FREQUENCY: dict[str, str] = {}


def _every(frequency: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(spec: Callable[..., Any]) -> Callable[..., Any]:
        FREQUENCY[spec.__name__] = frequency
        return hookspec(spec)

    return mark


class TrainingEvents:
    """The events the loop fires, in the order it fires them. One plugin manager per strategy holds them."""

    # -------------------------------------------------------------------------
    # Training: run and experience boundaries
    # -------------------------------------------------------------------------

    @_every("once per train() call")
    def before_training(self, state: TrainState) -> None:
        """Called at the start of :meth:`Strategy.train`, before the first experience.

        :param state: the training state; ``state.is_training`` is True, ``state.experience`` is not set yet.

        Use it to set up per-run state (timers, logger headers).

        .. versionadded:: 0.1
        """

    @_every("per training experience")
    def before_training_exp(self, state: TrainState) -> None:
        """Called when a training experience starts, before its dataset is adapted.

        :param state: ``state.experience`` is the experience about to be trained; the model has not been
            adapted to it yet.

        .. versionadded:: 0.1
        """

    @_every("per training experience")
    def before_train_dataset_adaptation(self, state: TrainState) -> None:
        """Called before ``state.dataset`` is set to the experience's training dataset.

        :param state: ``state.experience.dataset`` may be read or replaced here.

        .. versionadded:: 0.1
        """

    @_every("per training experience")
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

    @_every("per epoch")
    def before_training_epoch(self, state: TrainState) -> None:
        """Called at the start of each epoch, after model adaptation and the optimizer update.

        :param state: ``state.epoch`` counts epochs of the current experience from 0. A plugin may replace
            ``state.dataloader`` (any iterable of ``(x, y, t)`` minibatches) for this epoch.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def before_training_iteration(self, state: TrainState) -> None:
        """Called when a training minibatch has been loaded and moved to the device.

        :param state: ``state.mb`` is the ``(x, y, t)`` minibatch; a plugin may replace it (for example to
            add replayed samples).

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def before_forward(self, state: TrainState) -> None:
        """Called after the gradients were zeroed, right before the forward pass.

        :param state: ``state.mb`` may still be replaced.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def after_forward(self, state: TrainState) -> None:
        """Called right after the forward pass.

        :param state: ``state.mb_output`` holds the model's output and may be changed (for example masked).

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        """Called after :func:`after_forward` to collect extra terms of the loss (regularisers, distillation).

        :param state: the output of the forward pass is ``state.mb_output``.

        All results are collected: each non-None tensor is added to the criterion's loss, and recorded under
        the plugin's name in ``state.loss_terms``. Plugins never need to coordinate.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def before_backward(self, state: TrainState) -> None:
        """Called when ``state.loss`` holds the total loss, before ``loss.backward()``.

        :param state: ``state.loss`` may be replaced.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def after_backward(self, state: TrainState) -> None:
        """Called after ``loss.backward()``: gradients are in the parameters' ``.grad``.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def before_update(self, state: TrainState) -> None:
        """Called before ``optimizer.step()``: gradients may be changed (projected, clipped, masked).

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def after_update(self, state: TrainState) -> None:
        """Called after ``optimizer.step()``.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def after_training_iteration(self, state: TrainState) -> None:
        """Called at the end of each training iteration; ``state.iteration`` has been incremented.

        .. versionadded:: 0.1
        """

    @_every("per epoch")
    def after_training_epoch(self, state: TrainState) -> None:
        """Called at the end of each epoch, before the periodic evaluation.

        :param state: a plugin may set ``state.stop_training = True`` to end this experience's epochs early.

        .. versionadded:: 0.1
        """

    @_every("per training experience")
    def after_training_exp(self, state: TrainState) -> None:
        """Called when the experience's epochs are done, before the end-of-experience evaluation.

        :param state: the model is trained on ``state.experience``; buffers and importances are updated here.

        .. versionadded:: 0.1
        """

    @_every("once per train() call")
    def after_training(self, state: TrainState) -> None:
        """Called at the end of :meth:`Strategy.train`, after the last experience.

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Evaluation
    # -------------------------------------------------------------------------

    @_every("once per eval() call")
    def before_eval(self, state: TrainState) -> None:
        """Called at the start of :meth:`Strategy.eval`; the model is in eval mode.

        :param state: ``state.is_training`` is False and ``state.stream_name`` names the evaluated stream.
            When eval() is called inside train(), the training fields are restored afterwards.

        .. versionadded:: 0.1
        """

    @_every("per evaluation experience")
    def before_eval_exp(self, state: TrainState) -> None:
        """Called when an evaluation experience starts.

        .. versionadded:: 0.1
        """

    @_every("per evaluation experience")
    def before_eval_dataset_adaptation(self, state: TrainState) -> None:
        """Called before ``state.dataset`` is set to the experience's dataset (eval transforms).

        .. versionadded:: 0.1
        """

    @_every("per evaluation experience")
    def after_eval_dataset_adaptation(self, state: TrainState) -> None:
        """Called after ``state.dataset`` is set; a plugin may replace it before the loader is built.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def before_eval_iteration(self, state: TrainState) -> None:
        """Called when an evaluation minibatch ``state.mb`` has been loaded and moved to the device.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def before_eval_forward(self, state: TrainState) -> None:
        """Called right before the evaluation forward pass (under ``torch.no_grad()``).

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def after_eval_forward(self, state: TrainState) -> None:
        """Called right after the evaluation forward pass; ``state.mb_output`` holds the output.

        .. versionadded:: 0.1
        """

    @_every("per iteration")
    def after_eval_iteration(self, state: TrainState) -> None:
        """Called at the end of each evaluation iteration; metrics accumulate here.

        .. versionadded:: 0.1
        """

    @_every("per evaluation experience")
    def after_eval_exp(self, state: TrainState) -> None:
        """Called when an evaluation experience is done; experience-level metrics are emitted here.

        .. versionadded:: 0.1
        """

    @_every("once per eval() call")
    def after_eval(self, state: TrainState) -> None:
        """Called at the end of :meth:`Strategy.eval`; stream-level metrics are emitted here.

        .. versionadded:: 0.1
        """

    # -------------------------------------------------------------------------
    # Metric values to loggers
    # -------------------------------------------------------------------------

    @_every("whenever a plugin calls state.log_metrics")
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        """Called with metric values, from whichever plugin computed them, for every logger to write.

        :param state: ``state.iteration`` (training iterations so far) is the step loggers should use.
        :param values: metric name -> value (a float, a tensor, or an object a logger knows, such as a
            matplotlib figure). Names follow the scheme documented by the metrics package.

        Values also become the result of ``train()`` / ``eval()`` (last value wins).

        .. versionadded:: 0.1
        """


#: The training events, in the order the loop fires them.
EVENTS: tuple[str, ...] = tuple(FREQUENCY)
#: The per-iteration events, which the loop dispatches through prebuilt tuples.
ITERATION_EVENTS: tuple[str, ...] = tuple(name for name, freq in FREQUENCY.items() if freq == "per iteration")


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
