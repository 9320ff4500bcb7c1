"""Loggers that write files in the run folder: human-readable text, CSV (one file per phase), JSON lines.

Files are opened on the first value and flushed at the end of every epoch, experience and evaluation; only
rank 0 writes. The folder is checked when the logger is built.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import IO, Any

import clkernel
from clkernel import TrainState

from clkernel_loggers.common import is_figure, is_matrix, prepare_dir, scalar, split_name, to_jsonable

__all__ = ["CSV_COLUMNS", "CSVLogger", "JSONLLogger", "TextLogger"]

#: Columns of the CSV files, in order.
CSV_COLUMNS = ("step", "wall_time", "experiences_trained", "name", "metric", "stream", "experience", "task",
               "class", "value")


class _FileLogger:
    """Opens files lazily in ``run_dir``, flushes them at boundaries, closes them on :meth:`close`."""

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

    def files(self) -> list[Path]:
        """The files written so far (also after :meth:`close`)."""
        return [self.run_dir / name for name in self._written]

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        """Flush and close the files (a later value opens them again, appending)."""
        for f in self._files.values():
            f.close()
        self._files = {}

    @clkernel.hookimpl(trylast=True)
    def after_training_epoch(self, state: TrainState) -> None:
        if state.rank == 0:
            self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: TrainState) -> None:
        if state.rank == 0:
            self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        if state.rank == 0:
            self.flush()


class CSVLogger(_FileLogger):
    """Scalars in CSV files, one per phase: ``metrics_train.csv``, ``metrics_eval.csv`` (``metrics_other.csv`` for
    names outside the scheme), columns :data:`CSV_COLUMNS`. Matrices and figures are left to other loggers."""

    name = "csv"

    def __init__(self, run_dir: str | Path | None = None) -> None:
        super().__init__(run_dir, "csv")
        self._writers: dict[str, Any] = {}

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        if state.rank != 0:
            return
        now = time.time()
        for name, value in values.items():
            v = scalar(value)
            if v is None:
                continue
            parts = split_name(name)
            phase = parts["phase"] if parts["phase"] in ("train", "eval") else "other"
            filename = f"metrics_{phase}.csv"
            writer = self._writers.get(filename)
            if writer is None or filename not in self._files:
                writer = self._writers[filename] = csv.writer(self._open(filename, ",".join(CSV_COLUMNS) + "\n"))
            writer.writerow([state.iteration, f"{now:.3f}", state.experiences_trained, name, parts["metric"],
                             parts["stream"] or "", _blank(parts["exp"]), _blank(parts["task"]),
                             _blank(parts["class"]), repr(v)])


def _blank(x: Any) -> Any:
    return "" if x is None else x


class JSONLLogger(_FileLogger):
    """One JSON object per metric value in ``metrics.jsonl``: ``step``, ``wall_time``, ``experiences_trained``,
    ``name``, ``value`` (a number, or nested lists for a tensor; NaN as null). Figures are skipped."""

    name = "jsonl"

    def __init__(self, run_dir: str | Path | None = None, filename: str = "metrics.jsonl") -> None:
        super().__init__(run_dir, "jsonl")
        self.filename = filename

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        if state.rank != 0:
            return
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
    """A human-readable log, ``log.txt``: one line per batch of values, with the step, the phase and where the
    loop is; matrices follow on their own lines."""

    name = "text"

    def __init__(self, run_dir: str | Path | None = None, filename: str = "log.txt") -> None:
        super().__init__(run_dir, "text")
        self.filename = filename

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        if state.rank != 0:
            return
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
