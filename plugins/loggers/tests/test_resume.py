"""Checkpoint and resume with every logger and the default metrics, on real files, through the kernel.

Run A trains a blobs stream uninterrupted, with every logger and the default metrics, and the kernel's
``Checkpointer`` writing a checkpoint every 3 training iterations and at each experience's end (before its
evaluation): each checkpoint holds every plugin's ``state_dict()``. Run A writes on to the end, as a run killed
after a checkpoint would have written rows after it.

Each resumed run B starts from a copy of run A's folder: fresh plugins built on that folder, a fresh strategy,
``clkernel.run(..., resume_from=checkpoint)`` (the kernel loads every plugin's state, fires ``before_run`` and goes
on from the checkpoint's position). Its files must then equal run A's: CSV, JSONL and text byte for byte except the
wall-clock fields, results.json and the PNGs, TensorBoard tags with each step once and the same values, the metric
history bit for bit, and the lines the interactive logger prints after the checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import clkernel

from clkernel_loggers import (
    CSVLogger, InteractiveLogger, JSONLLogger, LoggerResumeError, ReportLogger, TensorBoardLogger, TextLogger,
)

metrics = pytest.importorskip("clkernel_metrics", reason="the resume test runs the default metrics")
if not hasattr(clkernel, "Checkpointer"):
    pytest.skip("this clkernel has no checkpoints", allow_module_level=True)

N_EXPS, EPOCHS, MB, RUNNING_EVERY = 2, 2, 16, 4  # blobs: 80 training samples per experience, 5 iterations an epoch
CHECKPOINTS = {  # the checkpoints resumed from: position -> what it tests
    "iteration 3": "inside the first epoch: three minibatches buffered by the metrics, no running value yet",
    "trained 1": "experience 0 trained, before its evaluation: its values follow at the step of the last ones",
    "iteration 15": "the last iteration of an epoch, before its epoch values",
    "trained 2": "the last experience trained, before the last evaluation and the end of the run",
}


def _roundtrip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class Mark:
    """Records how much the interactive logger had printed at each checkpoint position: after a training
    iteration (the last plugin; no logger marks that event ``trylast``), and at the end of an experience (first at
    the evaluation that follows it, after every ``trylast`` implementation of ``after_training_exp``)."""

    name = "mark"

    def __init__(self, out: io.StringIO) -> None:
        self.out, self.printed = out, {}

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        self.printed[f"iteration {state.iteration}"] = len(self.out.getvalue())

    @clkernel.hookimpl(tryfirst=True)
    def before_eval(self, state: Any) -> None:
        self.printed.setdefault(f"trained {state.experiences_trained}", len(self.out.getvalue()))


def _plugins(run_dir: Path, out: io.StringIO) -> list[Any]:
    return [metrics.default_evaluator(running_every=RUNNING_EVERY), TextLogger(run_dir), CSVLogger(run_dir),
            JSONLLogger(run_dir), TensorBoardLogger(run_dir, config={"seed": 0, "model": "mlp"}),
            ReportLogger(run_dir, config={"seed": 0}, dpi=30),
            InteractiveLogger(file=out, bars=False, run_dir="RUN"), Mark(out)]


def _strategy(blobs: Any, plugins: list[Any], checkpoints: Path | None = None) -> Any:
    model = blobs.make_model(num_classes=2 * N_EXPS)
    checkpoint = clkernel.Checkpointer(checkpoints, every=3, keep=100) if checkpoints is not None else None
    return clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                             plugins=plugins, train_mb_size=MB, train_epochs=EPOCHS, device="cpu",
                             generator=torch.Generator().manual_seed(0), checkpoint=checkpoint)


def _benchmark(blobs: Any) -> Any:
    return blobs.make_benchmark(num_exps=N_EXPS, classes_per_exp=2, per_class=40)


_RUN_A: dict[str, Any] = {}


@pytest.fixture
def run_a(blobs: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run A, uninterrupted, with its checkpoints (run once per module)."""
    import types

    if "run" in _RUN_A:
        return _RUN_A["run"]
    folder, checkpoints = tmp_path_factory.mktemp("run-a"), tmp_path_factory.mktemp("checkpoints")
    out = io.StringIO()
    plugins = _plugins(folder, out)
    clkernel.run(_strategy(blobs, plugins, checkpoints), _benchmark(blobs))
    files = {}
    for path in clkernel.checkpoint.checkpoint_files(checkpoints):
        header, _ = clkernel.read_checkpoint(path)
        position = header["position"]
        label = (f"iteration {header['iteration']}" if position["stage"] == "train"
                 else f"trained {position['experience']}")
        files[label] = path
    assert set(CHECKPOINTS) <= set(files), sorted(files)
    _RUN_A["run"] = types.SimpleNamespace(blobs=blobs, folder=folder, out=out.getvalue(), files=files,
                                          printed=plugins[-1].printed, history=plugins[0].all_metrics())
    return _RUN_A["run"]


def _resume(run_a: Any, label: str, folder: Path) -> Any:
    """Run B in ``folder`` (a copy of run A's), resumed from the checkpoint at ``label``."""
    import types

    shutil.copytree(run_a.folder, folder)
    _wait_for_next_second(folder / "tensorboard")
    out = io.StringIO()
    plugins = _plugins(folder, out)
    clkernel.run(_strategy(run_a.blobs, plugins), _benchmark(run_a.blobs), resume_from=run_a.files[label])
    return types.SimpleNamespace(out=out.getvalue(), history=plugins[0].all_metrics())


def _wait_for_next_second(tb: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and names start with the creation second: a
    resumed writer's file must not be created in the second of the interrupted run's (names could then sort by
    a counter, as text). A resumed run starts seconds later; this test may not."""
    stamps = [int(p.name.split(".")[3]) for p in tb.glob("events.out.tfevents.*")]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- comparisons

def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.parent.name != "tensorboard"}


def _csv_without_wall_time(path: Path) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    with open(path, newline="") as f:
        for row in csv.reader(f):
            writer.writerow([row[0], "T" if row[1] != "wall_time" else row[1], *row[2:]])
    return out.getvalue()


def _jsonl_without_wall_time(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [re.sub(r'"wall_time": [0-9.e+-]+', '"wall_time": T', line) for line in lines]


def _text_without_stamps(path: Path) -> str:
    return re.sub(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]", "[T]", path.read_text(), flags=re.M)


def _without_durations(text: str) -> str:
    return re.sub(r"\d+(\.\d+)? s\b|\d+ min \d+ s|\d+ h \d+ min \d+ s", "T", text)


def _tensorboard(folder: Path) -> dict[str, Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    return {"scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
            "images": {t: [(e.step, e.width, e.height) for e in acc.Images(t)] for t in tags["images"]},
            "tensors": {t: [(e.step, e.tensor_proto.SerializeToString()) for e in acc.Tensors(t)]
                        for t in tags["tensors"] if not t.startswith("_hparams_")},
            "hparams": sorted(acc.PluginTagToContent("hparams").items())}


def _same_history(a: dict[str, list[tuple[int, Any]]], b: dict[str, list[tuple[int, Any]]]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert [s for s, _ in a[name]] == [s for s, _ in b[name]], name
        for (_, x), (_, y) in zip(a[name], b[name]):
            if isinstance(x, torch.Tensor):
                torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)  # bit for bit
            else:
                assert x == y or (math.isnan(x) and math.isnan(y)), name


@pytest.mark.parametrize("label", list(CHECKPOINTS))
def test_a_resumed_run_writes_what_the_uninterrupted_run_wrote(run_a, tmp_path, label):
    folder = tmp_path / "run"
    b = _resume(run_a, label, folder)

    assert _files(folder) == _files(run_a.folder)
    for name in ("metrics_train.csv", "metrics_eval.csv"):
        assert _csv_without_wall_time(folder / name) == _csv_without_wall_time(run_a.folder / name), name
    assert _jsonl_without_wall_time(folder / "metrics.jsonl") == _jsonl_without_wall_time(
        run_a.folder / "metrics.jsonl")
    assert _text_without_stamps(folder / "log.txt") == _text_without_stamps(run_a.folder / "log.txt")
    results, expected = (json.loads((f / "results.json").read_text()) for f in (folder, run_a.folder))
    assert results.pop("updated") and expected.pop("updated")
    assert results == expected and results["status"] == "completed"
    for png in sorted(run_a.folder.glob("*.png")):
        assert (folder / png.name).read_bytes() == png.read_bytes(), png.name

    resumed, uninterrupted = _tensorboard(folder / "tensorboard"), _tensorboard(run_a.folder / "tensorboard")
    assert resumed == uninterrupted  # each tag's steps once, the same values, the config text once, hparams
    assert "acc_running_epoch/train/train" in resumed["scalars"] and "config/text_summary" in resumed["tensors"]
    # the interrupted run's event file, cut back (removed when the checkpoint came before its first value), and
    # the resumed run's
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == (1 if label == "iteration 3" else 2)

    _same_history(b.history, run_a.history)  # the metrics, bit for bit
    # the lines the interactive logger printed after the checkpoint, and its summary
    assert _without_durations(b.out) == _without_durations(run_a.out[run_a.printed[label]:])
    assert f"== results after {N_EXPS} trained experience(s)" in b.out


def test_a_damaged_run_folder_stops_the_resume_naming_the_file(run_a, tmp_path):
    """The kernel reports a logger's refusal as a bad checkpoint, and nothing changes: neither the files nor the
    strategy (it can still train from the start)."""
    folder = tmp_path / "run"
    shutil.copytree(run_a.folder, folder)
    os.truncate(folder / "metrics_train.csv", 100)
    before = _snapshot(folder)
    strategy = _strategy(run_a.blobs, _plugins(folder, io.StringIO()))
    with pytest.raises(clkernel.CheckpointError, match=re.escape(
            f"the csv logger cannot resume: {str(folder / 'metrics_train.csv')!r} holds 100 bytes")):
        clkernel.load_checkpoint(run_a.files["iteration 15"], strategy)
    assert _snapshot(folder) == before


# ---------------------------------------------------------------------------------------------- files, one by one

def _state() -> Any:
    return clkernel.TrainState(model=torch.nn.Linear(1, 1), optimizer=None, criterion=None,  # type: ignore[arg-type]
                               device=torch.device("cpu"), train_mb_size=1, train_epochs=1, eval_mb_size=1)


def _log(logger: Any, state: Any, steps: range) -> None:
    for step in steps:
        state.iteration = step
        logger.log_metrics(state, {"loss_epoch/train/train": 1.0 / step, "acc_exp/eval/test/exp000": step / 100})
    getattr(logger, "flush", lambda: None)()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


LOGGERS = {"csv": (CSVLogger, "metrics_eval.csv"), "jsonl": (JSONLLogger, "metrics.jsonl"),
           "text": (TextLogger, "log.txt"), "tensorboard": (TensorBoardLogger, None)}


def _path(folder: Path, kind: str) -> Path:
    name = LOGGERS[kind][1]
    return folder / name if name else next((folder / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("kind", list(LOGGERS))
def test_resuming_cuts_the_files_back_when_the_run_starts_not_before(kind, tmp_path):
    make, state = LOGGERS[kind][0], _state()
    logger = make(tmp_path)
    _log(logger, state, range(1, 4))
    checkpoint = _roundtrip(logger.state_dict())
    at_checkpoint = _snapshot(tmp_path)
    _log(logger, state, range(4, 7))  # rows after the checkpoint: a run killed later
    logger.after_run(state)
    before = _snapshot(tmp_path)
    assert before != at_checkpoint

    fresh = make(tmp_path)  # building and loading change nothing on disk
    fresh.load_state_dict(checkpoint)
    assert _snapshot(tmp_path) == before
    assert fresh.state_dict() == checkpoint  # loaded, not started: still the checkpoint
    fresh.before_run(state)
    assert _snapshot(tmp_path) == at_checkpoint  # cut back: the rows written after the checkpoint are gone
    _log(fresh, state, range(4, 7))
    fresh.after_run(state)
    if kind == "csv":
        assert (tmp_path / "metrics_eval.csv").read_text().count("step,wall_time") == 1  # no second header
        rows = list(csv.DictReader(open(tmp_path / "metrics_eval.csv", newline="")))
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    elif kind == "tensorboard":
        assert _tensorboard(tmp_path / "tensorboard")["scalars"]["loss_epoch/train/train"] == [
            (s, pytest.approx(1.0 / s)) for s in range(1, 7)]


def test_files_created_after_the_checkpoint_are_removed(tmp_path):
    state = _state()
    loggers = [CSVLogger(tmp_path), TensorBoardLogger(tmp_path)]
    for logger in loggers:
        _log(logger, state, range(1, 3))
    checkpoint = _roundtrip([lg.state_dict() for lg in loggers])
    at_checkpoint = _snapshot(tmp_path)
    for logger in loggers:
        logger.log_metrics(state, {"throughput": 3.0})  # a name outside the scheme: metrics_other.csv
        logger.after_run(state)
        logger.log_metrics(state, {"acc_stream/eval/test": 0.5})  # after after_run: a second event file
        logger.after_run(state)
    assert (tmp_path / "metrics_other.csv").exists() and len(list((tmp_path / "tensorboard").iterdir())) == 2
    fresh = [CSVLogger(tmp_path), TensorBoardLogger(tmp_path)]
    for logger, saved in zip(fresh, checkpoint):
        logger.load_state_dict(saved)
        logger.before_run(state)
    assert _snapshot(tmp_path) == at_checkpoint


@pytest.mark.parametrize("damage", ["missing", "shorter", "changed"])
@pytest.mark.parametrize("kind", list(LOGGERS))
def test_a_file_that_lost_data_stops_the_resume_naming_it(kind, damage, tmp_path):
    make, state = LOGGERS[kind][0], _state()
    logger = make(tmp_path)
    _log(logger, state, range(1, 4))
    checkpoint = _roundtrip(logger.state_dict())
    logger.after_run(state)
    path = _path(tmp_path, kind)
    size = checkpoint["files"][path.name]["size"]  # TensorBoard wrote hparams since
    if damage == "missing":
        path.unlink()
    elif damage == "shorter":
        os.truncate(path, size - 1)
    else:  # the same size, one byte different
        data = bytearray(path.read_bytes())
        data[size - 2] ^= 0x01
        path.write_bytes(bytes(data))
    before = _snapshot(tmp_path)
    fresh = make(tmp_path)
    words = {"missing": "is missing", "shorter": f"holds {size - 1} bytes, the checkpoint recorded {size}",
             "changed": "does not hold what it held at the checkpoint"}[damage]
    with pytest.raises(LoggerResumeError, match=re.escape(f"{str(path)!r} {words}")):
        fresh.load_state_dict(checkpoint)
    assert _snapshot(tmp_path) == before  # nothing changed


@pytest.mark.parametrize("make", [CSVLogger, JSONLLogger, TextLogger, TensorBoardLogger, ReportLogger,
                                  lambda p: InteractiveLogger(file=io.StringIO())],
                         ids=["csv", "jsonl", "text", "tensorboard", "report", "interactive"])
def test_a_state_that_is_not_the_loggers_is_refused(make, tmp_path):
    logger = make(tmp_path)
    good = logger.state_dict()
    for bad, says in [({"logger": "other"}, "cannot resume from this state"),
                      ({**good, "format": 99}, "format 99"), ([], "cannot resume from this state")]:
        with pytest.raises(LoggerResumeError, match=says):
            logger.load_state_dict(bad)
    logger.load_state_dict(good)  # its own state loads
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # and nothing was written


def test_a_state_naming_another_file_is_refused(tmp_path):
    logger = JSONLLogger(tmp_path, filename="a.jsonl")
    _log(logger, _state(), range(1, 2))
    checkpoint = logger.state_dict()
    with pytest.raises(LoggerResumeError, match="it names the file 'a.jsonl', but this logger writes 'b.jsonl'"):
        JSONLLogger(tmp_path, filename="b.jsonl").load_state_dict(checkpoint)


def test_the_report_rebuilds_figures_from_its_state(tmp_path):
    """A figure a metric logged is kept in the report's state as PNG bytes (a figure is not a plain container):
    the resumed report writes it again, byte for byte."""
    from clkernel_loggers.plots import matrix_figure

    state, report = _state(), ReportLogger(tmp_path, dpi=20)
    report.log_metrics(state, {"my_figure/eval/test": matrix_figure([[1.0, 0.0], [0.5, 0.5]], "m", dpi=20)})
    report.after_eval(state)
    png = (tmp_path / "my_figure_eval_test.png").read_bytes()
    checkpoint = _roundtrip(report.state_dict())
    (tmp_path / "my_figure_eval_test.png").unlink()
    fresh = ReportLogger(tmp_path, dpi=20)
    fresh.load_state_dict(checkpoint)
    fresh.before_run(state)
    assert (tmp_path / "my_figure_eval_test.png").read_bytes() == png
    assert json.loads((tmp_path / "results.json").read_text())["files"] == ["results.json", "my_figure_eval_test.png"]
