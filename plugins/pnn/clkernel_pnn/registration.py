"""Registers the ``pnn`` model with clkernel (entry point ``pnn``). Cheap to import: the model is imported by the
factory.
"""

from __future__ import annotations

from typing import Any, Callable

import clkernel

from clkernel_models.registration import require_task_labels  # torch-free, like this module

__all__ = ["pnn", "register_models"]


def pnn(num_layers: int = 1, in_features: int | None = None, hidden_features_per_column: int = 100,
        adapter: str = "mlp", drop_rate: float = 0.0, masking: bool = True, unseen_task: str = "fallback",
        input_size: int | None = None, num_classes: int | None = None, benchmark: Any = None) -> Any:
    """Progressive Neural Network: one column per task, lateral adapters from earlier columns, old columns frozen.

    Needs task labels (task-incremental benchmarks), one task per training experience. Rusu et al., 2016,
    "Progressive Neural Networks". Returns a ``clkernel_pnn.PNN`` (a ``torch.nn.Module``).

    :param num_layers: hidden layers per column.
    :param in_features: values per (flattened) input sample; defaults to the benchmark's ``input_size``, else 784.
    :param hidden_features_per_column: units of each column's hidden layers.
    :param adapter: lateral connections: ``mlp`` (the paper's non-linear adapter) or ``linear``.
    :param drop_rate: dropout on the hidden activations of the column being trained.
    :param masking: task heads mask the units of classes their task never trained.
    :param unseen_task: a task met at evaluation before training gets all-zero outputs with a warning
        (``fallback``) or stops the run (``error``).
    :param num_classes: units of each task head (the benchmark's ``num_classes``; heads grow if needed).
    :param benchmark: filled by ``clkernel run``: refused when its training experiences have no task labels.
    """
    from clkernel_pnn.pnn import PNN

    require_task_labels("pnn", benchmark)
    if in_features is not None and input_size is not None and in_features != input_size:
        raise ValueError(f"pnn: in_features={in_features} does not match the benchmark's input size "
                         f"({input_size} values per sample)")
    return PNN(num_layers, in_features or input_size or 784, hidden_features_per_column, adapter,
               num_classes=num_classes, drop_rate=drop_rate, masking=masking, unseen_task=unseen_task)


@clkernel.hookimpl
def register_models(register: Callable[..., None]) -> None:
    register("pnn", pnn)
