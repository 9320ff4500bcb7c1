"""CSV, JSON lines and text loggers: files that parse and hold the logged values; errors at construction."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

import clkernel

from clkernel_loggers import (
    CSV_COLUMNS, CSVLogger, JSONLLogger, LoggerPathError, ReportLogger, TensorBoardLogger, TextLogger,
)


def _scalars(logged):
    return [(step, name, float(v)) for step, name, v in logged
            if isinstance(v, float) or (isinstance(v, torch.Tensor) and v.numel() == 1)]


def test_csv_holds_every_scalar_in_one_file_per_phase(tiny, tmp_path):
    logger = CSVLogger(tmp_path)
    run = tiny.make_run(logger)
    files = tiny.run_all(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics_eval.csv", "metrics_train.csv"]
    assert files == [tmp_path / "metrics_train.csv", tmp_path / "metrics_eval.csv"]  # output_files: as opened
    rows = []
    for phase in ("train", "eval"):
        with open(tmp_path / f"metrics_{phase}.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == CSV_COLUMNS
            for row in reader:
                assert row["name"].split("/")[1] == phase
                rows.append(row)
    got = sorted((int(r["step"]), r["name"], float(r["value"])) for r in rows)
    assert got == sorted(_scalars(run.metrics.logged))  # exact: values are written with repr()
    exp_row = next(r for r in rows if r["name"] == "acc_exp/eval/test/exp002")
    assert (exp_row["metric"], exp_row["stream"], exp_row["experience"], exp_row["task"]) == ("acc_exp", "test",
                                                                                             "2", "")
    assert {r["experiences_trained"] for r in rows} == {"0", "1", "2", "3"}


def test_jsonl_holds_every_value(tiny, tmp_path):
    logger = JSONLLogger(tmp_path)
    run = tiny.make_run(logger)
    assert tiny.run_all(run) == [tmp_path / "metrics.jsonl"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(run.metrics.logged)
    for record, (step, name, value) in zip(records, run.metrics.logged):
        assert (record["step"], record["name"]) == (step, name)
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            expected = [[None if math.isnan(v) else v for v in row] for row in value.tolist()]
            assert record["value"] == expected  # NaN -> null: strict JSON
        elif isinstance(value, torch.Tensor) and value.dim() == 1:
            assert record["value"] == value.tolist()
        else:
            assert record["value"] == float(value)
    scalars = [(r["step"], r["name"], r["value"]) for r in records if not isinstance(r["value"], list)]
    assert sorted(scalars) == sorted(_scalars(run.metrics.logged))


def test_text_log_is_readable(tiny, tmp_path):
    logger = TextLogger(tmp_path)
    run = tiny.make_run(logger)
    run.strategy.eval(run.test)  # before training: the initial accuracies, a vector
    assert tiny.run_all(run) == [tmp_path / "log.txt"]
    text = (tmp_path / "log.txt").read_text()
    assert "acc_stream/eval/test=" in text and "loss_epoch/train/train=1.0000" in text
    assert "confusion_matrix_stream/eval/test =\n" in text
    assert "     5      1" in text  # the matrix rows
    assert "accuracy_initial_stream/eval/test =\n    0.7000 0.5100 0.3200\n" in text
    assert "accuracy_matrix_stream/eval/test =\n    0.9000 0.7100 0.5200\n" in text


def test_files_are_closed_by_after_run_and_reopened_by_a_later_value(tiny, tmp_path):
    logger = JSONLLogger(tmp_path)
    run = tiny.make_run(logger, n_exps=1)
    tiny.run_all(run)
    lines = len((tmp_path / "metrics.jsonl").read_text().splitlines())
    logger.log_metrics(run.strategy.state, {"late_stream/eval/test": 1.0, "not a scheme name": 2.0})
    logger.after_run(run.strategy.state)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == lines + 2  # appended, not overwritten
    assert [r["name"] for r in records[-2:]] == ["late_stream/eval/test", "not a scheme name"]


@pytest.mark.parametrize("make, filename", [(CSVLogger, "metrics_train.csv"), (JSONLLogger, "metrics.jsonl"),
                                            (TextLogger, "log.txt")], ids=["csv", "jsonl", "text"])
def test_a_new_run_replaces_a_file_of_the_same_name_instead_of_appending_to_it(tiny, tmp_path, make, filename):
    """``clkernel run --overwrite`` into a folder holding an older run: the older rows must not mix with the new."""
    (tmp_path / filename).write_text("an older run's rows\n")
    reference = tmp_path / "reference"
    reference.mkdir()
    for folder in (tmp_path, reference):
        tiny.run_all(tiny.make_run(make(folder), n_exps=1))
    assert b"older" not in (tmp_path / filename).read_bytes()
    lines, expected = ((folder / filename).read_text().splitlines() for folder in (tmp_path, reference))
    assert len(lines) == len(expected) and lines[0][:8] == expected[0][:8]  # one header; rows hold times


def test_names_outside_the_scheme_are_accepted(tmp_path):
    state = clkernel.TrainState(model=torch.nn.Linear(1, 1), optimizer=None, criterion=None,  # type: ignore
                                device=torch.device("cpu"), train_mb_size=1, train_epochs=1, eval_mb_size=1)
    csv_logger, text_logger = CSVLogger(tmp_path), TextLogger(tmp_path)
    values = {"throughput": 12.5, "acc/eval": 0.5, "acc_stream/eval/test": 0.25}  # two names outside the scheme
    for logger in (csv_logger, text_logger):
        logger.log_metrics(state, values)
        logger.after_run(state)
    with open(tmp_path / "metrics_other.csv", newline="") as f:
        other = list(csv.DictReader(f))
    assert [(r["name"], r["metric"], r["stream"], r["value"]) for r in other] == [
        ("throughput", "", "", "12.5"), ("acc/eval", "", "", "0.5")]
    with open(tmp_path / "metrics_eval.csv", newline="") as f:
        assert [(r["metric"], r["stream"]) for r in csv.DictReader(f)] == [("acc_stream", "test")]
    assert "throughput=12.5000 acc/eval=0.5000 acc_stream/eval/test=0.2500" in (tmp_path / "log.txt").read_text()


def test_only_rank_zero_writes(tiny, tmp_path, monkeypatch):
    """Under torch.distributed the kernel calls log_metrics and output_files on rank 0 only: on rank 1 every
    other event still fires on the loggers, and none of them creates a folder, opens, writes or lists a file.

    In one process, pretending to be rank 1 of 2, with DDP left out (it needs a real group; the fake metrics do
    no collective): plugins/metrics/tests/test_distributed.py launches two real processes."""
    from clkernel_loggers import InteractiveLogger

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, **options: model)
    out = io.StringIO()
    loggers = [CSVLogger(tmp_path / "csv"), JSONLLogger(tmp_path / "jsonl"), TextLogger(tmp_path / "text"),
               TensorBoardLogger(tmp_path / "tb"), ReportLogger(tmp_path / "report"),
               InteractiveLogger(file=out, bars=True)]
    run = tiny.make_run(*loggers, epochs=2)
    assert run.strategy.state.rank == 1
    run.strategy.eval(run.test)
    assert tiny.run_all(run) == []
    assert list(tmp_path.rglob("*")) == []  # not even the folders
    assert out.getvalue() == ""  # no line, no bar
    assert len(run.metrics.logged) > 0  # the metric did log: the kernel kept the values from the loggers


def test_rank_one_stays_silent_after_loading_rank_zero_state(tiny, tmp_path, monkeypatch):
    """A resumed distributed run: every rank loads rank 0's checkpoint, whose interactive logger had shown
    values and whose report had values to write. Rank 1 still prints nothing and changes no file."""
    from clkernel_loggers import InteractiveLogger

    report, shown = ReportLogger(tmp_path), InteractiveLogger(file=io.StringIO(), bars=False)
    run = tiny.make_run(report, shown)
    run.strategy.train(run.train[0])
    run.strategy.eval(run.test)
    run.strategy.train(run.train[1])  # a checkpoint after training: the report has new values to write
    states = {"report": report.state_dict(), "interactive": shown.state_dict()}
    assert states["interactive"]["active"] and states["report"]["dirty"]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert "results.json" in [p.name for p in before]

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, **options: model)
    out = io.StringIO()
    report, shown = ReportLogger(tmp_path), InteractiveLogger(file=out, bars=True)
    report.load_state_dict(states["report"])
    shown.load_state_dict(states["interactive"])
    run = tiny.make_run(report, shown)
    run.strategy.eval(run.test)
    run.strategy.train(run.train[2])
    run.strategy.eval(run.test)
    run.strategy.close()
    assert out.getvalue() == ""
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("make", [
    lambda p: CSVLogger(p), lambda p: JSONLLogger(p), lambda p: TextLogger(p),
    lambda p: TensorBoardLogger(p), lambda p: ReportLogger(p)],
    ids=["csv", "jsonl", "text", "tensorboard", "report"])
def test_unwritable_folder_fails_at_construction(make, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file: nothing can be created below it, not even by root")
    target = blocker / "run"
    with pytest.raises(LoggerPathError, match="cannot write to") as info:
        make(target)
    assert str(blocker) in str(info.value)
    assert isinstance(info.value, OSError)


def test_loggers_never_import_the_metrics_package():
    package = Path(__file__).resolve().parents[1] / "clkernel_loggers"
    for source in package.glob("*.py"):
        assert "clkernel_metrics" not in source.read_text(), source
