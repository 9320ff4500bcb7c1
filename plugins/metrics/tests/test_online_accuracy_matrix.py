"""The accuracy matrix, forgetting and BWT over online streams (issue 10, item 7), and the textbook definitions.

With an online stream (``clkernel_benchmarks.online_benchmark``) a row of ``R`` is an *origin* experience after
its last mini-experience, never a mini-experience; forgetting and BWT run over the origin experiences before the
last trained one (Chaudhry et al. 2018; Lopez-Paz & Ranzato 2017). The expected values are computed here, by
hand, from accuracies read off the model directly.
"""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel import Stream
from clkernel_metrics import AccuracyMatrix, BackwardTransfer, Forgetting, backward_transfer, forgetting
from clkernel_metrics.standalone import backward_transfer_per_experience, forgetting_per_experience

# ---------------------------------------------------------------------------------------------- pure definitions

# R[i][j]: accuracy on experience j after training experience i. Experience 0 rises after experience 1 (0.95 >
# R[0][0]), so its forgetting counts from 0.95, not from the diagonal: forgetting is not -BWT here.
R4 = [[0.80, 0.10, 0.00, 0.05],
      [0.95, 0.90, 0.20, 0.10],
      [0.70, 0.50, 0.85, 0.30],
      [0.40, 0.60, 0.55, 0.95]]


def _matrix(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_forgetting_and_bwt_follow_the_textbook_on_a_hand_written_matrix():
    m = _matrix(R4)
    # Chaudhry et al. (2018): f_j = max_{l<k} R[l, j] - R[k, j] for j < k; k = 3, the last experience excluded
    assert forgetting_per_experience(m) == pytest.approx({0: 0.95 - 0.40, 1: 0.90 - 0.60, 2: 0.85 - 0.55})
    assert forgetting(m) == pytest.approx((0.55 + 0.30 + 0.30) / 3)
    # Lopez-Paz & Ranzato (2017): BWT = 1/(T-1) sum_{j<T-1} R[T-1, j] - R[j, j]
    assert backward_transfer_per_experience(m) == pytest.approx({0: 0.40 - 0.80, 1: 0.60 - 0.90, 2: 0.55 - 0.85})
    assert backward_transfer(m) == pytest.approx((-0.40 - 0.30 - 0.30) / 3)
    # after experience k = 2: rows 0 and 1 are the earlier ones, experience 2 is the current one
    assert forgetting_per_experience(m, k=2) == pytest.approx({0: 0.95 - 0.70, 1: 0.90 - 0.50})
    assert backward_transfer(m, k=2) == pytest.approx(((0.70 - 0.80) + (0.50 - 0.90)) / 2)
    # the metric classes, fed entry by entry, agree
    f, bwt = Forgetting(), BackwardTransfer()
    for metric in (f, bwt):
        for i, row in enumerate(R4):
            for j, v in enumerate(row):
                metric.update(i, j, v)
    assert f.result() == pytest.approx(1.15 / 3) and bwt.result() == pytest.approx(-1.0 / 3)
    assert set(f.per_experience()) == {0, 1, 2}  # the experience being trained is not forgotten


def test_forgetting_and_bwt_skip_unknown_entries():
    acc = AccuracyMatrix()
    for i, row in enumerate(R4):
        for j, v in enumerate(row):
            if (i, j) != (1, 0):  # R[1][0] unknown: the max over earlier rows is R[0][0]
                acc.update(i, j, v)
    m = acc.result()
    assert forgetting_per_experience(m) == pytest.approx({0: 0.80 - 0.40, 1: 0.90 - 0.60, 2: 0.85 - 0.55})
    assert backward_transfer(m) == pytest.approx((-0.40 - 0.30 - 0.30) / 3)


# ---------------------------------------------------------------------------------------------- online streams


def _accuracies(model: torch.nn.Module, stream: Stream) -> list[float]:
    """The accuracy of ``model`` on each experience of ``stream``, computed directly."""
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for exp in stream:
            data = exp.dataset.eval()
            x, y, _ = data.get_batch(torch.arange(len(data)))
            out.append(int((model(x).argmax(dim=1) == y).sum()) / len(data))
    model.train(was_training)
    return out


class Probe:
    """Reads the test accuracies off the model before training (``b``) and after the last mini-experience of
    each origin experience (the rows of ``R``)."""

    name = "probe"

    def __init__(self, test: Stream) -> None:
        self.test = test
        self.b: list[float] | None = None
        self.rows: dict[int, list[float]] = {}
        self.trained: list[int] = []

    @clkernel.hookimpl
    def before_training(self, state) -> None:
        if self.b is None:
            self.b = _accuracies(state.model, self.test)

    @clkernel.hookimpl
    def after_training_exp(self, state) -> None:
        exp = state.experience
        self.trained.append(exp.index)
        if exp.is_last_subexp:
            self.rows[exp.origin_index] = _accuracies(state.model, self.test)


@pytest.fixture(scope="module")
def online_run():
    """Naive with the ``cl`` metric on online split-digits (mini-experiences of 150 samples), the test stream
    evaluated after every mini-experience; the test stream is also evaluated split into mini-experiences of 25
    samples (``test-online``), which must pool into the same matrix."""
    benchmarks = pytest.importorskip("clkernel_benchmarks")
    torch.manual_seed(0)
    base = clkernel.load("benchmark", "split-digits")
    online = benchmarks.online_benchmark(base, experience_size=150, seed=0)
    test = online.streams["test"]
    test_online = benchmarks.split_online_stream(Stream("test-online", list(test)), 25, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    probe, cl = Probe(test), clkernel.load("metric", "cl")
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[probe, cl],
                              train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    with strategy:
        out = strategy.train(online.streams["train"], eval_streams=[test, test_online])
    return online, probe, cl, out


def test_online_stream_rows_are_origin_experiences(online_run):
    online, probe, cl, out = online_run
    train = online.streams["train"]
    assert len(train) == 10 and probe.trained == list(range(10))  # 10 mini-experiences, 2 per origin
    assert sorted(probe.rows) == [0, 1, 2, 3, 4]
    T = 5
    R = [probe.rows[i] for i in range(T)]
    b = probe.b
    # the textbook values, by hand, over origin experiences
    f = {j: max(R[l][j] for l in range(T - 1)) - R[T - 1][j] for j in range(T - 1)}
    bwt = {j: R[T - 1][j] - R[j][j] for j in range(T - 1)}
    fwt = {i: R[i - 1][i] - b[i] for i in range(1, T)}
    assert sum(bwt.values()) / (T - 1) < -0.5  # the scenario forgets: the values below are not trivial

    matrix = out["accuracy_matrix_stream/eval/test"]
    assert matrix.shape == (T, T)
    torch.testing.assert_close(matrix, torch.tensor(R, dtype=torch.float64), rtol=0, atol=1e-12)
    assert out["accuracy_initial_stream/eval/test"].tolist() == pytest.approx(b, abs=1e-12)
    for j in range(T - 1):
        assert out[f"forgetting_exp/eval/test/exp{j:03d}"] == pytest.approx(f[j], abs=1e-12)
        assert out[f"bwt_exp/eval/test/exp{j:03d}"] == pytest.approx(bwt[j], abs=1e-12)
    for i in range(1, T):
        assert out[f"fwt_exp/eval/test/exp{i:03d}"] == pytest.approx(fwt[i], abs=1e-12)
    assert out["forgetting_stream/eval/test"] == pytest.approx(sum(f.values()) / (T - 1), abs=1e-12)
    assert out["bwt_stream/eval/test"] == pytest.approx(sum(bwt.values()) / (T - 1), abs=1e-12)
    assert out["fwt_stream/eval/test"] == pytest.approx(sum(fwt.values()) / (T - 1), abs=1e-12)
    # the experience being trained is neither forgotten nor transferred backward
    history = cl.all_metrics()
    assert not any(name.endswith(f"exp{T - 1:03d}") for name in history if name.startswith(("forgetting", "bwt")))
    # one row per origin experience: the evaluations after the other mini-experiences emit nothing
    assert len(history["accuracy_matrix_stream/eval/test"]) == T
    assert len(history["bwt_stream/eval/test"]) == T - 1  # from the second origin experience on


def test_an_online_evaluation_stream_pools_its_mini_experiences_by_origin(online_run):
    _, probe, _, out = online_run
    assert out["accuracy_matrix_stream/eval/test-online"].shape == (5, 5)
    torch.testing.assert_close(out["accuracy_matrix_stream/eval/test-online"],
                               out["accuracy_matrix_stream/eval/test"], rtol=0, atol=1e-12)
    assert out["bwt_stream/eval/test-online"] == pytest.approx(out["bwt_stream/eval/test"], abs=1e-12)
    assert out["forgetting_stream/eval/test-online"] == pytest.approx(out["forgetting_stream/eval/test"],
                                                                      abs=1e-12)
