"""TrainState: the one mutable object that every event receives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from attrs import define, field

if TYPE_CHECKING:
    from clkernel.data import CLDataset
    from clkernel.types import Experience

__all__ = ["TrainState"]


@define(eq=False)
class TrainState:
    """Everything the loop knows, readable and (where the event docs say so) writable by plugins.

    Fields are plain (no validators): the loop writes some of them on every minibatch. Plugins keep their own
    state on themselves, not here.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable[..., torch.Tensor]
    device: torch.device
    train_mb_size: int
    train_epochs: int
    eval_mb_size: int
    #: True inside train() (outside a nested eval), False inside eval().
    is_training: bool = False
    #: The experience being trained or evaluated, and the stream it is read from (``stream_name``).
    experience: Experience | None = None
    stream_name: str = ""
    #: The dataset of the current experience after dataset adaptation, and the loader over it.
    dataset: CLDataset | None = None
    dataloader: Iterable[Any] | None = None
    #: The current minibatch ``(x, y, t)``, on ``device``.
    mb: tuple[Any, torch.Tensor, torch.Tensor] | None = None
    mb_output: Any = None
    loss: torch.Tensor | None = None
    #: Each plugin's contribution to the loss on this iteration, by plugin name.
    loss_terms: dict[str, torch.Tensor] = field(factory=dict)
    #: Epoch within the current experience; training iterations since the strategy was built (loggers' step);
    #: iteration within the current epoch or evaluation experience.
    epoch: int = 0
    iteration: int = 0
    epoch_iteration: int = 0
    #: Training experiences completed since the strategy was built.
    experiences_trained: int = 0
    #: The streams given to ``train(..., eval_streams=...)``: evaluated after each experience (``eval_every``)
    #: and before the first one when a plugin asks (``needs_initial_eval``).
    eval_streams: tuple[Any, ...] = ()
    #: Set by a plugin in after_training_epoch to end the current experience's epochs.
    stop_training: bool = False
    #: True while the dataset adaptation events fire again for the experience a checkpoint was taken in (a run
    #: resuming inside it): build ``dataset`` from your state, do not change that state a second time.
    resuming: bool = False
    #: Last value of every metric logged during the current train()/eval() call: what it returns.
    metrics: dict[str, Any] = field(factory=dict)
    #: Distributed rank and world size (0 and 1 in one process), from ``torch.distributed`` when initialised.
    rank: int = 0
    world_size: int = 1
    #: How the run stands: ``"running"`` until it ends, then, when :func:`after_run` fires, ``"completed"``,
    #: ``"failed"`` (an exception ended it: ``error`` says which) or ``"interrupted"`` (``KeyboardInterrupt``, or
    #: any subclass of it such as the one ``clkernel run`` raises on SIGTERM). Set by ``clkernel.run``,
    #: ``with strategy:`` and ``strategy.close()`` (which, called on its own, counts the run as completed).
    outcome: str = "running"
    #: ``"ExceptionType: message"`` of what ended a failed or interrupted run, else None.
    error: str | None = None
    _emit: Callable[[TrainState, dict[str, Any]], None] | None = field(default=None, repr=False, alias="emit")

    @property
    def mb_x(self) -> Any:
        return self.mb[0]  # type: ignore[index]

    @property
    def mb_y(self) -> torch.Tensor:
        return self.mb[1]  # type: ignore[index]

    @property
    def mb_task(self) -> torch.Tensor:
        return self.mb[2]  # type: ignore[index]

    def log_metrics(self, values: dict[str, Any]) -> None:
        """Hand metric values to every logger (the ``log_metrics`` event); they also become the run's result."""
        self.metrics.update(values)
        if self._emit is not None:
            self._emit(self, values)
