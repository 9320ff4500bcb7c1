"""Loggers that write files in the run folder: human-readable text, CSV (one file per phase), JSON lines.

The folder is checked when the logger is built; files are opened on the first value (in ``log_metrics``, which the
kernel calls on rank 0 only, so other ranks never open one), flushed at the end of every epoch, experience and
evaluation, and closed in ``after_run``. ``output_files`` lists them. A write that fails (a full disk) raises
:class:`~clkernel_loggers.LoggerWriteError` naming the file.

**Checkpoints.** ``state_dict()`` flushes the files and records, for each file written, its size and a digest of
its last bytes; ``load_state_dict()`` (on a fresh logger of the same folder, before the run starts) checks that
every recorded file still holds what it held then, and raises :class:`~clkernel_loggers.LoggerResumeError`
naming the file otherwise (nothing is changed). When the resumed run starts (``before_run``, rank 0) each file
is cut back to its recorded size, and a file of this logger that did not exist at the checkpoint is removed:
the rows written after the checkpoint disappear, and the resumed run appends after the last row before it, with
no second header.
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
    LoggerResumeError, LoggerWriteError, check_file_state, check_filename, file_state, is_figure, is_matrix,
    is_rank_zero, is_vector, metric_parts, prepare_dir, remove_file, scalar, to_jsonable, truncate_file, writing,
)

__all__ = ["CSV_COLUMNS", "CSV_FILES", "STATE_FORMAT", "CSVLogger", "JSONLLogger", "TextLogger"]

#: Columns of the CSV files, in order.
CSV_COLUMNS = ("step", "wall_time", "experiences_trained", "name", "metric", "stream", "experience", "task",
               "class", "value")

#: The files of the CSV logger, one per phase (``other``: names outside the scheme).
CSV_FILES = ("metrics_train.csv", "metrics_eval.csv", "metrics_other.csv")

#: The version of the file loggers' ``state_dict()`` layout.
STATE_FORMAT = 1


class _FileLogger:
    """Opens files lazily in ``run_dir``, flushes them at boundaries, closes them in ``after_run``; checkpoints
    them by size (see the module's docstring)."""

    name = "file"

    def __init__(self, run_dir: str | Path | None, who: str) -> None:
        self.run_dir = prepare_dir(run_dir, who)
        self.who = who
        self._files: dict[str, IO[str]] = {}
        self._written: list[str] = []
        self._failed: set[str] = set()  # files whose write failed (reported once)
        self._resume: dict[str, Any] | None = None  # a loaded checkpoint, applied when the run starts
        self._continuing = False  # the files continue a checkpointed run

    def filenames(self) -> list[str]:
        """Every file this logger may write in ``run_dir``."""
        raise NotImplementedError

    def _open(self, filename: str, header: str | None = None) -> IO[str]:
        f = self._files.get(filename)
        if f is None:
            if self._resume is not None:
                self._apply_resume()
            path = self.run_dir / filename
            with writing(path, self.who):
                append = self._continuing or filename in self._written  # else a file of the same name is replaced
                fresh = not append or not path.exists() or path.stat().st_size == 0
                # closed in after_run
                f = open(path, "a" if append else "w", newline="", encoding="utf-8")  # noqa: SIM115
                try:
                    if fresh and header:
                        f.write(header)
                except BaseException:
                    self._failed.add(filename)
                    _close_quietly(f)
                    raise
            self._files[filename] = f
            if filename not in self._written:
                self._written.append(filename)
        return f

    def _write_error(self, filename: str, error: OSError) -> LoggerWriteError:
        self._failed.add(filename)
        return error if isinstance(error, LoggerWriteError) else LoggerWriteError(self.who, self.run_dir / filename,
                                                                                  error)

    def flush(self) -> None:
        """Flush the open files (nothing when none is open).

        :raises LoggerWriteError: naming the file whose buffered rows could not be written.
        """
        for filename, f in self._files.items():
            try:
                f.flush()
            except OSError as e:
                raise self._write_error(filename, e) from e

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
    def before_run(self, state: TrainState) -> None:
        """A resumed run starts: cut the files back to the checkpoint (rank 0; other ranks write nothing)."""
        if self._resume is not None and state.rank == 0:
            self._apply_resume()

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Close the files (a later value opens them again, appending).

        :raises LoggerWriteError: naming the first file whose last rows could not be written (a file whose
            write already failed, and was reported, is closed quietly).
        """
        first: tuple[str, OSError] | None = None
        for filename, f in self._files.items():
            try:
                f.close()  # closes the file even when its last flush fails
            except OSError as e:
                if filename not in self._failed and first is None:
                    first = filename, e
        self._files = {}
        if first is not None:
            raise self._write_error(*first) from first[1]

    @clkernel.hookimpl
    def output_files(self, state: TrainState) -> list[Path]:
        """The files written, in the order they were first opened."""
        return [self.run_dir / name for name in self._written]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Flush the files and record where they stand: ``{"format", "logger", "files": {name: {"size": bytes,
        "tail": sha256 hex of the last bytes}}, "absent": [names of this logger's files that do not exist]}``
        (plain containers: ``torch.load(weights_only=True)`` reads them).

        :raises LoggerWriteError: naming a file that cannot be flushed or read.
        """
        if self._resume is not None:  # loaded and not applied yet: the checkpoint still describes the files
            return {**self._resume, "files": dict(self._resume["files"]), "absent": list(self._resume["absent"])}
        self.flush()
        files: dict[str, dict[str, Any]] = {}
        for name in self._written:
            path = self.run_dir / name
            with writing(path, self.who):
                files[name] = file_state(path)
        absent = [name for name in self.filenames() if name not in files and not (self.run_dir / name).exists()]
        return {"format": STATE_FORMAT, "logger": self.who, "files": files, "absent": absent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the files of ``state`` (:meth:`state_dict` of a logger of the same folder): check them now, cut
        them back to the checkpoint when the run starts (``before_run``) or at the first value.

        :raises LoggerResumeError: naming the file when one is missing, shorter than recorded or no longer holds
            what it held; or when ``state`` is not this kind of logger's (naming what is wrong). Nothing is changed
            on disk then.
        """
        files, absent = _check_state(state, self.who, self.filenames())
        if is_rank_zero():  # other ranks never write (and may not see the folder)
            for name, recorded in files.items():
                check_file_state(self.run_dir / name, recorded, self.who)
        for filename, f in self._files.items():  # a logger that already wrote: its files are the checkpoint's now
            _close_quietly(f)
        self._files, self._failed = {}, set()
        self._written = list(files)
        self._resume = {"format": STATE_FORMAT, "logger": self.who, "files": files, "absent": absent}

    def _apply_resume(self) -> None:
        resume, self._resume = self._resume, None
        assert resume is not None
        self._continuing = True
        for name, recorded in resume["files"].items():
            truncate_file(self.run_dir / name, recorded["size"], self.who)
        for name in resume["absent"]:  # created after the checkpoint (by the run that was interrupted)
            remove_file(self.run_dir / name, self.who)


def _close_quietly(f: IO[str]) -> None:
    try:
        f.close()
    except OSError:
        pass


def _check_state(state: Any, who: str, filenames: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The files and absent files of a file logger's state, checked."""
    if not isinstance(state, dict) or state.get("logger") != who or not isinstance(state.get("files"), dict):
        raise LoggerResumeError(f"the {who} logger cannot resume from this state: it is not a {who} logger's "
                                f"state_dict() (got {_describe(state)})")
    if state.get("format") != STATE_FORMAT:
        raise LoggerResumeError(f"the {who} logger cannot resume from this state: format {state.get('format')!r}, "
                                f"this version reads format {STATE_FORMAT}")
    files: dict[str, dict[str, Any]] = {}
    for name, recorded in state["files"].items():
        if name not in filenames:
            raise LoggerResumeError(f"the {who} logger cannot resume from this state: it names the file {name!r}, "
                                    f"but this logger writes {', '.join(map(repr, filenames))} (was it built with "
                                    f"another filename?)")
        if (not isinstance(recorded, dict) or not isinstance(recorded.get("size"), int) or recorded["size"] < 0
                or not isinstance(recorded.get("tail"), str)):
            raise LoggerResumeError(f"the {who} logger cannot resume from this state: the entry of {name!r} is "
                                    f"not a file size and digest ({recorded!r})")
        files[name] = {"size": recorded["size"], "tail": recorded["tail"]}
    absent = [name for name in state.get("absent", []) if name in filenames and name not in files]
    return files, absent


def _describe(state: Any) -> str:
    if isinstance(state, dict):
        return f"a dict with logger={state.get('logger')!r} and keys {sorted(map(str, state))}"
    return type(state).__name__


class CSVLogger(_FileLogger):
    """Scalars in CSV files, one per phase: ``metrics_train.csv``, ``metrics_eval.csv`` (``metrics_other.csv``
    for names outside the scheme), columns :data:`CSV_COLUMNS`; values are written with ``repr`` (they read back
    exactly). Vectors, matrices and figures are left to other loggers.

    :param run_dir: the folder (created; default ``runs/<date-time>``).
    :raises LoggerPathError: when the folder cannot be written.
    :raises LoggerWriteError: during the run, naming the file, when a write fails (a full disk).
    """

    name = "csv"

    def __init__(self, run_dir: str | Path | None = None) -> None:
        super().__init__(run_dir, "csv")
        self._writers: dict[str, Any] = {}

    def filenames(self) -> list[str]:
        """``metrics_train.csv``, ``metrics_eval.csv``, ``metrics_other.csv``."""
        return list(CSV_FILES)

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        now = time.time()
        filename = ""
        try:
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
        except OSError as e:
            raise self._write_error(filename, e) from e


def _blank(x: Any) -> Any:
    return "" if x is None else x


class JSONLLogger(_FileLogger):
    """One JSON object per metric value in ``filename`` (``metrics.jsonl``): ``step`` (``state.iteration``),
    ``wall_time`` (Unix seconds), ``experiences_trained``, ``name``, ``value`` (a number, or nested lists for a
    tensor or array; NaN and infinities as null). Figures are skipped.

    :raises LoggerPathError: when the folder cannot be written.
    :raises LoggerWriteError: during the run, naming the file, when a write fails (a full disk).
    """

    name = "jsonl"

    def __init__(self, run_dir: str | Path | None = None, filename: str = "metrics.jsonl") -> None:
        super().__init__(run_dir, "jsonl")
        self.filename = check_filename(filename, "jsonl", self.run_dir)

    def filenames(self) -> list[str]:
        """``[filename]``."""
        return [self.filename]

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        now = round(time.time(), 3)
        f = self._open(self.filename)
        lines = []
        for name, value in values.items():
            if is_figure(value):
                continue
            v = scalar(value)
            record = {"step": state.iteration, "wall_time": now, "experiences_trained": state.experiences_trained,
                      "name": name, "value": to_jsonable(value if v is None else v)}
            lines.append(json.dumps(record, allow_nan=False) + "\n")
        try:
            f.write("".join(lines))
        except OSError as e:
            raise self._write_error(self.filename, e) from e


class TextLogger(_FileLogger):
    """A human-readable log, ``filename`` (``log.txt``): one line per batch of values, with the step, the phase
    and where the loop is; vectors and matrices follow on their own lines (``-`` where NaN).

    :raises LoggerPathError: when the folder cannot be written.
    :raises LoggerWriteError: during the run, naming the file, when a write fails (a full disk).
    """

    name = "text"

    def __init__(self, run_dir: str | Path | None = None, filename: str = "log.txt") -> None:
        super().__init__(run_dir, "text")
        self.filename = check_filename(filename, "text", self.run_dir)

    def filenames(self) -> list[str]:
        """``[filename]``."""
        return [self.filename]

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
        text = (f"[{stamp}] step {state.iteration} | {where} | stream {state.stream_name or '-'} exp {exp} | "
                f"trained {state.experiences_trained}" + ("\n  " + " ".join(scalars) if scalars else "") + "\n"
                + "".join(line + "\n" for line in others))
        try:
            f.write(text)
        except OSError as e:
            raise self._write_error(self.filename, e) from e


def _cell(x: Any) -> str:
    if x is None:
        return "   -  "
    return f"{x:6.4f}" if isinstance(x, float) else f"{x:6d}" if isinstance(x, int) else str(x)
