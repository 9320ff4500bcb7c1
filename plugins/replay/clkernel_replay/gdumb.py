"""GDumb (Prabhu et al., 2020): a greedy class-balanced buffer, and a model trained from scratch on it alone."""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping

import torch

import clkernel
from clkernel import DynamicModule, TrainState
from clkernel.validate import positive_int
from clkernel_replay.buffers import GreedyClassBalancedBuffer
from clkernel_replay.replay import check_same_on_every_rank, restore_from_stream

__all__ = ["GDumb", "record_initial", "reinitialize"]


def _state(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, torch.Tensor, bool]]:
    """The model's state that training changes: name -> (owning module, tensor, is a parameter).

    Parameters, and the persistent buffers of modules that are not dynamic modules (a dynamic module's buffers,
    such as a growing classifier's active units, record the structure that adaptation built, not training).
    Entries of ``state_dict`` that are not tensors (extra state: a multi-task model's task registry) and
    non-persistent buffers are not state here.
    """
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    out = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if not isinstance(value, torch.Tensor):
            continue
        prefix = name.rpartition(".")[0]
        owner = model.get_submodule(prefix) if prefix else model
        is_param = name in params
        if not is_param and isinstance(owner, DynamicModule):
            continue
        out[name] = (owner, value, is_param)
    return out


@torch.no_grad()
def record_initial(model: torch.nn.Module, initial: MutableMapping[str, torch.Tensor]) -> list[str]:
    """Add to ``initial`` a copy of every parameter and state buffer of ``model`` it does not hold yet (by name).

    Call it after each adaptation of the model and before training on it: a parameter not recorded yet was
    created since the last call (a new head, new units of a growing classifier), so it still holds the values
    its module initialised it with, and those become its initial values.

    :returns: the names added.
    """
    added = []
    for name, (_, tensor, _) in _state(model).items():
        if name not in initial:
            initial[name] = tensor.detach().clone()
            added.append(name)
    return added


def _known(initial: Mapping[str, Any], name: str, tensor: torch.Tensor) -> bool:
    """``initial`` holds a tensor of ``tensor``'s shape under ``name``."""
    value = initial.get(name)
    return isinstance(value, torch.Tensor) and value.shape == tensor.shape


@torch.no_grad()
def reinitialize(model: torch.nn.Module, initial: Mapping[str, Any]) -> list[str]:
    """Put ``model`` back to its ``initial`` state, in place (the optimizer keeps the same parameter objects).

    The rule, module by module (each module's own parameters and persistent buffers):

    - a parameter whose name and shape are in ``initial`` gets its initial value back;
    - a parameter that is not in ``initial``, or whose shape changed (a module that grew by replacing its
      weights), is re-initialised by its module's ``reset_parameters()``, the module's own initialisation
      (then the module's parameters that are in ``initial`` with their shape get their initial values back);
      a module without ``reset_parameters()`` is an error: record the parameter when it appears
      (:func:`record_initial`, as :class:`GDumb` does) instead;
    - a parameter that does not require gradients is left as it is: it is frozen (for instance an old column
      of a progressive network, frozen after its task), so training could not learn it again;
    - persistent buffers (batch-norm statistics) follow the same rule as parameters, except that a module whose
      own parameters are all frozen keeps its buffers too, and the buffers of dynamic modules (modules with
      ``adaptation``, :class:`clkernel.DynamicModule`) are kept: they record the structure adaptation built
      (the active units of a growing classifier), not what training learned;
    - entries of ``initial`` that are not tensors (the extra state of ``state_dict``, such as a multi-task
      model's task registry) are ignored: the structure (heads, units, tasks) stays as it is.

    :param initial: name -> tensor, e.g. ``model.state_dict()`` taken earlier, or filled by :func:`record_initial`.
    :returns: the names of the parameters and buffers re-initialised by ``reset_parameters()``.
    :raises ValueError: for a new or reshaped parameter or buffer whose module has no ``reset_parameters()``.
    """
    by_module: dict[int, tuple[torch.nn.Module, list[tuple[str, torch.Tensor, bool]]]] = {}
    for name, (owner, tensor, is_param) in _state(model).items():
        by_module.setdefault(id(owner), (owner, []))[1].append((name, tensor, is_param))
    reset: list[str] = []
    for module, entries in by_module.values():
        params = [(n, t) for n, t, p in entries if p]
        if params and not any(t.requires_grad for _, t in params):
            continue  # a frozen module
        live = [(n, t) for n, t, p in entries if not p or t.requires_grad]
        unknown = [n for n, t in live if not _known(initial, n, t)]
        if unknown:
            if not callable(getattr(module, "reset_parameters", None)):
                raise ValueError(f"cannot re-initialise {', '.join(unknown)} ({type(module).__name__}): not in the "
                                 f"initial state or changed shape since, and the module has no reset_parameters(); "
                                 f"record it when it appears (record_initial)")
            frozen = [(t, t.detach().clone()) for n, t, p in entries if p and not t.requires_grad]
            module.reset_parameters()
            for t, value in frozen:
                t.copy_(value)
            reset += unknown
        for name, tensor in live:
            if _known(initial, name, tensor):
                tensor.copy_(initial[name])
    return reset


class GDumb:
    """GDumb (Prabhu, Torr & Dokania, 2020, "GDumb: A Simple Approach that Questions Our Progress in Continual
    Learning"): keep a greedy class-balanced buffer of ``mem_size`` samples and, at each experience, train the
    model from its initial parameters on the buffer only.

    Before the first training step of each experience (after the model was adapted to it), the model is put back
    to its initial state by :func:`reinitialize`, and the optimizer's state (momentum...) is cleared. The initial
    state is recorded by :func:`record_initial` at the same moment: at the first experience for the whole model,
    and at each later one for the parameters adaptation created since (new heads, new units), which still hold
    their module's own initialisation then. So unchanged modules go back to their initial parameters, grown or
    new ones to the values their module initialised them with, and the structure built by adaptation (heads,
    active units, tasks) stays. Frozen parameters (``requires_grad`` False, e.g. the old columns of a progressive
    network) are kept. The experience's data first goes into the buffer, then the buffer replaces the
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

    @clkernel.hookimpl
    def before_train_dataset_adaptation(self, state: TrainState) -> None:
        if state.resuming:  # a checkpoint inside the experience: the buffer already holds its data
            restore_from_stream(self.storage_policy, state, self.name)

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        if not state.resuming:
            self.storage_policy.update(state.experience)  # type: ignore[arg-type]
            policy = self.storage_policy.state_dict()
            check_same_on_every_rank(self.name, policy["origin"], policy["generator"])
        state.dataset = self.storage_policy.buffer.train()  # type: ignore[union-attr]

    @clkernel.hookimpl(tryfirst=True)
    def before_training_epoch(self, state: TrainState) -> None:
        """First epoch of an experience (the model is adapted to it): back to the initial state. Runs before the
        other plugins' ``before_training_epoch``, so they see the re-initialised model."""
        if state.epoch != 0:
            return
        if self.initial_state is None:
            self.initial_state = {}
        record_initial(state.model, self.initial_state)
        for name in reinitialize(state.model, self.initial_state):  # reshaped: its module's new initialisation
            self.initial_state[name] = state.model.state_dict(keep_vars=True)[name].detach().clone()
        state.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"storage_policy": self.storage_policy.state_dict(), "initial_state": self.initial_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.storage_policy.load_state_dict(state["storage_policy"])
        self.initial_state = state["initial_state"]
