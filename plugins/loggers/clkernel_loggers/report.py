"""The end-of-run report: ``results.json`` and PNG plots in the run folder, rewritten after every evaluation.

The report only writes what it received through ``log_metrics``: it computes no metric. The accuracy matrix of a
stream is the last ``accuracy_matrix_stream/eval/STREAM`` value received (the default metrics log it), the
initial accuracies the last ``accuracy_initial_stream/eval/STREAM`` value (logged by an evaluation before
training, when forward transfer asks for one).

``clkernel run`` trains and evaluates one experience at a time, so the report is rewritten (atomically) after each
``eval()`` in which values were received, and is therefore always complete; ``after_run`` writes it a last time
if values arrived since. ``results.json`` also says how the run stands: ``status`` is ``running`` (written
when the run starts, before any value, and at each rewrite), then, at ``after_run``, ``completed``, ``failed`` or
``interrupted`` (the kernel's ``state.outcome``), with ``error`` naming the exception that ended it (else null).
Only rank 0 writes: on other ranks nothing is ever written. A write that fails (a full disk) raises
:class:`~clkernel_loggers.LoggerWriteError` naming the file, and leaves the previous file as it was.

**Checkpoints.** ``state_dict()`` holds everything the report was built from (the final scalars, the matrices,
the accuracy matrices and initial accuracies, the figures as PNG bytes, the files written), as tensors and plain
containers; a fresh report that loads it rebuilds ``results.json`` and the plots from it when the resumed run
starts (``before_run``), as the uninterrupted run had them at the checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import positive_int

from clkernel_loggers.common import (
    LoggerResumeError, is_figure, is_matrix, is_vector, metric_parts, prepare_dir, scalar, to_jsonable, versions,
    write_atomic,
)

__all__ = ["INITIAL_METRIC", "MATRIX_METRIC", "PROGRESS_GRANULARITIES", "STATE_FORMAT", "ReportLogger"]

#: The version of the report's ``state_dict()`` layout.
STATE_FORMAT = 1

#: The first part of the names whose values are the accuracy matrices (2-D: after training i, on experience j).
MATRIX_METRIC = "accuracy_matrix_stream"
#: The first part of the names whose values are the accuracies before training (1-D: on experience j).
INITIAL_METRIC = "accuracy_initial_stream"
#: Granularities of progress values (the last minibatch, the epoch so far): not final metrics, so not in
#: ``final_metrics`` (the last one logged may be from any point of an epoch).
PROGRESS_GRANULARITIES = ("mb", "running_epoch")


class ReportLogger:
    """Writes ``results.json`` (final metrics: the last value of every scalar but the progress values of
    :data:`PROGRESS_GRANULARITIES`; accuracy matrices, other matrices, configuration, versions) and,
    with ``plots``, ``accuracy_matrix_STREAM.png`` (heatmap) and ``accuracy_curves_STREAM.png`` (accuracy of each
    experience after each training experience) into ``run_dir``; figures logged by metrics are saved as
    ``NAME.png`` (the name with every character other than letters, digits, ``_.-`` replaced by ``_``).

    :param run_dir: the folder (created; default ``runs/<date-time>``).
    :param config: the run's configuration, copied into ``results.json``.
    :param plots: write the PNG files.
    :param dpi: the plots' resolution: ``6.4 x 4.8`` inches at ``dpi`` (640 x 480 pixels at 100).
    :raises ValueError: when ``dpi`` is not an integer >= 10.
    :raises LoggerPathError: when the folder cannot be written.
    :raises LoggerWriteError: during the run, naming the file, when a write fails (a full disk).
    """

    name = "report"

    def __init__(self, run_dir: str | Path | None = None, config: dict[str, Any] | None = None,
                 plots: bool = True, dpi: int = 100) -> None:
        if positive_int(dpi, "dpi", "report") < 10:
            raise ValueError(f"report: dpi must be an integer >= 10, got {dpi!r}")
        self.run_dir = prepare_dir(run_dir, "report")
        self.config = dict(config or {})
        self.plots, self.dpi = plots, dpi
        self.results_path = self.run_dir / "results.json"
        self._final: dict[str, float] = {}
        self._matrices: dict[str, Any] = {}
        self._accuracy: dict[str, Any] = {}
        self._initial: dict[str, Any] = {}
        self._figures: dict[str, Any] = {}  # name -> matplotlib figure, or its PNG bytes (after resuming)
        self._figure_pngs: dict[str, tuple[Any, torch.Tensor]] = {}  # name -> (figure, PNG bytes), for checkpoints
        self._experiences_trained: int | None = None
        self._written: list[Path] = []
        self._dirty = False
        self._versions: dict[str, Any] | None = None
        self._status: str = "running"
        self._failed = False  # a write failed (and was reported)
        self._error: str | None = None

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        for name, value in values.items():
            v = scalar(value)
            parts = metric_parts(name)
            if v is not None:
                if parts is None or parts.granularity not in PROGRESS_GRANULARITIES:
                    self._final[name] = v
                continue
            metric = parts.metric if parts is not None and parts.phase == "eval" else None
            if is_matrix(value):
                if metric == MATRIX_METRIC:
                    self._accuracy[parts.stream] = value  # type: ignore[union-attr]
                else:
                    self._matrices[name] = value
            elif is_vector(value) and metric == INITIAL_METRIC:
                self._initial[parts.stream] = value  # type: ignore[union-attr]
            elif is_figure(value):
                self._figures[name] = value
        self._experiences_trained = state.experiences_trained
        self._dirty = True

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        if self._dirty and state.rank == 0:  # a resumed run's other ranks hold rank 0's state, and write nothing
            self.write()

    @clkernel.hookimpl
    def before_run(self, state: TrainState) -> None:
        """Write ``results.json`` with status ``running`` (rank 0): a run that ends early still leaves one."""
        if state.rank == 0:
            self.write()

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Write the report a last time, with how the run ended (``state.outcome`` and ``state.error``)."""
        self._status = getattr(state, "outcome", "completed")
        if self._status == "running":  # a kernel that does not say: the run got here, so it ended
            self._status = "completed"
        self._error = getattr(state, "error", None)
        if state.rank == 0:
            try:
                self.write()
            except OSError:
                if not self._failed:  # a write that failed before was reported then: the run is ending on it
                    raise

    @clkernel.hookimpl
    def output_files(self, state: TrainState) -> list[Path]:
        """The files this logger has written (results.json and the plots)."""
        return list(self._written)

    # ------------------------------------------------------------------ report

    def accuracy_matrices(self) -> dict[str, list[list[float | None]]]:
        """Stream -> the last accuracy matrix received (rows: after training experience i; columns: experience j;
        None: unknown)."""
        return {stream: to_jsonable(self._accuracy[stream]) for stream in sorted(self._accuracy)}

    def write(self) -> list[Path]:
        """Write ``results.json`` (and the plots) now.

        :returns: the files written.
        """
        if self._versions is None:
            self._versions = versions(self.config)
        matrices = self.accuracy_matrices()
        written: list[Path] = []
        if self.plots:
            try:
                written += self._plot(matrices)
            except OSError:
                self._failed = True
                raise
        streams = sorted(set(matrices) | set(self._initial))
        results = {
            "status": self._status,
            "error": self._error,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "experiences_trained": self._experiences_trained,
            "final_metrics": to_jsonable(self._final),
            "accuracy_matrix": {s: {"rows": "after training experience i", "columns": "evaluated experience j",
                                    "source": f"{MATRIX_METRIC}/eval/{s}",
                                    "values": matrices.get(s, []),
                                    "initial": to_jsonable(self._initial[s]) if s in self._initial else None}
                                for s in streams},
            "matrices": {k: to_jsonable(v) for k, v in self._matrices.items()},
            "config": to_jsonable(self.config),
            "versions": self._versions,
            "files": [p.name for p in [self.results_path, *written]],
        }
        try:
            write_atomic(self.results_path, json.dumps(results, indent=2, allow_nan=False) + "\n")
        except OSError:
            self._failed = True
            raise
        written.insert(0, self.results_path)
        for p in written:
            if p not in self._written:
                self._written.append(p)
        self._dirty = False
        return written

    def _plot(self, matrices: dict[str, list[list[float | None]]]) -> list[Path]:
        from clkernel_loggers.plots import accuracy_curves_figure, matrix_figure, save_figure

        written = []
        for stream, matrix in matrices.items():
            if not matrix or not matrix[0]:
                continue
            safe = _safe(stream)
            rows = [[math.nan if v is None else v for v in row] for row in matrix]
            heatmap = matrix_figure(rows, f"accuracy matrix ({stream} stream)", xlabel="evaluated experience j",
                                    ylabel="after training experience i", dpi=self.dpi, vmin=0.0, vmax=1.0)
            path = self.run_dir / f"accuracy_matrix_{safe}.png"
            save_figure(heatmap, path)
            written.append(path)
            curves = accuracy_curves_figure(rows, f"accuracy per experience ({stream} stream)", dpi=self.dpi)
            path = self.run_dir / f"accuracy_curves_{safe}.png"
            save_figure(curves, path)
            written.append(path)
        for name, fig in self._figures.items():
            path = self.run_dir / f"{_safe(name)}.png"
            if isinstance(fig, bytes):  # restored from a checkpoint
                write_atomic(path, fig)
            else:
                save_figure(fig, path)
            written.append(path)
        return written

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What the report was built from: ``final`` (name -> float), ``matrices`` / ``accuracy`` / ``initial``
        (name or stream -> CPU tensor), ``figures`` (name -> PNG bytes as a uint8 tensor), ``experiences_trained``
        (-1 for none yet), ``written`` (file names), ``dirty``. Tensors and plain containers only."""
        from clkernel_loggers.plots import figure_png

        figures: dict[str, torch.Tensor] = {}
        for name, fig in self._figures.items():
            cached = self._figure_pngs.get(name)
            if cached is None or cached[0] is not fig:  # render each figure once
                png = fig if isinstance(fig, bytes) else figure_png(fig)
                cached = self._figure_pngs[name] = (fig, torch.frombuffer(bytearray(png), dtype=torch.uint8))
            figures[name] = cached[1]
        return {"format": STATE_FORMAT, "logger": "report", "final": dict(self._final),
                "matrices": {k: _tensor(v) for k, v in self._matrices.items()},
                "accuracy": {k: _tensor(v) for k, v in self._accuracy.items()},
                "initial": {k: _tensor(v) for k, v in self._initial.items()}, "figures": figures,
                "experiences_trained": -1 if self._experiences_trained is None else int(self._experiences_trained),
                "written": [p.name for p in self._written], "dirty": self._dirty}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; ``results.json`` and the plots are rewritten from it when the
        resumed run starts (``before_run``, rank 0).

        :raises LoggerResumeError: when ``state`` is not a report's state_dict(), naming what is wrong.
        """
        if not isinstance(state, dict) or state.get("logger") != "report":
            raise LoggerResumeError("the report logger cannot resume from this state: it is not a report logger's "
                                    f"state_dict() ({type(state).__name__})")
        if state.get("format") != STATE_FORMAT:
            raise LoggerResumeError(f"the report logger cannot resume from this state: format "
                                    f"{state.get('format')!r}, this version reads format {STATE_FORMAT}")
        for name in state["written"]:
            if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
                raise LoggerResumeError(f"the report logger cannot resume from this state: {name!r} is not a file "
                                        f"name in the run folder")
        self._final = {str(k): float(v) for k, v in state["final"].items()}
        self._matrices = dict(state["matrices"])
        self._accuracy = dict(state["accuracy"])
        self._initial = dict(state["initial"])
        self._figures = {k: bytes(v.numpy().tobytes()) for k, v in state["figures"].items()}
        self._figure_pngs = {k: (self._figures[k], v) for k, v in state["figures"].items()}
        trained = int(state["experiences_trained"])
        self._experiences_trained = None if trained < 0 else trained
        self._written = [self.run_dir / name for name in state["written"]]
        self._dirty = bool(state["dirty"])
        self._status, self._error = "running", None


def _tensor(value: Any) -> torch.Tensor:
    """A matrix or vector received (a tensor on any device, or an array) as a CPU tensor."""
    return value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"
