"""Fixtures: a model whose predictions come from a table, so that every metric value is known by hand."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Stream


class TableModel(torch.nn.Module):
    """Predicts ``table[stage, id]`` for the sample whose input is ``[id]``; ``stage`` counts trained experiences.

    Logits are ``10 * one_hot(prediction)``, so the cross-entropy of a right / wrong prediction is known.
    The only parameter multiplies by zero: training never changes the predictions.
    """

    def __init__(self, table: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.stage = 0
        self.num_classes = num_classes
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 0].long()
        preds = self.table[min(self.stage, self.table.shape[0] - 1), ids]
        return torch.nn.functional.one_hot(preds, self.num_classes).float() * 10 + self.w * 0


class NextStage:
    """Moves the table model to its next stage after each training experience."""

    name = "next-stage"

    def __init__(self, model: TableModel) -> None:
        self.model = model

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        self.model.stage += 1


def ce_right(num_classes: int) -> float:
    """Cross-entropy of a right prediction with logits 10 * one_hot."""
    import math

    return -math.log(math.exp(10) / (math.exp(10) + num_classes - 1))


def ce_wrong(num_classes: int) -> float:
    import math

    return -math.log(1 / (math.exp(10) + num_classes - 1))


def build(R: list[list[float]], b: list[float], test_sizes: list[int], train_sizes: list[int],
          train_right: list[float], num_classes: int = 4, test_tasks: list[int] | None = None) -> SimpleNamespace:
    """Streams and a table model such that: the accuracy on test experience j is ``b[j]`` before training and
    ``R[i][j]`` after training experience i; the training accuracy on experience i is ``train_right[i]``.

    Fractions must be multiples of 1 / size. Classes: experience j holds labels ``j % num_classes`` and
    ``(j + 1) % num_classes`` alternately.
    """
    T = len(train_sizes)
    n_train, n_test = sum(train_sizes), sum(test_sizes)
    table = torch.zeros(T + 1, n_train + n_test, dtype=torch.long)
    ys_train, ys_test, ids_train, ids_test = [], [], [], []
    start = 0
    for i, size in enumerate(train_sizes):
        ids = torch.arange(start, start + size)
        y = (i + torch.arange(size) % 2) % num_classes
        right = round(train_right[i] * size)
        assert abs(right - train_right[i] * size) < 1e-9
        pred = y.clone()
        pred[right:] = (y[right:] + 1) % num_classes
        table[i, ids] = pred  # during training of experience i the model is at stage i
        ys_train.append(y)
        ids_train.append(ids)
        start += size
    for j, size in enumerate(test_sizes):
        ids = torch.arange(start, start + size)
        y = (j + torch.arange(size) % 2) % num_classes
        for stage, accs in enumerate([b, *R]):
            right = round(accs[j] * size)
            assert abs(right - accs[j] * size) < 1e-9, (accs[j], size)
            pred = y.clone()
            pred[right:] = (y[right:] + 1) % num_classes
            table[stage, ids] = pred
        ys_test.append(y)
        ids_test.append(ids)
        start += size
    train = Stream("train", [Experience(i, CLDataset.from_tensors(ids.float().unsqueeze(1), y))
                             for i, (ids, y) in enumerate(zip(ids_train, ys_train))])
    tasks = test_tasks or [0] * len(test_sizes)
    test = Stream("test", [Experience(j, CLDataset.from_tensors(ids.float().unsqueeze(1), y, tasks[j]))
                           for j, (ids, y) in enumerate(zip(ids_test, ys_test))])
    model = TableModel(table, num_classes)
    return SimpleNamespace(train=train, test=test, model=model, table=table, ys_test=ys_test)


def strategy(setup: SimpleNamespace, *plugins: Any, **options: Any) -> clkernel.Naive:
    model = setup.model
    options.setdefault("train_mb_size", 8)
    return clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1),
                          plugins=[*plugins, NextStage(model)], device="cpu",
                          generator=torch.Generator().manual_seed(0), **options)


@pytest.fixture
def table() -> SimpleNamespace:
    """``table.build(...)``, ``table.strategy(setup, *plugins)``, ``table.ce_right(C)``, ``table.ce_wrong(C)``."""
    return SimpleNamespace(build=build, strategy=strategy, ce_right=ce_right, ce_wrong=ce_wrong,
                           NextStage=NextStage)
