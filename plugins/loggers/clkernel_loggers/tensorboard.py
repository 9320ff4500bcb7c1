"""TensorBoard event files through ``torch.utils.tensorboard``: scalars, matrices as heatmap images, figures,
the run's configuration (as text at the start, as hparams with the final metrics in ``after_run``).

The writer is created on the first value (in ``log_metrics``, which the kernel calls on rank 0 only), so other
ranks never create an event file. A write that fails (a full disk) raises
:class:`~clkernel_loggers.LoggerWriteError` naming the event file.

**Checkpoints.** ``state_dict()`` flushes the writer and records the size (and a digest of the end) of every event
file this logger wrote, the largest step written, and the last value of each scalar (for the hparams).
``load_state_dict()`` (on a fresh logger of the same folder, before the run starts) checks those files; when the
resumed run starts they are cut back to the checkpoint and event files created after it are removed, so the events
written after the checkpoint are gone from the disk. The resumed run writes a new event file, opened with
``SummaryWriter(purge_step=last step + 1)`` (a TensorBoard reader also hides any later event of an older file), and
continues at the loop's steps: each tag reads back with each step once, as in an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import clkernel
from clkernel import TrainState

from clkernel_loggers.common import (
    LoggerResumeError, LoggerWriteError, check_file_state, default_run_dir, file_state, flatten_config, is_figure,
    is_matrix, is_rank_zero, metric_parts, prepare_dir, remove_file, scalar, to_jsonable, truncate_file, writing,
)
from clkernel_loggers.plots import figure_to_array, matrix_figure

__all__ = ["STATE_FORMAT", "TensorBoardLogger"]

#: The version of the TensorBoard logger's ``state_dict()`` layout.
STATE_FORMAT = 1


class TensorBoardLogger:
    """Writes every value to TensorBoard event files in ``run_dir/subdir``.

    Numbers and one-element tensors become scalars (tag: the metric name, step: ``state.iteration``), 2-D tensors
    (the confusion and accuracy matrices) heatmap images (640 x 480 pixels), matplotlib figures images, strings
    text. ``after_run`` writes the configuration as hparams with the last value of every ``*_stream`` scalar
    (of every scalar when there is none) and closes the writer; a later value opens a new event file.

    :param run_dir: the run folder (default ``runs/<date-time>``); ``config``: the run's configuration.
    :raises LoggerPathError: when ``run_dir/subdir`` cannot be written.
    :raises LoggerWriteError: during the run, naming the event file, when a write fails (a full disk).
    """

    name = "tensorboard"

    def __init__(self, run_dir: str | Path | None = None, config: dict[str, Any] | None = None,
                 subdir: str = "tensorboard") -> None:
        base = Path(run_dir) if run_dir is not None else default_run_dir()
        self.log_dir = prepare_dir(base / subdir, "tensorboard")
        self.config = dict(config or {})
        self._writer: Any = None
        self._file: Path | None = None  # the open writer's event file
        self._files: list[Path] = []  # every event file this logger wrote, in order
        self._last: dict[str, float] = {}
        self._step = -1  # the largest step written
        self._config_written = False
        self._failed = False  # a write failed (and was reported)
        self._purge_step: int | None = None  # for the first writer of a resumed run
        self._resume: dict[str, Any] | None = None  # a loaded checkpoint, applied when the run starts

    def _event_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("events.out.tfevents.*"))

    def _target(self) -> Path:
        return self._file if self._file is not None else self.log_dir

    def _write_error(self, error: OSError) -> LoggerWriteError:
        self._failed = True
        return error if isinstance(error, LoggerWriteError) else LoggerWriteError("tensorboard", self._target(),
                                                                                  error)

    def _get_writer(self) -> Any:
        if self._writer is None:
            if self._resume is not None:
                self._apply_resume()
            from torch.utils.tensorboard import SummaryWriter

            before = set(self._event_files())
            with writing(self.log_dir, "tensorboard"):
                self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
            self._purge_step = None
            new = [p for p in self._event_files() if p not in before]
            self._file = new[0] if len(new) == 1 else None
            if self._file is not None:
                self._files.append(self._file)
            if self.config and not self._config_written:
                text = "```\n" + json.dumps(to_jsonable(self.config), indent=2) + "\n```"
                try:
                    self._writer.add_text("config", text, 0)
                except OSError as e:
                    raise self._write_error(e) from e
                self._config_written = True
                self._step = max(self._step, 0)
        return self._writer

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        writer = self._get_writer()
        step = state.iteration
        try:
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
                else:
                    continue
                if step > self._step:
                    self._step = step
        except OSError as e:
            raise self._write_error(e) from e

    def flush(self) -> None:
        """Write the queued events to the event file now.

        :raises LoggerWriteError: naming the event file when they cannot be written.
        """
        if self._writer is not None:
            try:
                self._writer.flush()
            except OSError as e:
                raise self._write_error(e) from e

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: TrainState) -> None:
        self.flush()

    @clkernel.hookimpl
    def before_run(self, state: TrainState) -> None:
        """A resumed run starts: cut the event files back to the checkpoint (rank 0)."""
        if self._resume is not None and state.rank == 0:
            self._apply_resume()

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Write the configuration as hparams, with the last value of each stream-level scalar, and close.

        :raises LoggerWriteError: naming the event file when it cannot be written (after a write that already
            failed and was reported, the writer is closed quietly).
        """
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        writer, self._writer, failed = self._writer, None, self._failed
        try:
            if not failed:
                final = {k: v for k, v in self._last.items()
                         if (parts := metric_parts(k)) is not None and parts.granularity == "stream"}
                final = final or dict(self._last)
                params = flatten_config(self.config) or {"run": str(self.log_dir.parent.name)}
                for summary in hparams(params, final):
                    writer.file_writer.add_summary(summary)
            writer.close()
        except OSError as e:
            if not failed:
                raise self._write_error(e) from e
        finally:
            self._file = None

    @clkernel.hookimpl
    def output_files(self, state: TrainState) -> list[Path]:
        """The event files this logger wrote (not those of earlier runs in the same folder), in order."""
        return [p for p in self._files if p.exists()]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Flush the writer and record: ``files`` (event file name -> ``{"size", "tail"}``), ``others`` (event
        files of the folder that are not this logger's), ``step`` (the largest step written, -1 for none),
        ``last`` (the last value of each scalar), ``config_written``. Plain containers only.

        :raises LoggerWriteError: naming the event file when it cannot be flushed or read.
        """
        if self._resume is not None:  # loaded and not applied yet: the checkpoint still describes the files
            return {**self._resume, "files": dict(self._resume["files"]), "others": list(self._resume["others"]),
                    "last": dict(self._resume["last"])}
        self.flush()
        files: dict[str, dict[str, Any]] = {}
        for path in self._files:
            with writing(path, "tensorboard"):
                files[path.name] = file_state(path)
        others = [p.name for p in self._event_files() if p.name not in files]
        return {"format": STATE_FORMAT, "logger": "tensorboard", "files": files, "others": others,
                "step": self._step, "last": dict(self._last), "config_written": self._config_written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state`` (:meth:`state_dict` of a TensorBoard logger of the same folder): check the event
        files now, cut them back when the run starts (``before_run``) or at the first value.

        :raises LoggerResumeError: naming the event file when one is missing, shorter than recorded or changed,
            or when ``state`` is not a TensorBoard logger's. Nothing is changed on disk then.
        """
        if not isinstance(state, dict) or state.get("logger") != "tensorboard":
            raise LoggerResumeError("the tensorboard logger cannot resume from this state: it is not a tensorboard "
                                    f"logger's state_dict() ({type(state).__name__})")
        if state.get("format") != STATE_FORMAT:
            raise LoggerResumeError(f"the tensorboard logger cannot resume from this state: format "
                                    f"{state.get('format')!r}, this version reads format {STATE_FORMAT}")
        files = state["files"]
        for name in files:
            if "/" in name or not name.startswith("events.out.tfevents."):
                raise LoggerResumeError(f"the tensorboard logger cannot resume from this state: {name!r} is not "
                                        f"an event file name")
        if is_rank_zero():
            for name, recorded in files.items():
                check_file_state(self.log_dir / name, recorded, "tensorboard")
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
            self._writer, self._file = None, None
        self._files = [self.log_dir / name for name in files]
        self._last = {str(k): float(v) for k, v in state["last"].items()}
        self._step = int(state["step"])
        self._config_written = bool(state["config_written"])
        self._failed = False
        self._resume = {"format": STATE_FORMAT, "logger": "tensorboard", "files": dict(files),
                        "others": list(state["others"]), "step": self._step, "last": dict(self._last),
                        "config_written": self._config_written}

    def _apply_resume(self) -> None:
        resume, self._resume = self._resume, None
        assert resume is not None
        keep = set(resume["files"]) | set(resume["others"])
        for name, recorded in resume["files"].items():
            truncate_file(self.log_dir / name, recorded["size"], "tensorboard")
        for path in self._event_files():
            if path.name not in keep:  # written after the checkpoint (by the run that was interrupted)
                remove_file(path, "tensorboard")
        self._purge_step = self._step + 1 if self._step >= 0 else None
