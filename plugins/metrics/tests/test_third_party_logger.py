"""A logger written from the kernel's public API only gets everything the first-party loggers show, through
``log_metrics`` alone: the accuracy matrix and the running epoch loss and accuracy of the default metrics."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import clkernel
from clkernel_metrics import RUNNING_EVERY, default_evaluator


class ThirdPartyLogger:
    """Keeps every value it receives, grouped by the parts of its name; knows nothing of clkernel-metrics."""

    name = "third-party-logger"

    def __init__(self) -> None:
        self.matrices: list[tuple[int, str, torch.Tensor]] = []  # (step, stream, matrix)
        self.running: dict[str, list[tuple[int, float]]] = {}  # quantity -> [(step, value)]
        self.unstructured: list[str] = []
        self.closed = False

    @clkernel.hookimpl
    def log_metrics(self, state: Any, values: dict[str, Any]) -> None:
        for name, value in values.items():
            try:
                parts = clkernel.parse_metric_name(name)
            except ValueError:
                self.unstructured.append(name)
                continue
            if parts.metric == "accuracy_matrix_stream" and parts.phase == "eval":
                self.matrices.append((state.iteration, parts.stream, value))
            elif parts.granularity == "running_epoch" and parts.phase == "train":
                self.running.setdefault(parts.quantity, []).append((state.iteration, float(value)))

    @clkernel.hookimpl
    def after_run(self, state: Any) -> None:
        self.closed = True


class Independent:
    """The values the metrics should report, computed from the model's predictions without clkernel-metrics:
    ``rows[i][j]`` the accuracy on test experience j after training experience i, and the running epoch loss and
    accuracy after every iteration."""

    name = "independent"

    def __init__(self, test: clkernel.Stream) -> None:
        self.test = test
        self.rows: list[list[float]] = []
        self.running: dict[int, tuple[float, float]] = {}  # iteration -> (loss, acc)

    @clkernel.hookimpl
    def before_training_epoch(self, state: Any) -> None:
        self.loss = self.right = self.n = 0.0

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        n = len(state.mb_y)
        self.loss += float(state.loss.detach()) * n
        self.right += float((state.mb_output.argmax(1) == state.mb_y).sum())
        self.n += n
        self.running[state.iteration] = (self.loss / self.n, self.right / self.n)

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        row = []
        with torch.no_grad():
            for exp in self.test:
                x, y, _ = exp.dataset.eval().get_batch(torch.arange(len(exp.dataset)))
                row.append(float((state.model(x).argmax(1) == y).sum()) / len(y))
        self.rows.append(row)


def test_a_third_party_logger_receives_the_accuracy_matrix_and_the_running_values(blobs):
    bench = blobs.make_benchmark(num_exps=2, classes_per_exp=2, per_class=64)  # 128 training samples per exp
    model = blobs.make_model(num_classes=4)
    logger, independent = ThirdPartyLogger(), Independent(bench.streams["test"])
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), device="cpu",
                              plugins=[independent, default_evaluator(), logger], train_mb_size=5, train_epochs=2,
                              generator=torch.Generator().manual_seed(0))
    clkernel.run(strategy, bench)  # 26 iterations per epoch, 104 in all
    assert logger.closed

    # the accuracy matrix: one value per evaluation after a training experience, row i = after experience i
    assert [(len(m), stream) for _, stream, m in logger.matrices] == [(1, "test"), (2, "test")]
    final = logger.matrices[-1][2]
    assert final.shape == (2, 2) and final.dtype == torch.float64
    assert final.tolist()[0] == pytest.approx(independent.rows[0], abs=1e-12)
    assert final.tolist()[1] == pytest.approx(independent.rows[1], abs=1e-12)
    assert final[1, 0] < final[0, 0]  # fine-tuning forgets: the matrix is not trivially constant

    # the running epoch values: every RUNNING_EVERY iterations, the epoch so far
    steps = [s for s in range(RUNNING_EVERY, 105, RUNNING_EVERY)]
    assert steps == [32, 64, 96]
    assert [s for s, _ in logger.running["loss"]] == steps and [s for s, _ in logger.running["acc"]] == steps
    assert [v for _, v in logger.running["loss"]] == pytest.approx([independent.running[s][0] for s in steps],
                                                                    rel=1e-6)
    assert [v for _, v in logger.running["acc"]] == pytest.approx([independent.running[s][1] for s in steps],
                                                                   abs=1e-12)
    assert logger.unstructured == []
