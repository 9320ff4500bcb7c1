"""The report: results.json and PNG plots, rewritten after every evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

import clkernel
from clkernel_loggers import ReportLogger


def _nan_to_none(matrix: torch.Tensor):
    return [[None if math.isnan(v) else v for v in row] for row in matrix.tolist()]


def test_results_json_and_plots(tiny, tmp_path):
    config = {"benchmark": "split-mnist", "metrics": ["accuracy"], "loggers": ["report"], "seed": 0}
    logger = ReportLogger(tmp_path, config=config)
    run = tiny.make_run(logger)
    tiny.run_all(run)
    logger.close()

    results = json.loads((tmp_path / "results.json").read_text())
    last = {}
    for _, name, value in run.metrics.logged:
        last[name] = value
    scalars = {k: float(v) for k, v in last.items() if not (isinstance(v, torch.Tensor) and v.dim() == 2)}
    assert results["final_metrics"] == pytest.approx(scalars)
    logged_matrix = last["accuracy_matrix_stream/eval/test"]
    assert results["accuracy_matrix"]["test"]["values"] == _nan_to_none(logged_matrix)
    assert results["accuracy_matrix"]["test"]["source"] == "accuracy_matrix_stream"
    assert results["matrices"]["confusion_matrix_stream/eval/test"] == [[5, 1], [2, 7]]
    assert results["config"] == config
    assert results["experiences_trained"] == 3
    versions = results["versions"]
    assert versions["clkernel"] == clkernel.__version__ and versions["torch"] == torch.__version__
    assert "clkernel-loggers" in versions["plugins"]

    files = logger.files()
    assert [p.name for p in files] == ["results.json", "accuracy_matrix_test.png", "accuracy_curves_test.png"]
    assert results["files"] == [p.name for p in files]
    for png in files[1:]:
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (640, 480)


def test_matrix_rebuilt_from_experience_accuracies_and_always_complete(tiny, tmp_path):
    logger = ReportLogger(tmp_path, dpi=50)
    run = tiny.make_run(logger, matrix=False)
    run.strategy.eval(run.test)  # before training: the "initial" accuracies
    first = json.loads((tmp_path / "results.json").read_text())
    assert first["accuracy_matrix"] == {} and first["experiences_trained"] == 0

    run.strategy.train(run.train[0])
    run.strategy.eval(run.test)
    after_one = json.loads((tmp_path / "results.json").read_text())  # written by the evaluation, no close()
    assert len(after_one["accuracy_matrix"]["test"]["values"]) == 1
    for exp in run.train[1:]:
        run.strategy.train(exp)
        run.strategy.eval(run.test)

    results = json.loads((tmp_path / "results.json").read_text())
    rows = run.metrics._rows
    expected = [[rows[i].get(j) for j in range(3)] for i in range(3)]
    table = results["accuracy_matrix"]["test"]
    assert table["values"] == expected and table["source"] == "acc_exp"
    assert table["initial"] == [pytest.approx(0.9 - 0.2 * (1 + j) + 0.01 * j) for j in range(3)]
    with Image.open(tmp_path / "accuracy_matrix_test.png") as image:
        assert image.size == (320, 240)


def test_periodic_evaluations_inside_an_experience_are_not_rows(tiny, tmp_path):
    logger = ReportLogger(tmp_path, plots=False)
    run = tiny.make_run(logger, matrix=False, epochs=2)
    run.strategy.eval_every = 1
    run.strategy.train(run.train, eval_streams=[run.test])
    logger.close()
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["accuracy_matrix"]["test"]["values"]) == 3
    assert logger.files() == [tmp_path / "results.json"]


def test_logged_figures_are_saved(tmp_path):
    from matplotlib.figure import Figure

    logger = ReportLogger(tmp_path, plots=True)
    fig = Figure(figsize=(2, 1), dpi=100)
    fig.add_subplot().plot([0, 1], [1, 0])
    state = clkernel.TrainState(model=torch.nn.Linear(1, 1), optimizer=None, criterion=None,  # type: ignore
                                device=torch.device("cpu"), train_mb_size=1, train_epochs=1, eval_mb_size=1)
    logger.log_metrics(state, {"my_plot_stream/eval/test": fig, "x_stream/eval/test": 1.5})
    written = logger.write()
    assert tmp_path / "my_plot_stream_eval_test.png" in written
    with Image.open(tmp_path / "my_plot_stream_eval_test.png") as image:
        assert image.size == (200, 100)
    assert json.loads((tmp_path / "results.json").read_text())["final_metrics"] == {"x_stream/eval/test": 1.5}
