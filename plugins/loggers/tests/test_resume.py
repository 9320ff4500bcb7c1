"""Checkpoint and resume with every logger and the default metrics, on real files.

Run A trains a blobs stream uninterrupted, with every logger and the default metrics; a last plugin takes every
plugin's ``state_dict()`` (through ``torch.save`` / ``torch.load(weights_only=True)``) at several points: inside an
epoch, at the last iteration of an epoch, at the end of a training experience, after the evaluation that follows
one. Run A then writes on to the end, as a run killed later would have written rows after each checkpoint.

Each resumed run B starts from a copy of run A's folder and does what the kernel does on resume: the same
training (seeded: the same model, optimizer and loop state at every point), with fresh plugins built on the same
folder at the checkpoint, each loading its state, then ``before_run``, then the loop goes on from there (before
that point B's plugin slots are empty: the kernel restores model, optimizer and counters, it does not replay).
Its files must then equal run A's: CSV, JSONL and text byte for byte except the wall-clock fields, results.json
and the PNGs, TensorBoard tags with each step once and the same values, the metric history bit for bit, and what
the interactive logger prints after the checkpoint.
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
from typing import Any, Callable

import pytest
import torch

import clkernel
from clkernel.hookspecs import SPEC

from clkernel_loggers import (
    CSVLogger, InteractiveLogger, JSONLLogger, LoggerResumeError, ReportLogger, TensorBoardLogger, TextLogger,
)

metrics = pytest.importorskip("clkernel_metrics", reason="the resume test runs the default metrics")

N_EXPS, EPOCHS, MB, RUNNING_EVERY = 2, 2, 16, 4  # blobs: 80 training samples per experience, 5 iterations an epoch
POINTS = {  # label -> where run A takes the states
    "mid-epoch": "iteration 13",  # experience 1, epoch 0, 3 of 5 iterations done; one minibatch buffered
    "epoch-end": "iteration 20",  # the last iteration of the stream: running values were logged at this step,
    # its epoch, experience and evaluation values follow at the same step (TensorBoard's purge_step cannot tell)
    "experience-end": "trained 1",  # after_training_exp of experience 0, before its evaluation
    "after-eval": "evaluated 1",  # after the evaluation that follows experience 0
}


def _roundtrip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _forward(event: str) -> Callable[..., Any]:
    if event == "log_metrics":
        def hook(self: Slot, state: Any, values: Any) -> Any:
            fn = getattr(self.target, event, None)
            return fn(state, values) if fn is not None else None
    else:
        def hook(self: Slot, state: Any) -> Any:  # type: ignore[misc]
            fn = getattr(self.target, event, None)
            return fn(state) if fn is not None else None
    hook.__name__ = event
    return clkernel.hookimpl(hook)


class Slot:
    """A plugin that forwards every event to ``target``; with no target the event is dropped."""

    def __init__(self, name: str, target: Any = None) -> None:
        self.name, self.target = name, target


for _event in SPEC:
    setattr(Slot, _event, _forward(_event))


class Points:
    """Calls ``at(label, state)`` where a checkpoint can be taken, once the loop is there, whatever the other
    plugins' ``tryfirst`` / ``trylast`` markers: after every training iteration (``iteration N``: the last plugin,
    and no logger marks that event), at the end of a training experience (``trained K``: first at the
    evaluation that follows it) and after that evaluation (``evaluated K``: first at the next experience)."""

    name = "points"

    def __init__(self, at: Callable[[str, Any], None]) -> None:
        self.at = at

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        self.at(f"iteration {state.iteration}", state)

    @clkernel.hookimpl(tryfirst=True)
    def before_eval(self, state: Any) -> None:
        self.at(f"trained {state.experiences_trained}", state)

    @clkernel.hookimpl(tryfirst=True)
    def before_training_exp(self, state: Any) -> None:
        self.at(f"evaluated {state.experiences_trained}", state)


def _plugins(run_dir: Path, out: io.StringIO) -> list[Any]:
    return [metrics.default_evaluator(running_every=RUNNING_EVERY), TextLogger(run_dir), CSVLogger(run_dir),
            JSONLLogger(run_dir), TensorBoardLogger(run_dir, config={"seed": 0, "model": "mlp"}),
            ReportLogger(run_dir, config={"seed": 0}, dpi=30),
            InteractiveLogger(file=out, bars=False, run_dir="RUN")]


def _run(blobs: Any, plugins: list[Any]) -> None:
    bench = blobs.make_benchmark(num_exps=N_EXPS, classes_per_exp=2, per_class=40)
    model = blobs.make_model(num_classes=2 * N_EXPS)
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                 plugins=plugins, train_mb_size=MB, train_epochs=EPOCHS, device="cpu",
                                 generator=torch.Generator().manual_seed(0))
    clkernel.run(strategy, bench)


_RUN_A: dict[str, Any] = {}


@pytest.fixture
def run_a(blobs: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run A, uninterrupted, and the states it took at every point of POINTS (run once per module)."""
    import types

    if "run" in _RUN_A:
        return _RUN_A["run"]
    folder = tmp_path_factory.mktemp("run-a")
    out = io.StringIO()
    plugins = _plugins(folder, out)
    states: dict[str, Any] = {}
    printed: dict[str, int] = {}

    def grab(label: str, state: Any) -> None:
        if label in POINTS.values():
            states[label] = _roundtrip([p.state_dict() for p in plugins])
            printed[label] = len(out.getvalue())

    _run(blobs, [*plugins, Points(grab)])
    assert set(states) == set(POINTS.values())
    _RUN_A["run"] = types.SimpleNamespace(blobs=blobs, folder=folder, out=out.getvalue(), states=states,
                                          printed=printed, history=plugins[0].all_metrics())
    return _RUN_A["run"]


def _resume(run_a: Any, label: str, folder: Path) -> Any:
    """Run B in ``folder`` (a copy of run A's), resumed at ``label``."""
    import types

    shutil.copytree(run_a.folder, folder)
    out = io.StringIO()
    template = _plugins(folder, io.StringIO())
    slots = [Slot(p.name if hasattr(p, "name") else type(p).__name__) for p in template]
    fresh: list[Any] = []

    def switch(at: str, state: Any) -> None:
        if at != label:
            return
        _wait_for_next_second(folder / "tensorboard")
        fresh.extend(_plugins(folder, out))
        for plugin, saved in zip(fresh, run_a.states[label]):
            plugin.load_state_dict(saved)
        for slot, plugin in zip(slots, fresh):
            slot.target = plugin
        for plugin in fresh:  # what the kernel fires after loading a checkpoint
            if hasattr(plugin, "before_run"):
                plugin.before_run(state)

    _run(run_a.blobs, [*slots, Points(switch)])
    assert fresh, f"run B never reached {label}"
    return types.SimpleNamespace(out=out.getvalue(), history=fresh[0].all_metrics())


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


@pytest.mark.parametrize("point", list(POINTS))
def test_a_resumed_run_writes_what_the_uninterrupted_run_wrote(run_a, tmp_path, point):
    label = POINTS[point]
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
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 2  # cut back + the resumed one

    _same_history(b.history, run_a.history)  # the metrics, bit for bit
    # the lines the interactive logger printed after the checkpoint, and its summary
    assert _without_durations(b.out) == _without_durations(run_a.out[run_a.printed[label]:])
    assert f"== results after {N_EXPS} trained experience(s)" in b.out


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
