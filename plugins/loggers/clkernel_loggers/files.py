"""Loggers that write files in the run folder: human-readable text, CSV (one file per phase), JSON lines.

The folder is checked when the logger is built; files are opened on the first value (in ``log_metrics``, which the
kernel calls on rank 0 only, so other ranks never open one), flushed at the end of every epoch, experience and
evaluation, and closed in ``after_run``. ``output_files`` lists them.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import IO, Any

import clkernel
from clkernel import TrainState

from clkernel_loggers.common import (
    check_filename, is_figure, is_matrix, is_vector, metric_parts, prepare_dir, scalar, to_jsonable,
)

__all__ = ["CSV_COLUMNS", "CSVLogger", "JSONLLogger", "TextLogger"]

#: Columns of the CSV files, in order.
CSV_COLUMNS = ("step", "wall_time", "experiences_trained", "name", "metric", "stream", "experience", "task",
               "class", "value")


class _FileLogger:
    """Opens files lazily in ``run_dir``, flushes them at boundaries, closes them in ``after_run``."""

    name = "file"

    def __init__(self, run_dir: str | Path | None, who: str) -> None:
        self.run_dir = prepare_dir(run_dir, who)
        self._files: dict[str, IO[str]] = {}
        self._written: list[str] = []

    def _open(self, filename: str, header: str | None = None) -> IO[str]:
        f = self._files.get(filename)
        if f is None:
            path = self.run_dir / filename
            fresh = not path.exists() or path.stat().st_size == 0
            f = self._files[filename] = open(path, "a", newline="", encoding="utf-8")
            if filename not in self._written:
                self._written.append(filename)
            if fresh and header:
                f.write(header)
        return f

    def flush(self) -> None:
        """Flush the open files (nothing when none is open)."""
        for f in self._files.values():
            f.flush()

    @clkernel.hookimpl(trylast=True)
    def after_training_epoch(self, state: TrainState) -> None:
        self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: TrainState) -> None:
        self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        self.flush()

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Close the files (a later value opens them again, appending)."""
        for f in self._files.values():
            f.close()
        self._files = {}

    @clkernel.hookimpl
    def output_files(self, state: TrainState) -> list[Path]:
        """The files written, in the order they were first opened."""
        return [self.run_dir / name for name in self._written]


class CSVLogger(_FileLogger):
    """Scalars in CSV files, one per phase: ``metrics_train.csv``, ``metrics_eval.csv`` (``metrics_other.csv``
    for names outside the scheme), columns :data:`CSV_COLUMNS`; values are written with ``repr`` (they read back
    exactly). Vectors, matrices and figures are left to other loggers.

    :param run_dir: the folder (created; default ``runs/<date-time>``).
    :raises LoggerPathError: when the folder cannot be written.
    """

    name = "csv"

    def __init__(self, run_dir: str | Path | None = None) -> None:
        super().__init__(run_dir, "csv")
        self._writers: dict[str, Any] = {}

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        now = time.time()
        for name, value in values.items():
            v = scalar(value)
            if v is None:
                continue
            parts = metric_parts(name)
            filename = f"metrics_{parts.phase if parts is not None else 'other'}.csv"
            writer = self._writers.get(filename)
            if writer is None or filename not in self._files:
                writer = self._writers[filename] = csv.writer(self._open(filename, ",".join(CSV_COLUMNS) + "\n"))
            if parts is None:
                row = ["", "", "", "", ""]
            else:
                row = [parts.metric, parts.stream, _blank(parts.exp), _blank(parts.task), _blank(parts.cls)]
            writer.writerow([state.iteration, f"{now:.3f}", state.experiences_trained, name, *row, repr(v)])


def _blank(x: Any) -> Any:
    return "" if x is None else x


class JSONLLogger(_FileLogger):
    """One JSON object per metric value in ``filename`` (``metrics.jsonl``): ``step`` (``state.iteration``),
    ``wall_time`` (Unix seconds), ``experiences_trained``, ``name``, ``value`` (a number, or nested lists for a
    tensor or array; NaN and infinities as null). Figures are skipped.

    :raises LoggerPathError: when the folder cannot be written.
    """

    name = "jsonl"

    def __init__(self, run_dir: str | Path | None = None, filename: str = "metrics.jsonl") -> None:
        super().__init__(run_dir, "jsonl")
        self.filename = check_filename(filename, "jsonl", self.run_dir)

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        now = round(time.time(), 3)
        f = self._open(self.filename)
        for name, value in values.items():
            if is_figure(value):
                continue
            v = scalar(value)
            record = {"step": state.iteration, "wall_time": now, "experiences_trained": state.experiences_trained,
                      "name": name, "value": to_jsonable(value if v is None else v)}
            f.write(json.dumps(record, allow_nan=False) + "\n")


class TextLogger(_FileLogger):
    """A human-readable log, ``filename`` (``log.txt``): one line per batch of values, with the step, the phase
    and where the loop is; vectors and matrices follow on their own lines (``-`` where NaN).

    :raises LoggerPathError: when the folder cannot be written.
    """

    name = "text"

    def __init__(self, run_dir: str | Path | None = None, filename: str = "log.txt") -> None:
        super().__init__(run_dir, "text")
        self.filename = check_filename(filename, "text", self.run_dir)

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        f = self._open(self.filename)
        where = "eval" if not state.is_training else f"train epoch {state.epoch}"
        exp = state.experience.index if state.experience is not None else "-"
        scalars, others = [], []
        for name, value in values.items():
            v = scalar(value)
            if v is not None:
                scalars.append(f"{name}={v:.4f}")
            elif is_matrix(value):
                rows = "\n".join("    " + " ".join(_cell(x) for x in row) for row in to_jsonable(value))
                others.append(f"  {name} =\n{rows}")
            elif is_vector(value):
                others.append(f"  {name} =\n    " + " ".join(_cell(x) for x in to_jsonable(value)))
            elif isinstance(value, str):
                others.append(f"  {name} = {value}")
            else:
                others.append(f"  {name} = <{type(value).__name__}>")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        f.write(f"[{stamp}] step {state.iteration} | {where} | stream {state.stream_name or '-'} exp {exp} | "
                f"trained {state.experiences_trained}" + ("\n  " + " ".join(scalars) if scalars else "") + "\n")
        for line in others:
            f.write(line + "\n")


def _cell(x: Any) -> str:
    if x is None:
        return "   -  "
    return f"{x:6.4f}" if isinstance(x, float) else f"{x:6d}" if isinstance(x, int) else str(x)
