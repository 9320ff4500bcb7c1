"""TensorBoard event files through ``torch.utils.tensorboard``: scalars, matrices as heatmap images, figures,
the run's configuration (as text at the start, as hparams with the final metrics in ``after_run``).

The writer is created on the first value (in ``log_metrics``, which the kernel calls on rank 0 only), so other
ranks never create an event file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import clkernel
from clkernel import TrainState

from clkernel_loggers.common import (
    default_run_dir, flatten_config, is_figure, is_matrix, metric_parts, prepare_dir, scalar, to_jsonable,
)
from clkernel_loggers.plots import figure_to_array, matrix_figure

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Writes every value to TensorBoard event files in ``run_dir/subdir``.

    Numbers and one-element tensors become scalars (tag: the metric name, step: ``state.iteration``), 2-D tensors
    (the confusion and accuracy matrices) heatmap images (640 x 480 pixels), matplotlib figures images, strings
    text. ``after_run`` writes the configuration as hparams with the last value of every ``*_stream`` scalar
    (of every scalar when there is none) and closes the writer; a later value opens a new event file.

    :param run_dir: the run folder (default ``runs/<date-time>``); ``config``: the run's configuration.
    :raises LoggerPathError: when ``run_dir/subdir`` cannot be written.
    """

    name = "tensorboard"

    def __init__(self, run_dir: str | Path | None = None, config: dict[str, Any] | None = None,
                 subdir: str = "tensorboard") -> None:
        base = Path(run_dir) if run_dir is not None else default_run_dir()
        self.log_dir = prepare_dir(base / subdir, "tensorboard")
        self.config = dict(config or {})
        self._writer: Any = None
        self._last: dict[str, float] = {}
        self._before = set(self._event_files())  # event files of earlier runs in the same folder

    def _event_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("events.out.tfevents.*"))

    def _get_writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
            if self.config:
                text = "```\n" + json.dumps(to_jsonable(self.config), indent=2) + "\n```"
                self._writer.add_text("config", text, 0)
        return self._writer

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        writer = self._get_writer()
        step = state.iteration
        for name, value in values.items():
            v = scalar(value)
            if v is not None:
                writer.add_scalar(name, v, step)
                self._last[name] = v
            elif is_matrix(value):
                writer.add_image(name, figure_to_array(matrix_figure(value, name)), step, dataformats="HWC")
            elif is_figure(value):
                writer.add_image(name, figure_to_array(value), step, dataformats="HWC")
            elif isinstance(value, str):
                writer.add_text(name, value, step)

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.flush()

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.flush()

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Write the configuration as hparams, with the last value of each stream-level scalar, and close."""
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        final = {k: v for k, v in self._last.items()
                 if (parts := metric_parts(k)) is not None and parts.granularity == "stream"} or dict(self._last)
        params = flatten_config(self.config) or {"run": str(self.log_dir.parent.name)}
        for summary in hparams(params, final):
            self._writer.file_writer.add_summary(summary)
        self._writer.close()
        self._writer = None

    @clkernel.hookimpl
    def output_files(self, state: TrainState) -> list[Path]:
        """The event files this logger wrote (not those of earlier runs in the same folder)."""
        return [p for p in self._event_files() if p not in self._before]
