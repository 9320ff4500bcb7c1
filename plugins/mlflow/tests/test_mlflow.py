"""The mlflow logger against a local file store, read back with MLflow's own client (``MlflowClient``).

What was logged is recorded independently, by a recording plugin (Python runs) or the jsonl logger (``clkernel
run``), and compared with what the store holds.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from clkernel_mlflow import STATUSES, MlflowLogger, metric_key, params_of, registration

import clkernel
from clkernel.discovery import Registry


class Recorder:
    """Every (iteration, name, value) that reached the loggers."""

    name = "recorder"

    def __init__(self) -> None:
        self.values: list[tuple[int, str, Any]] = []

    @clkernel.hookimpl
    def log_metrics(self, state: Any, values: dict[str, Any]) -> None:
        self.values.extend((state.iteration, k, v) for k, v in values.items())


class Stop:
    """Raises ``error`` once ``at`` experiences are trained."""

    name = "stop"

    def __init__(self, at: int, error: BaseException) -> None:
        self.at, self.error = at, error

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        if state.experiences_trained == self.at:
            raise self.error


class Extras:
    """After each evaluation: a name MLflow would refuse, a 2-D tensor, a string and a matplotlib figure."""

    name = "extras"

    @clkernel.hookimpl
    def after_eval(self, state: Any) -> None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(2, 2), dpi=50)
        figure.add_subplot().plot([0, 1], [1, 0])
        state.log_metrics({"third-party@score": 0.5, "confusion_matrix_stream/eval/test": torch.tensor(
            [[5.0, 1.0], [2.0, float("nan")]]), "custom note": "hello", "custom figure": figure})


def scalar(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return None


def by_name(values: list[tuple[int, str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, value)], in the order logged, for the scalars."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step, name, value in values:
        if (v := scalar(value)) is not None:
            out.setdefault(name, []).append((step, v))
    return out


def assert_histories(client: Any, run_id: str, expected: dict[str, list[tuple[int, float]]]) -> None:
    assert set(client.get_run(run_id).data.metrics) == {metric_key(n) for n in expected}
    for name, points in expected.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric_key(name)))
        points = sorted(points)
        assert [s for s, _ in got] == [s for s, _ in points], name
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-12), name


def artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def make_strategy(blobs: Any, *plugins: Any) -> clkernel.Strategy:
    model = blobs.make_model(dim=8, num_classes=6)
    return clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=list(plugins),
                             train_mb_size=32, device="cpu", generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("options, message", [
    ({"experiment": ""}, "mlflow: experiment must be a non-empty string"),
    ({"run_name": 3}, "mlflow: run_name must be a non-empty string"),
    ({"run_id": "a/b"}, "mlflow: run_id must be an MLflow run id"),
    ({"tracking_uri": ""}, "mlflow: tracking_uri must be a tracking URI"),
    ({"tracking_uri": 5}, "mlflow: tracking_uri must be a tracking URI"),
    ({"config": ["lr", 0.1]}, "mlflow: config must be a mapping"),
    ({"artifacts": "yes"}, "mlflow: artifacts must be True or False"),
])
def test_bad_options_are_refused_when_built_naming_the_option(no_network, tmp_path, options, message):
    with pytest.raises(ValueError) as error:
        MlflowLogger(tmp_path, **options)
    assert str(error.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_stores_that_cannot_be_used_are_refused_and_nothing_is_created(no_network, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for uri in (f"file:{blocker}/mlruns", str(blocker / "mlruns"), blocker.as_uri()):
        with pytest.raises(ValueError, match=r"^mlflow: tracking_uri '.*a-file.*' cannot be a folder: '.*a-file' "
                                             r"is a file"):
            MlflowLogger(tmp_path, tracking_uri=uri)
    with pytest.raises(ValueError, match=r"^mlflow: run_dir '.*a-file' cannot be a folder"):
        MlflowLogger(blocker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_the_tracking_uri_defaults_to_a_file_store_in_the_run_folder(no_network, tmp_path, monkeypatch):
    assert MlflowLogger(tmp_path / "run").tracking_uri == (tmp_path / "run" / "mlruns").as_uri()
    assert MlflowLogger(tmp_path, tracking_uri=str(tmp_path / "s")).tracking_uri == (tmp_path / "s").as_uri()
    assert MlflowLogger(tmp_path, tracking_uri="http://127.0.0.1:5000").tracking_uri == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    logger = MlflowLogger(tmp_path / "run")
    assert logger.tracking_uri == "http://127.0.0.1:5001" and logger.run_name == "run"
    assert list(tmp_path.iterdir()) == []


def test_params_and_keys():
    config = {"lr": 0.1, "seed": 0, "resume": False, "model": {"name": "mlp", "hidden": 32}, "plugin": ["ewc"],
              "output": Path("/tmp/run"), "device": None, "empty": {}}
    assert params_of(config) == {"lr": "0.1", "seed": "0", "resume": "False", "model.name": "mlp",
                                 "model.hidden": "32", "plugin": '["ewc"]', "output": "/tmp/run",
                                 "device": "None", "empty": "{}"}
    assert metric_key("acc_exp/eval/test/exp002") == "acc_exp/eval/test/exp002"
    assert metric_key("third-party@score") == "third-party_score"
    assert metric_key("/a//../b:c") == "a/_/b_c"


def test_registered_as_a_logger_with_its_options(no_network, tmp_path):
    registry = Registry()
    registry.add_module(registration, "mlflow")
    component = registry.get("logger", "mlflow")
    assert list(component.options()) == ["run_dir", "config", "tracking_uri", "experiment", "run_name", "run_id",
                                         "artifacts"]
    logger = registry.load("logger", "mlflow", run_dir=tmp_path, experiment="cl")
    assert isinstance(logger, MlflowLogger) and logger.experiment == "cl"
    with pytest.raises(ValueError, match="^mlflow: experiment must be"):
        registry.load("logger", "mlflow", run_dir=tmp_path, experiment="")


def test_state_dict_is_plain_and_checked():
    logger = MlflowLogger(run_id="0123abcd")
    buffer = io.BytesIO()
    torch.save(logger.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == {"run_id": "0123abcd"}
    fresh = MlflowLogger()
    assert fresh.state_dict() == {"run_id": None}
    fresh.load_state_dict({"run_id": "0123abcd"})
    assert fresh.state_dict() == {"run_id": "0123abcd"}
    fresh.load_state_dict({"run_id": None})  # a checkpoint from before the first value: a new MLflow run
    assert fresh.state_dict() == {"run_id": None}
    with pytest.raises(ValueError, match="mlflow: a state dict holds 'run_id'"):
        fresh.load_state_dict({"id": "x"})
    with pytest.raises(ValueError, match="mlflow: run_id must be"):
        fresh.load_state_dict({"run_id": "../x"})


def test_no_value_no_mlflow_run(no_network, tmp_path):
    """Ranks other than 0 receive no value: after_run finds nothing to end and nothing is written."""
    logger = MlflowLogger(tmp_path)
    state = SimpleNamespace(iteration=0, outcome="completed", error=None)
    logger.after_run(state)
    assert logger.output_files(state) == [] and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- MLflow runs


def test_continuing_a_run_that_is_not_in_the_store_names_it(no_network, tmp_path):
    logger = MlflowLogger(tmp_path)
    logger.load_state_dict({"run_id": "0123456789abcdef"})
    with pytest.raises(ValueError, match=r"mlflow: cannot continue run '0123456789abcdef': it is not in the "
                                         r"tracking store file://"):
        logger.log_metrics(SimpleNamespace(iteration=0), {"acc_stream/eval/test": 0.5})


def test_a_failed_run_ends_failed_with_its_error(no_network, store, blobs, tmp_path):
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the logger opts in for its own file store only
    benchmark = blobs.make_benchmark(num_exps=2)
    logger, recorder = MlflowLogger(tmp_path, artifacts=False), Recorder()
    strategy = make_strategy(blobs, clkernel.load("metric", "default"), recorder, logger,
                             Stop(1, RuntimeError("boom")))
    with pytest.raises(clkernel.PluginError):
        clkernel.run(strategy, benchmark)
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    (folder,) = strategy.close()
    assert folder.name == logger.run_id and folder.parent.parent == tmp_path / "mlruns"
    client = store(logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == STATUSES["failed"] == "FAILED"
    assert run.data.tags["clkernel.outcome"] == "failed" and "boom" in run.data.tags["clkernel.error"]
    assert run.info.run_name == tmp_path.name
    assert client.get_experiment(run.info.experiment_id).name == "clkernel"
    assert_histories(client, logger.run_id, by_name(recorder.values))
    assert artifact_paths(client, logger.run_id) == set()  # artifacts=False


def test_an_interrupted_run_resumes_in_the_same_mlflow_run(no_network, store, blobs, tmp_path, caplog):
    """Interrupted after two experiences (status KILLED), then a fresh logger that loads the first one's state
    continues the same MLflow run: one run holds every value of both, each at its iteration, the parameters,
    the run folder's files, the last matrices and figures, and ends FINISHED."""
    from clkernel_loggers import ReportLogger

    benchmark = blobs.make_benchmark(num_exps=3)
    config = {"lr": 0.1, "model": {"hidden": 32}, "output": tmp_path, "plugin": ["replay:mem_size=10"]}
    first, recorder = MlflowLogger(tmp_path, config=config, experiment="blobs"), Recorder()
    report = ReportLogger(tmp_path, config=config)
    strategy = make_strategy(blobs, clkernel.load("metric", "default"), Extras(), recorder, first, report,
                             Stop(2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        clkernel.run(strategy, benchmark)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # what a checkpoint holds
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved == {"run_id": first.run_id} and isinstance(saved["run_id"], str)
    client = store(first.tracking_uri)
    killed = client.get_run(saved["run_id"])
    assert killed.info.status == "KILLED" and killed.data.tags["clkernel.outcome"] == "interrupted"
    assert killed.data.tags["clkernel.error"] == "KeyboardInterrupt"
    assert_histories(client, saved["run_id"], by_name(recorder.values))

    changed = {**config, "lr": 0.05, "epochs": 2}  # MLflow parameters cannot change: lr is kept, epochs added
    second, recorder2 = MlflowLogger(tmp_path, config=changed, experiment="blobs"), Recorder()
    second.load_state_dict(saved)  # after construction, before the run starts
    resumed = make_strategy(blobs, clkernel.load("metric", "default"), recorder2, second)
    resumed.state.iteration = strategy.state.iteration  # as a checkpoint restores the counters
    with caplog.at_level(logging.WARNING, logger="clkernel.mlflow"):
        resumed.train(benchmark.streams["train"][2:], eval_streams=[benchmark.streams["test"]])
    assert "mlflow_params_kept" in caplog.text and "lr" in caplog.text
    assert resumed.close() == [tmp_path / "mlruns" / killed.info.experiment_id / saved["run_id"]]
    assert second.state_dict() == saved

    runs = client.search_runs([killed.info.experiment_id])
    assert [r.info.run_id for r in runs] == [saved["run_id"]]  # one MLflow run for both
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["clkernel.outcome"] == "completed"
    assert run.data.params == {"lr": "0.1", "model.hidden": "32", "output": str(tmp_path),
                               "plugin": '["replay:mem_size=10"]', "epochs": "2"}
    assert_histories(client, run.info.run_id, by_name(recorder.values + recorder2.values))
    assert run.data.metrics["third-party_score"] == 0.5 and run.data.tags["custom note"] == "hello"

    artifacts = artifact_paths(client, run.info.run_id)
    assert {"results.json", "accuracy_matrix_test.png", "accuracy_curves_test.png"} <= artifacts  # the report's
    assert not any(p.startswith("mlruns") for p in artifacts)  # the store inside the run folder is not uploaded
    local = Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / "download")))
    assert json.loads(local.read_text())["status"] == "interrupted"  # the first run's upload: run 2 has no report
    # the matrices of the first run were uploaded at its end; the second run's accuracy matrix at its end
    matrix = [v for _, name, v in recorder2.values if name == "accuracy_matrix_stream/eval/test"][-1]
    document = client.download_artifacts(run.info.run_id, "matrices/accuracy_matrix_stream_eval_test.json",
                                         str(tmp_path / "download"))
    data = json.loads(Path(document).read_text())
    assert data["rows"] == "after training experience i"
    assert data["data"] == [[None if math.isnan(v) else v for v in row] for row in matrix.tolist()]
    confusion = json.loads(Path(client.download_artifacts(
        run.info.run_id, "matrices/confusion_matrix_stream_eval_test.json", str(tmp_path / "download"))).read_text())
    assert confusion == {"name": "confusion_matrix_stream/eval/test", "data": [[5.0, 1.0], [2.0, None]]}
    assert "figures/custom_figure.png" in artifacts


def test_clkernel_run_records_metrics_params_and_the_run_folder(no_network, store, clkernel_run, tmp_path):
    """The command line: run folder, configuration and the other loggers' files come from `clkernel run`."""
    out = tmp_path / "run"
    code, stdout, stderr = clkernel_run("--benchmark", "split-digits:n_experiences=2", "--model",
                                        "simple-mlp:hidden_size=16", "--mb-size", "64", "--logger", "report",
                                        "--logger", "jsonl", "--logger", "mlflow:experiment=digits",
                                        "--output", str(out))
    assert code == 0, stderr[-3000:]
    client = store((out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert str(out / "mlruns" / experiment.experiment_id / run.info.run_id) in stdout

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert_histories(client, run.info.run_id, by_name(
        [(row["step"], row["name"], row["value"]) for row in logged if isinstance(row["value"], (int, float))]))

    report = json.loads((out / "results.json").read_text())
    assert run.data.params == params_of(report["config"])
    assert run.data.params["benchmark"] == "split-digits:n_experiences=2" and run.data.params["lr"] == "0.01"

    artifacts = artifact_paths(client, run.info.run_id)
    expected = {"results.json", "metrics.jsonl", "events.jsonl", "accuracy_matrix_test.png",
                "accuracy_curves_test.png", "matrices/accuracy_matrix_stream_eval_test.json"}
    assert expected <= artifacts and not any(p.startswith("mlruns") for p in artifacts)
    uploaded = client.download_artifacts(run.info.run_id, "accuracy_matrix_test.png", str(tmp_path / "download"))
    assert Path(uploaded).read_bytes() == (out / "accuracy_matrix_test.png").read_bytes()
