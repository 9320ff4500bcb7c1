"""Fixtures: a tiny continual run, with a stand-in metric plugin (the loggers never import clkernel-metrics)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Stream


class FakeMetrics:
    """Logs values following the naming scheme, all of them known in advance:

    * every ``running_every`` training iterations: ``loss_running_epoch`` and ``acc_running_epoch`` (0-d tensors,
      the epoch so far, computed from ``state.loss`` and the outputs);
    * per epoch: ``loss_epoch`` = 1 / (i + 1) and ``acc_epoch`` = 0.5 + i / 10 (a 0-d tensor), i the experiences
      trained;
    * per evaluated experience j: ``acc_exp`` = 0.9 - 0.2 |i - j| + 0.01 j, i the last trained experience (-1
      before training);
    * per evaluation: ``acc_stream`` (their mean), a confusion matrix, the accuracy matrix of the rows so far
      (``matrix``), and before any training the initial accuracies ``accuracy_initial_stream`` (a 1-D tensor).

    ``logged`` keeps every ``(step, name, value)`` it logged.
    """

    name = "fake-metrics"

    def __init__(self, matrix: bool = True, running_every: int = 2) -> None:
        self.matrix, self.running_every = matrix, running_every
        self.logged: list[tuple[int, str, Any]] = []
        self.rows: dict[int, dict[int, float]] = {}
        self.initial: dict[int, float] = {}
        self._acc: dict[int, float] = {}
        self._trained: int | None = None
        self._loss = self._right = self._n = 0.0

    def _log(self, state: Any, values: dict[str, Any]) -> None:
        self.logged.extend((state.iteration, k, v) for k, v in values.items())
        state.log_metrics(values)

    @clkernel.hookimpl
    def before_training_epoch(self, state: Any) -> None:
        self._loss = self._right = self._n = 0.0

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        n = len(state.mb_y)
        self._loss += float(state.loss.detach()) * n
        self._right += float((state.mb_output.argmax(1) == state.mb_y).sum())
        self._n += n
        if state.iteration % self.running_every == 0:
            self._log(state, {"loss_running_epoch/train/train": torch.tensor(self._loss / self._n),
                              "acc_running_epoch/train/train": torch.tensor(self._right / self._n)})

    @clkernel.hookimpl
    def after_training_epoch(self, state: Any) -> None:
        i = state.experiences_trained
        self._log(state, {"loss_epoch/train/train": 1.0 / (i + 1), "acc_epoch/train/train": torch.tensor(0.5 + i / 10)})

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        self._trained = state.experience.index

    @clkernel.hookimpl
    def after_eval_exp(self, state: Any) -> None:
        j = state.experience.index
        acc = round(0.9 - 0.2 * abs((self._trained if self._trained is not None else -1) - j) + 0.01 * j, 4)
        self._acc[j] = acc
        if self._trained is not None:
            self.rows.setdefault(self._trained, {})[j] = acc
        else:
            self.initial[j] = acc
        self._log(state, {f"acc_exp/eval/{state.stream_name}/exp{j:03d}": acc})

    @clkernel.hookimpl
    def after_eval(self, state: Any) -> None:
        stream = state.stream_name
        values: dict[str, Any] = {f"acc_stream/eval/{stream}": sum(self._acc.values()) / len(self._acc),
                                  f"confusion_matrix_stream/eval/{stream}": torch.tensor([[5, 1], [2, 7]])}
        if self.matrix and self._trained is None:
            values[f"accuracy_initial_stream/eval/{stream}"] = torch.tensor(
                [self.initial[j] for j in sorted(self.initial)], dtype=torch.float64)
        if self.matrix and self.rows:
            values[f"accuracy_matrix_stream/eval/{stream}"] = self.matrix_value()
        self._log(state, values)
        self._acc = {}

    def matrix_value(self) -> torch.Tensor:
        """The accuracy matrix of the rows so far, NaN where unknown."""
        rows = 1 + max(self.rows)
        cols = 1 + max(j for r in self.rows.values() for j in r)
        m = torch.full((rows, cols), float("nan"), dtype=torch.float64)
        for i, r in self.rows.items():
            for j, v in r.items():
                m[i, j] = v
        return m


def make_run(*loggers: Any, matrix: bool = True, n_exps: int = 3, epochs: int = 1, running_every: int = 2
             ) -> SimpleNamespace:
    """A strategy over ``n_exps`` tiny experiences (40 training samples each, minibatches of 16: 3 iterations per
    epoch) with FakeMetrics and the given loggers (listed first, so that loggers must not depend on the order of
    plugins)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40 * n_exps, 5, generator=g), torch.arange(40 * n_exps) % (2 * n_exps)
    data = CLDataset.from_tensors(x, y)
    train = Stream("train", [Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(n_exps)])
    xt, yt = torch.randn(20 * n_exps, 5, generator=g), torch.arange(20 * n_exps) % (2 * n_exps)
    test_data = CLDataset.from_tensors(xt, yt)
    test = Stream("test", [Experience(i, test_data.class_subset([2 * i, 2 * i + 1])) for i in range(n_exps)])
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2 * n_exps)
    metrics = FakeMetrics(matrix=matrix, running_every=running_every)
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[*loggers, metrics],
                              train_mb_size=16, train_epochs=epochs, device="cpu",
                              generator=torch.Generator().manual_seed(0))
    return SimpleNamespace(strategy=strategy, train=train, test=test, metrics=metrics)


def run_all(run: SimpleNamespace, close: bool = True) -> list[Any]:
    """Train on each experience, evaluate the test stream after each; then ``strategy.close()`` (``after_run``)
    and return the files the plugins wrote (``output_files``)."""
    for exp in run.train:
        run.strategy.train(exp)
        run.strategy.eval(run.test)
    return run.strategy.close() if close else []


@pytest.fixture
def tiny() -> SimpleNamespace:
    """``tiny.make_run(*loggers, matrix=True)`` and ``tiny.run_all(run)``."""
    return SimpleNamespace(make_run=make_run, run_all=run_all, FakeMetrics=FakeMetrics)
