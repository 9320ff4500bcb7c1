"""The report: results.json and PNG plots of the values received, rewritten after every evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

import clkernel
from clkernel_loggers import ReportLogger


def _nan_to_none(values: list) -> list:
    return [_nan_to_none(v) if isinstance(v, list) else None if math.isnan(v) else v for v in values]


def test_results_json_and_plots(tiny, tmp_path):
    config = {"benchmark": "split-mnist", "metrics": ["accuracy"], "loggers": ["report"], "seed": 0}
    logger = ReportLogger(tmp_path, config=config)
    run = tiny.make_run(logger)
    files = tiny.run_all(run)

    results = json.loads((tmp_path / "results.json").read_text())
    last = {}
    for _, name, value in run.metrics.logged:
        last[name] = value
    scalars = {k: float(v) for k, v in last.items() if not (isinstance(v, torch.Tensor) and v.dim() > 0)
               and "_running_epoch/" not in k and "_mb/" not in k}  # progress values are not final
    assert results["final_metrics"] == pytest.approx(scalars)
    table = results["accuracy_matrix"]["test"]
    assert table["values"] == _nan_to_none(last["accuracy_matrix_stream/eval/test"].tolist())  # as received
    assert table["source"] == "accuracy_matrix_stream/eval/test" and table["initial"] is None
    assert results["matrices"] == {"confusion_matrix_stream/eval/test": [[5, 1], [2, 7]]}
    assert results["config"] == config
    assert results["experiences_trained"] == 3
    versions = results["versions"]
    assert versions["clkernel"] == clkernel.__version__ and versions["torch"] == torch.__version__
    assert "clkernel-loggers" in versions["plugins"]

    assert [p.name for p in files] == ["results.json", "accuracy_matrix_test.png", "accuracy_curves_test.png"]
    assert results["files"] == [p.name for p in files]
    for png in files[1:]:
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (640, 480)


def test_written_after_every_evaluation_with_what_it_received(tiny, tmp_path):
    logger = ReportLogger(tmp_path, dpi=50)
    run = tiny.make_run(logger)
    run.strategy.eval(run.test)  # before training: the initial accuracies, no matrix yet
    first = json.loads((tmp_path / "results.json").read_text())  # written by the evaluation, before after_run
    b = [0.7, 0.51, 0.32]  # FakeMetrics: 0.9 - 0.2 * (1 + j) + 0.01 * j
    assert first["accuracy_matrix"]["test"]["initial"] == pytest.approx(b)
    assert first["accuracy_matrix"]["test"]["values"] == [] and first["experiences_trained"] == 0

    run.strategy.train(run.train[0])
    run.strategy.eval(run.test)
    after_one = json.loads((tmp_path / "results.json").read_text())
    assert after_one["accuracy_matrix"]["test"]["values"] == [[0.9, 0.71, 0.52]]
    assert after_one["accuracy_matrix"]["test"]["initial"] == pytest.approx(b)  # kept: the last value received
    for exp in run.train[1:]:
        run.strategy.train(exp)
        run.strategy.eval(run.test)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["accuracy_matrix"]["test"]["values"] == _nan_to_none(run.metrics.matrix_value().tolist())
    with Image.open(tmp_path / "accuracy_matrix_test.png") as image:
        assert image.size == (320, 240)


def test_no_matrix_received_no_matrix_written(tiny, tmp_path):
    """The report does not rebuild the accuracy matrix from acc_exp values: it writes what it received."""
    logger = ReportLogger(tmp_path, plots=True)
    run = tiny.make_run(logger, matrix=False)
    files = tiny.run_all(run)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["accuracy_matrix"] == {}
    assert "acc_exp/eval/test/exp002" in results["final_metrics"]
    assert files == [tmp_path / "results.json"]


def test_logged_figures_are_saved(tmp_path):
    from matplotlib.figure import Figure

    logger = ReportLogger(tmp_path, plots=True)
    fig = Figure(figsize=(2, 1), dpi=100)
    fig.add_subplot().plot([0, 1], [1, 0])
    state = clkernel.TrainState(model=torch.nn.Linear(1, 1), optimizer=None, criterion=None,  # type: ignore
                                device=torch.device("cpu"), train_mb_size=1, train_epochs=1, eval_mb_size=1)
    logger.log_metrics(state, {"my_plot_stream/eval/test": fig, "x_stream/eval/test": 1.5, "free-form": 2.0})
    logger.after_run(state)
    assert logger.output_files(state) == [tmp_path / "results.json", tmp_path / "my_plot_stream_eval_test.png"]
    with Image.open(tmp_path / "my_plot_stream_eval_test.png") as image:
        assert image.size == (200, 100)
    assert json.loads((tmp_path / "results.json").read_text())["final_metrics"] == {"x_stream/eval/test": 1.5,
                                                                                    "free-form": 2.0}


def test_status_is_written_at_the_start_and_the_end_on_rank_0_only(tmp_path):
    def state(rank: int) -> clkernel.TrainState:
        return clkernel.TrainState(model=torch.nn.Linear(1, 1), optimizer=None, criterion=None,  # type: ignore
                                   device=torch.device("cpu"), train_mb_size=1, train_epochs=1, eval_mb_size=1,
                                   rank=rank)

    other = ReportLogger(tmp_path / "rank1")
    s1 = state(1)
    other.before_run(s1)
    other.after_eval(s1)
    other.after_run(s1)
    assert other.output_files(s1) == [] and list((tmp_path / "rank1").iterdir()) == []

    logger, s0 = ReportLogger(tmp_path / "rank0"), state(0)
    logger.before_run(s0)
    results = json.loads((tmp_path / "rank0" / "results.json").read_text())
    assert results["status"] == "running" and results["error"] is None and results["final_metrics"] == {}
    s0.outcome, s0.error = "failed", "RuntimeError: kaboom"
    logger.after_run(s0)
    results = json.loads((tmp_path / "rank0" / "results.json").read_text())
    assert results["status"] == "failed" and results["error"] == "RuntimeError: kaboom"


def test_bad_dpi():
    with pytest.raises(ValueError, match="report: dpi must be an integer >= 10, got 5"):
        ReportLogger(dpi=5)
    with pytest.raises(ValueError, match="report: dpi must be a positive integer, got 72.0"):
        ReportLogger(dpi=72.0)  # type: ignore[arg-type]


def test_progress_values_are_not_final_metrics(tmp_path):
    from types import SimpleNamespace

    from clkernel_loggers import ReportLogger

    report = ReportLogger(tmp_path, plots=False)
    state = SimpleNamespace(experiences_trained=1)
    report.log_metrics(state, {"acc_running_epoch/train/train": 0.0, "loss_mb/train/train": 3.2,
                               "acc_epoch/train/train": 0.5, "custom": 7})
    report.write()
    final = json.loads((tmp_path / "results.json").read_text())["final_metrics"]
    assert final == {"acc_epoch/train/train": 0.5, "custom": 7.0}
