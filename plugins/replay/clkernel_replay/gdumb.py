"""GDumb (Prabhu et al., 2020): a greedy class-balanced buffer, and a model trained from scratch on it alone."""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import positive_int
from clkernel_replay.buffers import GreedyClassBalancedBuffer
from clkernel_replay.replay import restore_from_stream

__all__ = ["GDumb", "reinitialize"]


@torch.no_grad()
def reinitialize(model: torch.nn.Module, initial: Mapping[str, torch.Tensor]) -> None:
    """Put ``model`` back to the ``initial`` state dict, in place (the optimizer keeps the same parameters).

    A module whose parameters or buffers changed shape or appeared since (a grown classifier head) is reset with
    its own ``reset_parameters()`` instead.

    :param initial: a ``model.state_dict()`` taken earlier (name -> tensor).
    :raises ValueError: for a changed module that has no ``reset_parameters()``.
    """
    for prefix, module in model.named_modules():
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if not own:
            continue
        names = [f"{prefix}.{n}" if prefix else n for n, _ in own]
        if all(n in initial and initial[n].shape == t.shape for n, (_, t) in zip(names, own)):
            for n, (_, t) in zip(names, own):
                t.copy_(initial[n])
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            raise ValueError(f"cannot re-initialise module {prefix!r} ({type(module).__name__}): its parameters "
                             f"changed since the start and it has no reset_parameters()")


class GDumb:
    """GDumb (Prabhu, Torr & Dokania, 2020, "GDumb: A Simple Approach that Questions Our Progress in Continual
    Learning"): keep a greedy class-balanced buffer of ``mem_size`` samples and, at each experience, train the
    model from its initial parameters on the buffer only.

    The model's initial state is recorded at the first training experience; at each later one its parameters
    and buffers are put back (grown modules are reset with ``reset_parameters()``) and the optimizer's state
    (momentum...) is cleared. The experience's data first goes into the buffer, then the buffer replaces the
    experience's dataset.

    :param mem_size: the buffer's size in samples.
    :param seed: seeds the order in which new samples enter the buffer.
    :raises ValueError: for a ``mem_size`` that is not a positive integer.
    """

    name = "gdumb"

    def __init__(self, mem_size: int = 200, seed: int | None = None) -> None:
        self.mem_size = positive_int(mem_size, "mem_size", self.name)
        self.storage_policy = GreedyClassBalancedBuffer(mem_size, seed=seed)
        self.initial_state: dict[str, torch.Tensor] | None = None

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        restore_from_stream(self.storage_policy, state, self.name)
        if self.initial_state is None:
            self.initial_state = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
            return
        reinitialize(state.model, self.initial_state)
        state.optimizer.state.clear()

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        self.storage_policy.update(state.experience)  # type: ignore[arg-type]
        state.dataset = self.storage_policy.buffer.train()  # type: ignore[union-attr]

    def state_dict(self) -> dict[str, Any]:
        return {"storage_policy": self.storage_policy.state_dict(), "initial_state": self.initial_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.storage_policy.load_state_dict(state["storage_policy"])
        self.initial_state = state["initial_state"]
