"""The W&B logger: a clkernel run as one Weights & Biases run.

What goes where:

* numbers and one-element tensors: history values (``run.log``), plotted against :data:`STEP_METRIC`, the training
  iterations so far (``state.iteration``), which every logged row carries. W&B's own ``_step`` counts ``log``
  calls; the iteration is the x-axis (``define_metric("*", step_metric="iteration")``), so evaluations logged at
  the same iteration, and a resumed run whose ``_step`` starts again, keep their place;
* 2-D tensors and arrays: ``wandb.Table`` (the accuracy matrix ``accuracy_matrix_stream/eval/STREAM`` with a
  column ``trained experience`` i and one column ``expNNN`` per evaluated experience j; other matrices with a
  column ``row`` and columns ``0``, ``1``...); 1-D tensors a table of one row; NaN and infinities become empty
  cells; matplotlib figures ``wandb.Image``; strings as they are. Any other value is skipped;
* the run's configuration (``clkernel run``'s, or the ``config`` given): the W&B config, as JSON-ready values;
* at the end (``after_run``): the run folder's ``*.png`` files (the report's plots) as images ``plots/NAME``; the
  outcome (``completed``, ``failed``, ``interrupted``) and the error in the summary; then the W&B run is finished
  with exit code 0, 1 or 255 (:data:`EXIT_CODES`; W&B shows a non-zero code as failed, 255 is its code for
  Ctrl-C).

The W&B run starts with the first value (``log_metrics``, which the kernel fires on rank 0 only), never when the
logger is built, so other ranks start nothing and a checkpoint's :meth:`WandbLogger.load_state_dict` (called
after construction, before the run) decides which W&B run is continued.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import clkernel
from clkernel import TrainState

__all__ = ["EXIT_CODES", "INITIAL_METRIC", "MATRIX_METRIC", "MODES", "STEP_METRIC", "WandbLogger", "check_folder",
           "jsonable", "table_of"]

#: The values of the ``mode`` option (None: W&B's own choice, ``WANDB_MODE`` or else ``online``).
MODES = ("online", "offline", "disabled")
#: The W&B exit code of each run outcome (``state.outcome``).
EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 255}
#: The history key holding ``state.iteration``, the x-axis of every value.
STEP_METRIC = "iteration"
#: The first part of the accuracy matrices' names, and of the initial accuracies' (clkernel-metrics' names).
MATRIX_METRIC = "accuracy_matrix_stream"
#: The first part of the names of the initial accuracies (before any training), clkernel-metrics' names.
INITIAL_METRIC = "accuracy_initial_stream"

_WHO = "wandb"
_RESERVED = re.compile(r"[/\\#?%:]")  # characters W&B refuses in project, entity and run ids
_MAX_TAG = 64  # W&B's limit on the length of one tag


def _fail(option: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{_WHO}: {option} must be {what}, got {value!r}")


def _text(value: Any, option: str, *, identifier: bool = False) -> str | None:
    """None, or a non-empty string (without ``/\\#?%:`` for an identifier)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise _fail(option, "a non-empty string", value)
    if identifier and (_RESERVED.search(value) or len(value) > 128):
        raise _fail(option, "at most 128 characters, none of / \\ # ? % :", value)
    return value


def _tags(value: Any) -> tuple[str, ...]:
    """A list or tuple of tags, or one string of tags separated by ``;`` or ``,``."""
    if value is None:
        return ()
    items = re.split(r"[;,]", value) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise _fail("tags", "a list of strings, or one string of tags separated by ';'", value)
    tags = tuple(t.strip() for t in items if t.strip())
    for tag in tags:
        if len(tag) > _MAX_TAG:
            raise _fail("tags", f"tags of at most {_MAX_TAG} characters", tag)
    return tags


def check_folder(path: Any, option: str) -> Path:
    """``path`` as a Path, if it is a folder that exists or could be created, and written to.

    Looks only: nothing is created. :raises ValueError: naming the option, when ``path`` is not a path, or when
        it or its nearest existing parent is a file or cannot be written.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise _fail(option, "a folder path", path)
    folder = Path(path)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{_WHO}: {option} {str(folder)!r} cannot be a folder: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{_WHO}: {option} {str(folder)!r} cannot be written: {str(existing)!r} is not writable")
    return folder


def _is_array(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or type(value).__module__ == "numpy"


def _scalar(value: Any) -> float | None:
    """``value`` as a float when it is a number or a one-element tensor / array, else None."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else None
    if type(value).__module__ == "numpy" and getattr(value, "size", 0) == 1:
        return float(value)
    return None


def _is_figure(value: Any) -> bool:
    """A matplotlib figure (recognised without importing matplotlib)."""
    return any(c.__name__ == "Figure" and c.__module__.startswith("matplotlib") for c in type(value).__mro__)


def _cell(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of a configuration: paths become strings, tensors and arrays lists, non-finite numbers
    None, other objects their ``str``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return _cell(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if _is_array(value):
        return jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)


def table_of(name: str, value: Any) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the table that shows a 1-D or 2-D tensor or array ``value`` logged as ``name``.

    The accuracy matrix (:data:`MATRIX_METRIC`, rows: after training experience i; columns: evaluated experience
    j) gets columns ``trained experience``, ``exp000``, ``exp001``...; the initial accuracies (1-D,
    :data:`INITIAL_METRIC`) ``exp000``...; other matrices ``row``, ``0``, ``1``..., other vectors ``0``, ``1``....
    NaN and infinities become None (an empty cell).
    """
    rows = value.detach().cpu().tolist() if isinstance(value, torch.Tensor) else value.tolist()
    try:
        metric = clkernel.parse_metric_name(name).metric
    except ValueError:  # a name outside the scheme: a plain table
        metric = None
    if value.ndim == 1:
        labels = [f"exp{j:03d}" if metric == INITIAL_METRIC else str(j) for j in range(len(rows))]
        return labels, [[_cell(v) for v in rows]]
    width = len(rows[0]) if rows else 0
    if metric == MATRIX_METRIC:
        return (["trained experience", *(f"exp{j:03d}" for j in range(width))],
                [[i, *(_cell(v) for v in row)] for i, row in enumerate(rows)])
    return ["row", *(str(j) for j in range(width))], [[i, *(_cell(v) for v in row)] for i, row in enumerate(rows)]


class WandbLogger:
    """Sends every value to one W&B run, started with the first value and finished by ``after_run``.

    :param run_dir: the run folder: W&B writes into ``run_dir/wandb`` (unless ``dir`` is given), its name is the
        default W&B run name, and its ``*.png`` files are uploaded at the end. None: W&B's own folder
        (``WANDB_DIR``, else ``./wandb``), no plots.
    :param config: the run's configuration (``clkernel run`` gives its own), sent as the W&B config.
    :param project: the W&B project. ``entity``: the team or user (default: W&B's default entity).
    :param mode: ``online``, ``offline`` (files only, ``wandb sync`` uploads them later) or ``disabled``
        (nothing written); None: ``WANDB_MODE``, else ``online``.
    :param name: the W&B run name (default: the run folder's name). ``tags``: a list of strings, or one string
        with tags separated by ``;`` (each at most 64 characters). ``group``: the W&B group (seeds of one
        configuration, say).
    :param dir: the folder W&B writes into (``dir/wandb/...``); default ``run_dir``.
    :param run_id: continue this W&B run (``resume="allow"``); a checkpoint's state (:meth:`load_state_dict`)
        sets it too.
    :param log_plots: upload the run folder's PNG files (the report's plots) at the end.
    :raises ValueError: naming the option, for a mode outside :data:`MODES`, an empty or non-string name, a
        project, entity or run id holding ``/\\#?%:``, a tag that is too long, a folder (``dir``, ``run_dir``)
        that is, or is inside, a file or cannot be written, a ``config`` that is not a mapping. Nothing is
        created when the logger is built.
    """

    name = "wandb"

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, *, config: Mapping[str, Any] | None = None,
                 project: str = "clkernel", entity: str | None = None, mode: str | None = None,
                 name: str | None = None, tags: list[str] | tuple[str, ...] | str | None = None,
                 group: str | None = None, dir: str | os.PathLike[str] | None = None, run_id: str | None = None,
                 log_plots: bool = True) -> None:
        if mode is not None and mode not in MODES:
            raise _fail("mode", f"one of {', '.join(MODES)} (or None: WANDB_MODE, else online)", mode)
        if config is not None and not isinstance(config, Mapping):
            raise _fail("config", "a mapping (the run's configuration)", config)
        if not isinstance(log_plots, bool):
            raise _fail("log_plots", "True or False", log_plots)
        self.mode = mode
        self.project = _text(project, "project", identifier=True)
        self.entity = _text(entity, "entity", identifier=True)
        self.group = _text(group, "group")
        self.tags = _tags(tags)
        self.run_dir = check_folder(run_dir, "run_dir") if run_dir is not None else None
        self.dir = check_folder(dir, "dir") if dir is not None else self.run_dir
        self.run_name = _text(name, "name") or (self.run_dir.resolve().name if self.run_dir is not None else None)
        self.config = dict(config or {})
        self.log_plots = log_plots
        self._run_id = _text(run_id, "run_id", identifier=True)
        self._run: Any = None
        self._folders: list[Path] = []
        self._step = 0

    # ------------------------------------------------------------------ the W&B run

    @property
    def run(self) -> Any:
        """The open ``wandb`` run, or None (before the first value, and after ``after_run``)."""
        return self._run

    @property
    def run_id(self) -> str | None:
        """The W&B run id: the one continued or started, or None before the first value."""
        return self._run_id

    def _open(self) -> Any:
        import wandb

        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, name=self.run_name,
                         tags=list(self.tags) or None, group=self.group,
                         dir=str(self.dir) if self.dir is not None else None,
                         id=self._run_id, resume="allow" if self._run_id is not None else None,
                         config=jsonable(self.config) or None, reinit="create_new")
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
        self._run, self._run_id = run, run.id
        folder = Path(run.dir).parent  # run.dir is the run folder's files/
        if folder.is_dir() and folder not in self._folders:
            self._folders.append(folder)
        return run

    def _convert(self, name: str, value: Any) -> Any:
        v = _scalar(value)
        if v is not None:
            return v
        if isinstance(value, str):
            return value
        if _is_array(value) and value.ndim in (1, 2) and (value.numel() if isinstance(value, torch.Tensor)
                                                           else value.size) > 0:
            import wandb

            columns, rows = table_of(name, value)
            return wandb.Table(columns=columns, data=rows)
        if _is_figure(value):  # rendered here: wandb.Image(figure) needs matplotlib.pyplot imported
            import wandb
            from PIL import Image

            buffer = io.BytesIO()
            value.savefig(buffer, format="png")
            buffer.seek(0)
            return wandb.Image(Image.open(buffer))
        return None

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        run = self._run if self._run is not None else self._open()
        data = {}
        for name, value in values.items():
            converted = self._convert(name, value)
            if converted is not None:
                data[name] = converted
        if data:
            self._step = data[STEP_METRIC] = state.iteration
            run.log(data)

    # trylast: after every other plugin's after_run, so that the report's last plots are written
    @clkernel.hookimpl(trylast=True)
    def after_run(self, state: TrainState) -> None:
        """Upload the run folder's plots, record the outcome and finish the W&B run (its exit code says how the
        run ended). Nothing happens when no value was logged (no W&B run started, as on ranks other than 0)."""
        run, self._run = self._run, None
        if run is None:
            return
        outcome = getattr(state, "outcome", "completed")
        outcome = "completed" if outcome == "running" else outcome
        try:
            run.summary["outcome"] = outcome
            run.summary["error"] = getattr(state, "error", None)
            plots = sorted(p for p in self.run_dir.glob("*.png") if p.is_file()) if (
                self.log_plots and self.run_dir is not None) else []
            if plots:
                import wandb

                images: dict[str, Any] = {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}
                images[STEP_METRIC] = self._step
                run.log(images)
        finally:
            run.finish(exit_code=EXIT_CODES.get(outcome, 1))

    @clkernel.hookimpl
    def output_files(self, state: TrainState) -> list[Path]:
        """The local folders of the W&B runs this logger wrote (``.../wandb/run-*`` or ``offline-run-*``)."""
        return [p for p in self._folders if p.exists()]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, str | None]:
        """``{"run_id": the W&B run id, or None before the first value}`` (plain strings)."""
        return {"run_id": self._run_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the W&B run of ``state["run_id"]`` when the next value arrives (``resume="allow"``); None
        (a checkpoint taken before the first value, with no ``run_id`` option) starts a new one.

        :raises ValueError: when ``state`` holds no valid ``run_id``.
        :raises RuntimeError: when a W&B run is already open (load checkpoints before the run starts).
        """
        if not isinstance(state, Mapping) or "run_id" not in state:
            raise ValueError(f"{_WHO}: a state dict holds 'run_id', got {state!r}")
        if self._run is not None:
            raise RuntimeError(f"{_WHO}: load_state_dict must be called before the run starts; W&B run "
                               f"{self._run_id!r} is open")
        self._run_id = _text(state["run_id"], "run_id", identifier=True)
