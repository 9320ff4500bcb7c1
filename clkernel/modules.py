"""Models in continual learning: calling a model with its task labels, and growing it for each experience.

Every plugin that runs the model itself (a frozen teacher, an importance estimate, a replay selection) calls
:func:`model_forward` so that task-aware models get their task labels exactly as in the loop, and every plugin
that trains on its own data calls :func:`adapt_model` so that dynamic modules grow and the optimizer follows.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from clkernel.types import Experience

__all__ = ["DynamicModule", "adapt_model", "eval_mode", "model_forward", "update_optimizer"]


@runtime_checkable
class DynamicModule(Protocol):
    """A module that changes its structure for each experience (new heads, new units, new columns).

    The loop calls ``adaptation(experience)`` on every submodule that has it, before each training and each
    evaluation experience (``module.training`` tells which), then :func:`update_optimizer` when training.
    Adaptation must be idempotent: a second call for the same experience changes nothing.

    A model whose ``forward`` needs the task labels sets the class attribute ``takes_task_labels = True``: the
    loop (and :func:`model_forward`) then call ``model(x, t)`` instead of ``model(x)``.
    """

    def adaptation(self, experience: Experience) -> None: ...


def model_forward(model: torch.nn.Module, x: Any, task_labels: torch.Tensor) -> Any:
    """``model(x, task_labels)`` when the model declares ``takes_task_labels = True``, else ``model(x)``.

    :param x: the inputs, ``(B, *input_shape)``.
    :param task_labels: ``(B,)`` int64, one task label per sample.
    :returns: whatever the model returns (logits ``(B, num_classes)`` for a classifier).
    """
    if getattr(model, "takes_task_labels", False):
        return model(x, task_labels)
    return model(x)


def update_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Make ``optimizer`` train exactly ``model``'s parameters, keeping the group and the state (momentum...) of
    the old ones.

    New parameters join the first parameter group; parameters gone from the model leave the optimizer (with
    their state). Each group's parameters end in ``model.parameters()`` order, so that an optimizer built afresh
    over the model (the same groups, each in model order) loads this one's ``state_dict`` with each parameter's
    own state.
    """
    position = {id(p): i for i, p in enumerate(model.parameters())}
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    optimizer.param_groups[0]["params"].extend(p for p in model.parameters() if id(p) not in known)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in position:
                optimizer.state.pop(p, None)
        group["params"][:] = sorted((p for p in group["params"] if id(p) in position), key=lambda p: position[id(p)])


def adapt_model(model: torch.nn.Module, experience: Experience, *, optimizer: torch.optim.Optimizer | None = None,
                device: torch.device | str | None = None) -> torch.nn.Module:
    """Adapt every :class:`DynamicModule` inside ``model`` to ``experience``, move it to ``device`` and, given an
    optimizer, make it train the adapted parameters (:func:`update_optimizer`). What the loop does before every
    experience; call it when a plugin trains the model on data of its own (Joint, GDumb).

    :returns: ``model``.
    """
    for module in list(model.modules()):
        if isinstance(module, DynamicModule):
            module.adaptation(experience)
    if device is not None:
        model.to(device)
    if optimizer is not None:
        update_optimizer(optimizer, model)
    return model


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``with eval_mode(model):`` runs the block with every module in eval mode, then gives each module back its
    own mode, also after an error: a layer a plugin froze (``bn.eval()``) stays frozen, which
    ``model.train(was_training)`` would undo. The loop's evaluation and every plugin that runs the model on its
    own data (importances, replay selection) use it.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:  # parents first; only where it changed (modules may override train())
            if module.training != mode:
                module.train(mode)
