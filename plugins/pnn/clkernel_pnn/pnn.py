"""Progressive Neural Networks (Rusu et al., 2016, arXiv:1606.04671): one column per task, lateral connections
from every earlier column, earlier columns frozen.

Each of ``num_layers`` layers holds one column per task. Column ``k`` of a layer reads column ``k``'s activation
of the layer below (the input, for the first layer) and, through a lateral *adapter*, the activations of columns
``0..k-1`` of the layer below. Task ``k``'s output is a classifier head on column ``k``'s last activation. A sample
of task ``k`` only runs columns ``0..k``, so training later tasks never changes an earlier task's output.

Freezing: when a new task arrives, every existing column and head stops requiring gradients (so its ``.grad``
stays None and optimizers, momentum and weight decay included, skip it) and is kept in eval mode even when the
model is put in train mode (no dropout on its activations, no change to batch-norm statistics).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clkernel import Experience
from clkernel.validate import positive_int, unit_interval
from clkernel_models import MultiHeadClassifier, MultiTaskModule

__all__ = ["ADAPTERS", "LinearAdapter", "MLPAdapter", "PNN", "PNNColumn", "PNNLayer"]


class LinearAdapter(nn.Module):
    """Lateral connection as a linear map of the earlier columns' activations (one matrix on their concatenation,
    which is the sum of one matrix per column; no bias, the column's own layer has one).

    ``forward(prev)``: ``num_prev`` activations ``(B, in_features)`` -> ``(B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, num_prev: int) -> None:
        super().__init__()
        self.num_prev = num_prev
        self.linear = nn.Linear(in_features * num_prev, out_features, bias=False) if num_prev else None

    def forward(self, prev: list[torch.Tensor]) -> torch.Tensor:
        return self.linear(torch.cat(prev, dim=1))


class MLPAdapter(nn.Module):
    """Lateral connection of the paper's Eq. 2 (Rusu et al., 2016): ``U relu(V [alpha_j h_j]_j)``, with learned
    scalars ``alpha_j`` (initialised uniformly in [0, 0.1), small and random as the paper says) scaling each
    earlier column's activation.

    ``forward(prev)``: ``num_prev`` activations ``(B, in_features)`` -> ``(B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, num_prev: int) -> None:
        super().__init__()
        self.num_prev, self.in_features = num_prev, in_features
        if num_prev:
            self.alphas = nn.Parameter(torch.empty(num_prev).uniform_(0.0, 0.1))
            self.V = nn.Linear(in_features * num_prev, out_features)
            self.U = nn.Linear(out_features, out_features, bias=False)

    def forward(self, prev: list[torch.Tensor]) -> torch.Tensor:
        scaled = torch.cat(prev, dim=1) * self.alphas.repeat_interleave(self.in_features)
        return self.U(F.relu(self.V(scaled)))


#: Lateral adapters by name (the ``adapter`` option of :class:`PNN`).
ADAPTERS = {"mlp": MLPAdapter, "linear": LinearAdapter}


class PNNColumn(nn.Module):
    """One column of one layer: ``dropout(relu(W h_own + adapter(h_earlier)))``.

    ``forward(own, prev)``: ``own`` ``(B, in_features)`` and the earlier columns' activations (a list of
    ``num_prev`` such tensors, empty for the first column) -> ``(B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, num_prev: int, adapter: str = "mlp",
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.itoh = nn.Linear(in_features, out_features)
        self.adapter = ADAPTERS[adapter](in_features, out_features, num_prev)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, own: torch.Tensor, prev: list[torch.Tensor]) -> torch.Tensor:
        h = self.itoh(own)
        if prev:
            h = h + self.adapter(prev)
        return self.dropout(F.relu(h))


class PNNLayer(nn.Module):
    """The columns of one layer; column ``j`` has lateral adapters from columns ``0..j-1`` of the layer below."""

    def __init__(self, in_features: int, out_features: int, adapter: str = "mlp", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.adapter, self.drop_rate = (in_features, out_features, adapter,
                                                                             drop_rate)
        self.columns = nn.ModuleList()
        self.add_column()

    def add_column(self, **factory: Any) -> PNNColumn:
        """Append a column with adapters from every existing one; ``factory`` (device, dtype) places it."""
        column = PNNColumn(self.in_features, self.out_features, len(self.columns), self.adapter, self.drop_rate)
        self.columns.append(column.to(**factory))
        return column

    def forward(self, inputs: list[torch.Tensor], last: int) -> list[torch.Tensor]:
        """Activations of columns ``0..last`` from the layer below's (``inputs[j]`` feeds column ``j``)."""
        return [self.columns[j](inputs[j], inputs[:j]) for j in range(last + 1)]


class PNN(MultiTaskModule):
    """Progressive Neural Network (Rusu et al., 2016) for task-incremental learning: routes each sample by its
    task label. ``forward(x, task_labels)``: ``x`` ``(B, ...)`` with ``in_features`` values per sample, int64
    ``task_labels`` ``(B,)`` -> logits ``(B, C)`` (``C``: the widest head among the minibatch's tasks).

    Rules: one task per training experience; a task's column trains while it is the newest, and a task whose
    column was frozen cannot be trained again (an error says so). Tasks met at evaluation before training get
    all-zero outputs (``unseen_task="fallback"``, with a warning) or an error (``"error"``).

    :param num_layers: hidden layers per column.
    :param in_features: values per input sample (inputs are flattened).
    :param hidden_features_per_column: units of each column's hidden layers.
    :param adapter: lateral connections, ``"mlp"`` (the paper's non-linear adapter) or ``"linear"``.
    :param num_classes: units of each task's classifier head (default 2; heads grow with their task's classes).
    :param drop_rate: dropout after each hidden activation of the column being trained, in [0, 1).
    :param masking: task heads mask the units of classes their task never trained.
    :param unseen_task: ``"fallback"`` or ``"error"`` for tasks met at evaluation before training.
    :raises ValueError: for options out of range or an unknown adapter.
    """

    def __init__(self, num_layers: int = 1, in_features: int = 784, hidden_features_per_column: int = 100,
                 adapter: str = "mlp", *, num_classes: int | None = None, drop_rate: float = 0.0,
                 masking: bool = True, unseen_task: str = "fallback") -> None:
        super().__init__(unseen_task=unseen_task)
        for name, value in (("num_layers", num_layers), ("in_features", in_features),
                            ("hidden_features_per_column", hidden_features_per_column)):
            positive_int(value, name, "PNN")
        if adapter not in ADAPTERS:
            raise ValueError(f"PNN: adapter must be one of {', '.join(ADAPTERS)}; got {adapter!r}")
        drop_rate = unit_interval(drop_rate, "drop_rate", "PNN", include_one=False)
        self.in_features = in_features
        self.hidden_features_per_column = hidden_features_per_column
        self.layers = nn.ModuleList(
            PNNLayer(in_features if i == 0 else hidden_features_per_column, hidden_features_per_column, adapter,
                     drop_rate) for i in range(num_layers))
        self.classifier = MultiHeadClassifier(hidden_features_per_column, num_classes or 2, masking=masking,
                                              unseen_task=unseen_task)
        self.classifier.auto_adapt = False
        self.classifier.warn_untrained = False
        self.pad_value = self.classifier.pad_value
        self._column: dict[int, int] = {}
        self.register_load_state_dict_post_hook(_refreeze)

    @property
    def num_columns(self) -> int:
        """Columns per layer: one per trained task (one before any training)."""
        return len(self.layers[0].columns)

    def column_of(self, task: int) -> int:
        """The column index of a trained task. :raises KeyError: for a task never trained."""
        return self._column[task]

    # ----------------------------------------------------------------------------------------- adaptation

    def adapt(self, experience: Experience) -> None:
        if self.training:
            tasks = sorted({int(t) for t in experience.task_labels})
            if len(tasks) != 1:
                raise ValueError(f"PNN trains one task per experience; training experience {experience.index} has "
                                 f"task labels {tasks}")
            if tasks[0] in self._known and tasks[0] != self._known[-1]:
                raise ValueError(f"PNN cannot train task {tasks[0]} again: its column was frozen when task "
                                 f"{self._known[self._known.index(tasks[0]) + 1]} arrived (experience "
                                 f"{experience.index})")
        super().adapt(experience)
        self.classifier.adapt(experience)
        self._freeze_old()

    def add_task(self, task: int, experience: Experience) -> None:
        if self._known:  # the first task gets the column built with the model
            for layer in self.layers:
                layer.add_column(**self._factory)
        self._column[task] = len(self._known)

    def _frozen_columns(self) -> list[nn.Module]:
        return [col for layer in self.layers for col in list(layer.columns)[:-1]]

    def _freeze_old(self) -> None:
        """Every column but the newest, and every head but the newest task's, frozen (no grad, eval mode)."""
        frozen = self._frozen_columns()
        for layer in self.layers:
            layer.columns[-1].requires_grad_(True)
        for col in frozen:
            col.requires_grad_(False)
            col.eval()
        newest = str(self._known[-1]) if self._known else None
        for key, head in self.classifier.heads.items():
            head.requires_grad_(key == newest)

    def train(self, mode: bool = True) -> PNN:
        super().train(mode)
        for col in self._frozen_columns():
            col.eval()
        return self

    def restore_tasks(self) -> None:
        needed = max(1, len(self._known))
        for layer in self.layers:
            while len(layer.columns) < needed:
                layer.add_column(**self._factory)
            if len(layer.columns) > needed:
                layer.columns = nn.ModuleList(list(layer.columns)[:needed])
        self._column = {t: i for i, t in enumerate(self._known)}

    # ----------------------------------------------------------------------------------------- forward

    def forward_single_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        k = self._column[task]
        h = x.reshape(x.shape[0], -1)
        if h.shape[1] != self.in_features:
            raise ValueError(f"PNN expects {self.in_features} values per sample (in_features), got input of shape "
                             f"{tuple(x.shape)}")
        hs = [h] * (k + 1)
        for layer in self.layers:
            hs = layer(hs, k)
        return self.classifier.forward_single_task(hs[k], task)

    def forward_unseen_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.classifier.forward_unseen_task(x, task)


def _refreeze(module: PNN, incompatible_keys: Any) -> None:
    module._freeze_old()
