"""The end-of-run report: ``results.json`` and PNG plots in the run folder, rewritten after every evaluation.

``clkernel run`` trains and evaluates one experience at a time, so there is no single end event: the report is
rewritten (atomically) after each ``eval()`` and is therefore always complete; :meth:`ReportLogger.close` writes
it a last time.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import clkernel
from clkernel import TrainState

from clkernel_loggers.common import (
    is_figure, is_matrix, prepare_dir, scalar, split_name, to_jsonable, versions, write_atomic,
)

__all__ = ["ReportLogger"]

MATRIX_METRIC = "accuracy_matrix_stream"
EXP_ACCURACY_METRIC = "acc_exp"


class ReportLogger:
    """Writes ``results.json`` (final metrics, accuracy matrices, configuration, versions) and, with ``plots``,
    ``accuracy_matrix_STREAM.png`` (heatmap) and ``accuracy_curves_STREAM.png`` (accuracy of each experience
    after each training experience) into ``run_dir``; only rank 0 writes.

    The accuracy matrix of a stream is the last ``accuracy_matrix_stream/eval/STREAM`` value when a metric logs
    it, else it is rebuilt from the ``acc_exp/eval/STREAM/expNNN`` values: row i holds those logged by the
    evaluation after training experience i. Figures logged by metrics are saved as ``NAME.png``.
    """

    name = "report"

    def __init__(self, run_dir: str | Path | None = None, config: dict[str, Any] | None = None,
                 plots: bool = True, dpi: int = 100) -> None:
        if not isinstance(dpi, int) or dpi < 10:
            raise ValueError(f"report: dpi must be an integer >= 10, got {dpi!r}")
        self.run_dir = prepare_dir(run_dir, "report")
        self.config = dict(config or {})
        self.plots, self.dpi = plots, dpi
        self.results_path = self.run_dir / "results.json"
        self._final: dict[str, Any] = {}
        self._matrices: dict[str, Any] = {}
        self._logged_matrix: dict[str, Any] = {}
        self._rebuilt: dict[str, dict[tuple[int, int], float]] = {}
        self._initial: dict[str, dict[int, float]] = {}
        self._figures: dict[str, Any] = {}
        self._trained: int | None = None
        self._in_experience = False
        self._written: list[Path] = []
        self._dirty = False
        self._versions: dict[str, Any] | None = None

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        if state.rank != 0:
            return
        for name, value in values.items():
            parts = split_name(name)
            v = scalar(value)
            if v is not None:
                self._final[name] = v
                if (parts["metric"] == EXP_ACCURACY_METRIC and parts["phase"] == "eval" and parts["exp"] is not None
                        and parts["task"] is None and parts["class"] is None and not self._in_experience):
                    if self._trained is None:
                        self._initial.setdefault(parts["stream"], {})[parts["exp"]] = v
                    else:
                        self._rebuilt.setdefault(parts["stream"], {})[self._trained, parts["exp"]] = v
            elif is_matrix(value):
                self._matrices[name] = value
                if parts["metric"] == MATRIX_METRIC:
                    self._logged_matrix[parts["stream"]] = value
            elif is_figure(value):
                self._figures[name] = value
        self._dirty = True

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._in_experience = True

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self._in_experience = False
        self._trained = state.experience.index if state.experience is not None else (self._trained or 0) + 1

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        if state.rank == 0 and not self._in_experience:
            self.write(state.experiences_trained)

    def close(self) -> None:
        """Write the report a last time if anything changed since the last write."""
        if self._dirty:
            self.write()

    # ------------------------------------------------------------------ report

    def accuracy_matrices(self) -> dict[str, list[list[float | None]]]:
        """Stream -> accuracy matrix (rows: after training experience i; columns: experience j; None: unknown)."""
        out: dict[str, list[list[float | None]]] = {}
        for stream in sorted(set(self._logged_matrix) | set(self._rebuilt)):
            if stream in self._logged_matrix:
                out[stream] = to_jsonable(self._logged_matrix[stream])
            else:
                entries = self._rebuilt[stream]
                rows = 1 + max(i for i, _ in entries)
                cols = 1 + max(j for _, j in entries)
                out[stream] = [[entries.get((i, j)) for j in range(cols)] for i in range(rows)]
        return out

    def files(self) -> list[Path]:
        """The files this logger has written (results.json and the plots)."""
        return list(self._written)

    def write(self, experiences_trained: int | None = None) -> list[Path]:
        """Write ``results.json`` and the plots now; returns the files written."""
        if self._versions is None:
            self._versions = versions(self.config)
        matrices = self.accuracy_matrices()
        written: list[Path] = []
        if self.plots:
            written += self._plot(matrices)
        results = {
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "experiences_trained": experiences_trained,
            "final_metrics": to_jsonable(self._final),
            "accuracy_matrix": {s: {"rows": "after training experience i", "columns": "evaluated experience j",
                                    "source": MATRIX_METRIC if s in self._logged_matrix else EXP_ACCURACY_METRIC,
                                    "values": m,
                                    "initial": to_jsonable([self._initial.get(s, {}).get(j)
                                                            for j in range(len(m[0]) if m else 0)])}
                                for s, m in matrices.items()},
            "matrices": {k: to_jsonable(v) for k, v in self._matrices.items()},
            "config": to_jsonable(self.config),
            "versions": self._versions,
            "files": [p.name for p in [self.results_path, *written]],
        }
        write_atomic(self.results_path, json.dumps(results, indent=2, allow_nan=False) + "\n")
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
            save_figure(fig, path)
            written.append(path)
        return written


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"
