"""The wandb logger in W&B's offline mode, checked by reading back the run files W&B writes (conftest.read_run).

What was logged is recorded independently, by a recording plugin (Python runs) or the jsonl logger and the report
(``clkernel run``), and compared with what the W&B files hold. Five W&B runs in all (W&B's start-up is the cost).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from clkernel_wandb import EXIT_CODES, STEP_METRIC, WandbLogger, registration

import clkernel
from clkernel.discovery import Registry

FAST = ["--benchmark", "split-digits:n_experiences=2", "--model", "simple-mlp:hidden_size=16",
        "--mb-size", "64"]  # a short `clkernel run`
W_AND_B_KEYS = {"_step", "_runtime", "_timestamp", STEP_METRIC}


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
    """After each evaluation: a 2-D tensor outside the accuracy matrix, a string, and a matplotlib figure."""

    name = "extras"

    @clkernel.hookimpl
    def after_eval(self, state: Any) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        figure = Figure(figsize=(2, 2), dpi=50)
        figure.add_subplot().plot([0, 1], [1, 0])
        state.log_metrics({"confusion_matrix_stream/eval/test": torch.tensor([[5.0, 1.0], [2.0, float("nan")]]),
                           "custom note": "hello", "custom figure": figure})


def scalar(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return None


def expected_scalars(values: list[tuple[int, str, Any]]) -> list[tuple[int, str, float]]:
    return sorted((step, name, v) for step, name, value in values if (v := scalar(value)) is not None)


def logged_scalars(history: list[dict[str, Any]]) -> list[tuple[int, str, float]]:
    return sorted((row[STEP_METRIC], k, float(v)) for row in history for k, v in row.items()
                  if k not in W_AND_B_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool))


def assert_same_scalars(got: list[tuple[int, str, float]], expected: list[tuple[int, str, float]]) -> None:
    assert [(s, n) for s, n, _ in got] == [(s, n) for s, n, _ in expected]
    assert [v for _, _, v in got] == pytest.approx([v for _, _, v in expected], rel=1e-12)


def table(run: SimpleNamespace, row: dict[str, Any], key: str) -> dict[str, Any]:
    cell = row[key]
    assert cell["_type"] == "table-file"
    return json.loads((run.files / cell["path"]).read_text())


def cells(matrix: Any) -> list[list[Any]]:
    return [[None if math.isnan(v) else v for v in row] for row in matrix.tolist()]


def make_strategy(blobs: Any, *plugins: Any) -> clkernel.Strategy:
    model = blobs.make_model(dim=8, num_classes=6)
    return clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=list(plugins),
                             train_mb_size=32, device="cpu", generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("options, message", [
    ({"mode": "onlin"}, "wandb: mode must be one of online, offline, disabled"),
    ({"mode": "ONLINE"}, "wandb: mode must be one of"),
    ({"project": ""}, "wandb: project must be a non-empty string"),
    ({"project": "a/b"}, "wandb: project must be at most 128 characters, none of"),
    ({"run_id": "x?y"}, "wandb: run_id must be"),
    ({"entity": 3}, "wandb: entity must be a non-empty string"),
    ({"tags": "ok;" + "t" * 65}, "wandb: tags must be tags of at most 64 characters"),
    ({"tags": [1, 2]}, "wandb: tags must be a list of strings"),
    ({"config": ["lr", 0.1]}, "wandb: config must be a mapping"),
    ({"log_plots": "yes"}, "wandb: log_plots must be True or False"),
])
def test_bad_options_are_refused_when_built_naming_the_option(tmp_path, options, message):
    with pytest.raises(ValueError) as error:
        WandbLogger(tmp_path, **options)
    assert str(error.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_folders_that_cannot_be_used_are_refused_and_nothing_is_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"^wandb: dir '.*a-file/sub' cannot be a folder: '.*a-file' is a file"):
        WandbLogger(tmp_path, dir=blocker / "sub")
    with pytest.raises(ValueError, match=r"^wandb: run_dir '.*a-file' cannot be a folder"):
        WandbLogger(blocker)
    with pytest.raises(ValueError, match=r"^wandb: dir must be a folder path, got ''"):
        WandbLogger(tmp_path, dir="")
    logger = WandbLogger(tmp_path / "not" / "yet", tags="a; b,c")  # created when the run starts, not now
    assert logger.tags == ("a", "b", "c") and logger.run_name == "yet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_registered_as_a_logger_with_its_options(tmp_path):
    registry = Registry()
    registry.add_module(registration, "wandb")
    component = registry.get("logger", "wandb")
    assert list(component.options()) == ["run_dir", "config", "project", "entity", "mode", "name", "tags", "group",
                                         "dir", "run_id", "log_plots"]
    logger = registry.load("logger", "wandb", run_dir=tmp_path, mode="offline", tags=["x"])
    assert isinstance(logger, WandbLogger) and logger.mode == "offline" and logger.tags == ("x",)
    with pytest.raises(ValueError, match="^wandb: mode must be"):
        registry.load("logger", "wandb", run_dir=tmp_path, mode="off")


def test_state_dict_is_plain_and_checked():
    logger = WandbLogger(run_id="abc123")
    buffer = io.BytesIO()
    torch.save(logger.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == {"run_id": "abc123"}
    fresh = WandbLogger()
    assert fresh.state_dict() == {"run_id": None}
    fresh.load_state_dict({"run_id": "abc123"})
    assert fresh.state_dict() == {"run_id": "abc123"}
    fresh.load_state_dict({"run_id": None})  # a checkpoint from before the first value: a new W&B run
    assert fresh.state_dict() == {"run_id": None}
    with pytest.raises(ValueError, match="wandb: a state dict holds 'run_id'"):
        fresh.load_state_dict({"id": "x"})
    with pytest.raises(ValueError, match="wandb: run_id must be"):
        fresh.load_state_dict({"run_id": "a/b"})


def test_no_value_no_wandb_run(tmp_path):
    """Ranks other than 0 receive no value: after_run finds nothing to finish and nothing is written."""
    logger = WandbLogger(tmp_path, mode="offline")
    state = SimpleNamespace(iteration=0, outcome="completed", error=None)
    logger.after_run(state)
    assert logger.output_files(state) == [] and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- W&B runs


def test_disabled_mode_writes_nothing_and_refuses_a_late_checkpoint(offline, tmp_path):
    logger = WandbLogger(tmp_path / "run", mode="disabled")
    state = SimpleNamespace(iteration=4, outcome="completed", error=None)
    logger.log_metrics(state, {"acc_stream/eval/test": 0.5})
    assert isinstance(logger.run_id, str) and logger.state_dict() == {"run_id": logger.run_id}
    with pytest.raises(RuntimeError, match="load_state_dict must be called before the run starts"):
        logger.load_state_dict({"run_id": "other"})
    logger.after_run(state)
    assert logger.run is None and logger.output_files(state) == []
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


def test_a_failed_run_finishes_with_exit_code_1_and_its_error(offline, wandb_files, blobs, tmp_path):
    benchmark = blobs.make_benchmark(num_exps=3)
    logger = WandbLogger(tmp_path)
    strategy = make_strategy(blobs, clkernel.load("metric", "default"), logger, Stop(1, RuntimeError("boom")))
    with pytest.raises(clkernel.PluginError):
        clkernel.run(strategy, benchmark)
    (folder,) = strategy.close()
    assert folder.parent == tmp_path / "wandb" and folder.name.startswith("offline-run-")
    run = wandb_files.read_run(folder)
    assert run.exit_code == EXIT_CODES["failed"] == 1
    assert run.summary["outcome"] == "failed" and "boom" in run.summary["error"]
    assert run.run.display_name == tmp_path.name and run.run.project == "clkernel"


def test_an_interrupted_run_resumes_in_the_same_wandb_run(offline, wandb_files, blobs, tmp_path):
    """Interrupted after two experiences (exit code 255), then a fresh logger that loads the first one's state
    continues the same W&B run: both files carry the run id, the second says it resumes, and between them they
    hold every value both runs logged, each at its iteration."""
    benchmark = blobs.make_benchmark(num_exps=3)
    config = {"lr": 0.1, "model": {"hidden": 32}, "output": tmp_path, "plugins": ["replay:mem_size=10"]}
    first, recorder = WandbLogger(tmp_path, config=config, tags="cl;test", name="blobs", group="g"), Recorder()
    strategy = make_strategy(blobs, clkernel.load("metric", "default"), Extras(), recorder, first,
                             Stop(2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        clkernel.run(strategy, benchmark)
    (first_folder,) = strategy.close()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # what a checkpoint holds
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved == {"run_id": first.run_id} and isinstance(saved["run_id"], str)

    second, recorder2 = WandbLogger(tmp_path, config=config, tags="cl;test", name="blobs", group="g"), Recorder()
    second.load_state_dict(saved)  # after construction, before the run starts
    resumed = make_strategy(blobs, clkernel.load("metric", "default"), recorder2, second)
    resumed.state.iteration = strategy.state.iteration  # as a checkpoint restores the counters
    resumed.train(benchmark.streams["train"][2:], eval_streams=[benchmark.streams["test"]])
    (second_folder,) = resumed.close()
    assert second_folder != first_folder and second.state_dict() == saved

    a, b = wandb_files.read_run(first_folder), wandb_files.read_run(second_folder)
    assert a.run.run_id == b.run.run_id == saved["run_id"]
    assert not a.run.resume and b.run.resume
    assert (a.exit_code, b.exit_code) == (255, 0)
    assert a.summary["outcome"] == "interrupted" and a.summary["error"] == "KeyboardInterrupt"
    assert b.summary["outcome"] == "completed" and b.summary["error"] is None
    assert a.config == b.config == {"lr": 0.1, "model": {"hidden": 32}, "output": str(tmp_path),
                                    "plugins": ["replay:mem_size=10"]}
    assert list(a.run.tags) == ["cl", "test"] and a.run.display_name == "blobs" and a.run.run_group == "g"

    assert_same_scalars(logged_scalars(a.history), expected_scalars(recorder.values))
    assert_same_scalars(logged_scalars(b.history), expected_scalars(recorder2.values))
    assert min(row[STEP_METRIC] for row in b.history) >= max(row[STEP_METRIC] for row in a.history)

    # the accuracy matrix of each evaluation, as a table: row i = after training experience i
    matrices = [v for _, name, v in recorder2.values if name == "accuracy_matrix_stream/eval/test"]
    tables = [table(b, row, "accuracy_matrix_stream/eval/test") for row in b.history
              if "accuracy_matrix_stream/eval/test" in row]
    assert len(tables) == len(matrices) == 1
    for t, m in zip(tables, matrices):
        assert t["columns"] == ["trained experience", *(f"exp{j:03d}" for j in range(m.shape[1]))]
        assert t["data"] == [[i, *row] for i, row in enumerate(cells(m))]
    assert tables[0]["data"][0][1] is None  # rows before the resumed run are not in its matrix: empty cells

    # the extras: another matrix as a plain table, a string, a figure as an image
    row = next(r for r in a.history if "confusion_matrix_stream/eval/test" in r)
    t = table(a, row, "confusion_matrix_stream/eval/test")
    assert t["columns"] == ["row", "0", "1"] and t["data"] == [[0, 5.0, 1.0], [1, 2.0, None]]
    assert row["custom note"] == "hello"
    image = row["custom figure"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (100, 100)
    assert (a.files / image["path"]).stat().st_size > 0


def test_clkernel_run_sends_metrics_config_accuracy_matrix_and_plots(offline, wandb_files, clkernel_run, tmp_path):
    """The command line: run folder, configuration and plots come from `clkernel run` and the report."""
    out = tmp_path / "run"
    code, stdout, stderr = clkernel_run(*FAST, "--logger", "report", "--logger", "jsonl",
                                        "--logger", "wandb:mode=offline,tags=cli;digits", "--output", str(out))
    assert code == 0, stderr[-3000:]
    (folder,) = (out / "wandb").glob("offline-run-*")
    assert str(folder) in stdout.splitlines()[-1]
    run = wandb_files.read_run(folder)
    assert run.exit_code == 0 and run.summary["outcome"] == "completed"
    assert run.run.display_name == "run" and list(run.run.tags) == ["cli", "digits"]

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert_same_scalars(logged_scalars(run.history), expected_scalars(
        [(row["step"], row["name"], row["value"]) for row in logged if isinstance(row["value"], (int, float))]))

    report = json.loads((out / "results.json").read_text())
    assert run.config == report["config"] and run.config["benchmark"] == "split-digits:n_experiences=2"
    last = [row for row in run.history if "accuracy_matrix_stream/eval/test" in row][-1]
    matrix = table(run, last, "accuracy_matrix_stream/eval/test")
    values = report["accuracy_matrix"]["test"]["values"]
    assert [row[0] for row in matrix["data"]] == list(range(len(values)))
    assert [v for row in matrix["data"] for v in row[1:]] == pytest.approx([v for row in values for v in row],
                                                                            rel=1e-12)

    plots = next(row for row in run.history if "plots/accuracy_matrix_test" in row)
    for name in ("accuracy_matrix_test", "accuracy_curves_test"):
        image = plots[f"plots/{name}"]
        assert image["_type"] == "image-file"
        assert (run.files / image["path"]).read_bytes() == (out / f"{name}.png").read_bytes()
    assert plots[STEP_METRIC] == max(row["step"] for row in logged)


def test_clkernel_run_refuses_a_bad_option_in_one_line_and_creates_nothing(offline, clkernel_run, tmp_path):
    (tmp_path / "f").write_text("")
    out = tmp_path / "run"
    code, _, stderr = clkernel_run(*FAST, "--logger", f"wandb:dir={tmp_path / 'f' / 'x'}", "--output", str(out))
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "wandb: dir" in lines[0] and "is a file" in lines[0], stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_output_files_are_the_wandb_run_folders(offline, tmp_path):
    """Values after after_run continue the same W&B run in a new local folder (as a resumed run)."""
    logger = WandbLogger(tmp_path)
    state = SimpleNamespace(iteration=1, outcome="completed", error=None)
    logger.log_metrics(state, {"acc_stream/eval/test": 0.25})
    logger.after_run(state)
    run_id = logger.run_id
    state.iteration = 2
    logger.log_metrics(state, {"acc_stream/eval/test": 0.5})
    logger.after_run(state)
    folders = logger.output_files(state)
    assert len(folders) == 2 and all(Path(f).parent == tmp_path / "wandb" for f in folders)
    assert logger.run_id == run_id
