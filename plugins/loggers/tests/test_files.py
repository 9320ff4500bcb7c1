"""CSV, JSON lines and text loggers: files that parse and hold the logged values; errors at construction."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from clkernel_loggers import (
    CSV_COLUMNS, CSVLogger, JSONLLogger, LoggerPathError, ReportLogger, TensorBoardLogger, TextLogger,
)


def _scalars(logged):
    return [(step, name, float(v)) for step, name, v in logged
            if isinstance(v, float) or (isinstance(v, torch.Tensor) and v.numel() == 1)]


def test_csv_holds_every_scalar_in_one_file_per_phase(tiny, tmp_path):
    logger = CSVLogger(tmp_path)
    run = tiny.make_run(logger)
    tiny.run_all(run)
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics_eval.csv", "metrics_train.csv"]
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
    tiny.run_all(run)
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(run.metrics.logged)
    for record, (step, name, value) in zip(records, run.metrics.logged):
        assert (record["step"], record["name"]) == (step, name)
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            expected = [[None if math.isnan(v) else v for v in row] for row in value.tolist()]
            assert record["value"] == expected  # NaN -> null: strict JSON
        else:
            assert record["value"] == float(value)
    scalars = [(r["step"], r["name"], r["value"]) for r in records if not isinstance(r["value"], list)]
    assert sorted(scalars) == sorted(_scalars(run.metrics.logged))


def test_text_log_is_readable(tiny, tmp_path):
    logger = TextLogger(tmp_path)
    run = tiny.make_run(logger)
    tiny.run_all(run)
    logger.close()
    text = (tmp_path / "log.txt").read_text()
    assert "acc_stream/eval/test=" in text and "loss_epoch/train/train=1.0000" in text
    assert "confusion_matrix_stream/eval/test =\n" in text
    assert "     5      1" in text  # the matrix rows


def test_only_rank_zero_writes(tiny, tmp_path):
    loggers = [CSVLogger(tmp_path / "csv"), JSONLLogger(tmp_path / "jsonl"), TextLogger(tmp_path / "text"),
               TensorBoardLogger(tmp_path / "tb"), ReportLogger(tmp_path / "report")]
    run = tiny.make_run(*loggers)
    run.strategy.state.rank = 1
    tiny.run_all(run)
    for logger in loggers:
        logger.close()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


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
