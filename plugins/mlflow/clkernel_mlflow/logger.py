"""The MLflow logger: a clkernel run as one MLflow run, through ``mlflow.tracking.MlflowClient``.

What goes where:

* numbers and one-element tensors: MLflow metrics, with the training iterations so far (``state.iteration``) as
  the step and the wall time of the ``log_metrics`` call as the timestamp. They are buffered and sent in batches
  (``log_batch``) at the end of every epoch, experience and evaluation, at 1,000 pending values, and at the end;
* the run's configuration: MLflow parameters (:func:`params_of`: nested keys joined with ``.``, lists as JSON);
* 2-D and 1-D tensors (the accuracy matrix, a confusion matrix, the initial accuracies): the last value of each,
  as a JSON artifact ``matrices/NAME.json`` (``{"name", "columns", "data"}``, NaN as null), and matplotlib
  figures as ``figures/NAME.png``, written at the end; strings as tags;
* at the end (``after_run``, after every other plugin's, also when the run failed or was interrupted): the run
  folder's files as artifacts (without the tracking store when it lies inside it), the tags
  ``clkernel.outcome`` and ``clkernel.error``, and the MLflow run status (:data:`STATUSES`: ``FINISHED``,
  ``FAILED``, ``KILLED``).

The MLflow run starts with the first value (``log_metrics``, which the kernel fires on rank 0 only), never when the
logger is built, so other ranks start nothing and a checkpoint's :meth:`MlflowLogger.load_state_dict` (called after
construction, before the run) decides which MLflow run is continued.

MLflow 3 refuses its file store (``file:`` URIs, plain paths) unless ``MLFLOW_ALLOW_FILE_STORE=true``: the file
store is still supported, in maintenance mode. A file store is this logger's default, so the logger opts in for
that store only, while it builds its client (MLflow caches the store); the environment is left as it was. Reading
the store back in another process (``mlflow ui``, ``MlflowClient``) needs the variable set.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

import clkernel
from clkernel import TrainState
from clkernel.log import get_logger

__all__ = ["BATCH_METRICS", "BATCH_PARAMS", "MATRIX_METRIC", "STATUSES", "MlflowLogger", "check_folder", "metric_key",
           "params_of"]

#: The MLflow run status of each run outcome (``state.outcome``).
STATUSES = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: Metric values sent in one ``log_batch`` call at most (MLflow's limit).
BATCH_METRICS = 1000
#: Parameters sent in one ``log_batch`` call at most (MLflow's limit).
BATCH_PARAMS = 100
#: The first part of the accuracy matrices' names (clkernel-metrics' naming scheme).
MATRIX_METRIC = "accuracy_matrix_stream"
_WHO = "mlflow"
_MAX_KEY, _MAX_TAG = 250, 5000
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][\w\-]{0,255}$")

log = get_logger("clkernel.mlflow")


def _fail(option: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{_WHO}: {option} must be {what}, got {value!r}")


def _text(value: Any, option: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise _fail(option, "a non-empty string", value)
    return value


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


def _local_store(uri: str) -> Path | None:
    """The folder of a local file store URI (``file:...`` or a plain path), else None."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return None
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # a path (or a Windows drive)
        return Path(uri)
    return None


def _check_uri(uri: Any) -> str:
    """``uri`` as MLflow takes it: a plain path becomes an absolute ``file:`` URI; a local file store's folder is
    checked (it may not exist yet); other schemes (``http(s)``, ``sqlite``, ``databricks``...) are MLflow's to
    check when the run starts."""
    if not isinstance(uri, str) or not uri.strip() or "\x00" in uri:
        raise _fail("tracking_uri", "a tracking URI (file:PATH, a folder, http(s)://..., sqlite:///...)", uri)
    store = _local_store(uri)
    if store is not None:
        check_folder(store, "tracking_uri")
        return store.resolve().as_uri()
    scheme = urllib.parse.urlparse(uri).scheme
    if not _SCHEME.match(scheme):
        raise _fail("tracking_uri", "a tracking URI (file:PATH, a folder, http(s)://..., sqlite:///...)", uri)
    return uri


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """``MLFLOW_ALLOW_FILE_STORE=true`` while MLflow builds the store of a local ``file:`` URI (MLflow 3 refuses
    its file store otherwise), the environment restored afterwards."""
    if _local_store(uri) is None or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric or parameter key: every character other than letters, digits, ``_ - . /`` and
    spaces becomes ``_``; empty, ``.`` and ``..`` path parts are dropped or replaced, so that MLflow accepts the
    key; at most 250 characters. Names of the clkernel scheme (``acc_exp/eval/test/exp002``) are unchanged."""
    key = re.sub(r"[^\w.\- /]", "_", str(name))
    key = "/".join("_" if part in (".", "..") else part for part in key.split("/") if part)
    return key[:_MAX_KEY] or "_"


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return str(value)
    return json.dumps(_jsonable(value))


def params_of(config: Mapping[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """MLflow parameters of a configuration: ``{"model": {"hidden": 32}, "plugin": ["replay"]}`` ->
    ``{"model.hidden": "32", "plugin": '["replay"]'}``: nested mappings joined with ``.``, strings and numbers
    as ``str``, paths as strings, lists and other values as JSON; keys through :func:`metric_key`."""
    out: dict[str, str] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(params_of(value, name + "."))
        else:
            out[metric_key(name)] = _param_value(value)
    return out


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


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if _is_array(value):
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def _matrix_document(name: str, value: Any) -> dict[str, Any]:
    rows = _jsonable(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    try:
        metric = clkernel.parse_metric_name(name).metric
    except ValueError:
        metric = None
    if metric == MATRIX_METRIC:
        return {"name": name, "rows": "after training experience i", "columns": "evaluated experience j",
                "data": rows}
    return {"name": name, "data": rows}


def _safe_file(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


class MlflowLogger:
    """Records every value in one MLflow run, started with the first value and ended by ``after_run``.

    :param run_dir: the run folder: the default tracking store is ``run_dir/mlruns``, its name is the default run
        name, and its files are uploaded as artifacts at the end. None: ``./mlruns``, no artifacts.
    :param config: the run's configuration (``clkernel run`` gives its own), logged as parameters.
    :param tracking_uri: where MLflow records the run: ``file:PATH`` or a folder (a local file store), an
        ``http(s)://`` tracking server, ``sqlite:///...`` (needs SQLAlchemy) or any URI MLflow takes. Default:
        ``MLFLOW_TRACKING_URI``, else ``file:<run_dir>/mlruns``.
    :param experiment: the MLflow experiment's name (created when missing).
    :param run_name: the MLflow run name (default: the run folder's name).
    :param run_id: continue this MLflow run (its status goes back to ``RUNNING``); a checkpoint's state
        (:meth:`load_state_dict`) sets it too.
    :param artifacts: upload the run folder's files (results.json, plots, event files...) at the end.
    :raises ValueError: naming the option, for an empty name or experiment, a run id MLflow would refuse, a
        tracking URI that is not one, a local store or run folder that is, or lies inside, a file or cannot be
        written, a ``config`` that is not a mapping. Nothing is created when the logger is built.
    """

    name = "mlflow"

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, *, config: Mapping[str, Any] | None = None,
                 tracking_uri: str | None = None, experiment: str = "clkernel", run_name: str | None = None,
                 run_id: str | None = None, artifacts: bool = True) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise _fail("config", "a mapping (the run's configuration)", config)
        if not isinstance(artifacts, bool):
            raise _fail("artifacts", "True or False", artifacts)
        self.run_dir = check_folder(run_dir, "run_dir") if run_dir is not None else None
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or str(
                (self.run_dir if self.run_dir is not None else Path()) / "mlruns")
        self.tracking_uri = _check_uri(tracking_uri)
        self.experiment = _text(experiment, "experiment")
        self.run_name = _text(run_name, "run_name") or (
            self.run_dir.resolve().name if self.run_dir is not None else None)
        run_id = _text(run_id, "run_id")
        if run_id is not None and not _RUN_ID.match(run_id):
            raise _fail("run_id", "an MLflow run id (letters, digits, _ and -)", run_id)
        self.config = dict(config or {})
        self.artifacts = artifacts
        self._run_id = run_id
        self._client: Any = None
        self._pending: list[Any] = []
        self._matrices: dict[str, Any] = {}
        self._figures: dict[str, Any] = {}
        self._folders: list[Path] = []

    # ------------------------------------------------------------------ the MLflow run

    @property
    def run_id(self) -> str | None:
        """The MLflow run id: the one continued or started, or None before the first value."""
        return self._run_id

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` of the open run, or None (before the first value, and after ``after_run``)."""
        return self._client

    def _open(self) -> Any:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        with _file_store_allowed(self.tracking_uri):
            client = MlflowClient(self.tracking_uri)
        existing: dict[str, str] = {}
        if self._run_id is not None:
            try:
                run = client.get_run(self._run_id)
            except MlflowException as e:
                raise ValueError(f"{_WHO}: cannot continue run {self._run_id!r}: it is not in the tracking store "
                                 f"{self.tracking_uri} ({e.message})") from e
            if run.info.lifecycle_stage == "deleted":
                raise ValueError(f"{_WHO}: cannot continue run {self._run_id!r}: it is deleted in "
                                 f"{self.tracking_uri}")
            client.update_run(self._run_id, status="RUNNING")
            existing = dict(run.data.params)
        else:
            tags = {"mlflow.source.name": "clkernel", "mlflow.source.type": "LOCAL",
                    "clkernel.version": clkernel.__version__}
            run = client.create_run(self._experiment_id(client), run_name=self.run_name, tags=tags)
            self._run_id = run.info.run_id
        self._client = client
        self._log_params(existing)
        store = _local_store(self.tracking_uri)
        if store is not None:
            folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(run.info.artifact_uri).path)).parent
            if folder.is_dir() and folder not in self._folders:
                self._folders.append(folder)
        return client

    def _experiment_id(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment)
            except MlflowException:  # created meanwhile by another process
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"{_WHO}: experiment {self.experiment!r} is deleted in {self.tracking_uri}: restore "
                             f"it (mlflow experiments restore) or choose another experiment name")
        return experiment.experiment_id

    def _log_params(self, existing: dict[str, str]) -> None:
        """Log the configuration's parameters; a continued run keeps the values it has (MLflow parameters cannot
        change): new keys are added, changed ones reported by a warning."""
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:  # an MLflow without the constant: its oldest limit
            limit = 500
        params = {k: v[:limit] for k, v in params_of(self.config).items()}
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.warning("mlflow_params_kept", run_id=self._run_id, params=changed,
                        message=f"MLflow run {self._run_id} keeps its parameters {', '.join(changed)} (MLflow "
                                f"parameters cannot change); the new values are not logged")
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), BATCH_PARAMS):
            self._client.log_batch(self._run_id, params=new[start:start + BATCH_PARAMS])

    def flush(self) -> None:
        """Send the buffered metric values now (nothing when none is pending)."""
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), BATCH_METRICS):
            self._client.log_batch(self._run_id, metrics=pending[start:start + BATCH_METRICS])

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        client = self._client if self._client is not None else self._open()
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for name, value in values.items():
            v = _scalar(value)
            if v is not None:
                self._pending.append(Metric(metric_key(name), v, now, state.iteration))
            elif _is_array(value) and value.ndim in (1, 2):
                self._matrices[name] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
            elif _is_figure(value):
                self._figures[name] = value
            elif isinstance(value, str):
                client.set_tag(self._run_id, metric_key(name), value[:_MAX_TAG])
        if len(self._pending) >= BATCH_METRICS:
            self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_training_epoch(self, state: TrainState) -> None:
        if self._client is not None:
            self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: TrainState) -> None:
        if self._client is not None:
            self.flush()

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        if self._client is not None:
            self.flush()

    # trylast: after every other plugin's after_run, so that the files they close and write are uploaded complete
    @clkernel.hookimpl(trylast=True)
    def after_run(self, state: TrainState) -> None:
        """Send what is pending, the matrices and figures, the run folder as artifacts, the outcome, and end the
        MLflow run with its status. Nothing happens when no value was logged (no MLflow run started, as on ranks
        other than 0)."""
        client = self._client
        if client is None:
            return
        outcome = getattr(state, "outcome", "completed")
        outcome = "completed" if outcome == "running" else outcome
        try:
            self.flush()
            for name, value in self._matrices.items():
                client.log_dict(self._run_id, _matrix_document(name, value), f"matrices/{_safe_file(name)}.json")
            for name, figure in self._figures.items():
                client.log_figure(self._run_id, figure, f"figures/{_safe_file(name)}.png")
            client.set_tag(self._run_id, "clkernel.outcome", outcome)
            error = getattr(state, "error", None)
            if error:
                client.set_tag(self._run_id, "clkernel.error", str(error)[:_MAX_TAG])
            if self.artifacts and self.run_dir is not None:
                self._upload_run_folder(client)
        finally:
            self._client = None
            self._matrices, self._figures = {}, {}
            client.set_terminated(self._run_id, STATUSES.get(outcome, "FAILED"))

    def _upload_run_folder(self, client: Any) -> None:
        """Every file of the run folder, keeping its relative path, except hidden files and the tracking store
        (when it lies inside the run folder)."""
        store = _local_store(self.tracking_uri)
        if store is None and self.tracking_uri.startswith("sqlite:///"):
            store = Path(self.tracking_uri[len("sqlite:///"):])
        skip = store.resolve() if store is not None else None
        root = self.run_dir.resolve()  # type: ignore[union-attr]
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip)
            relative = here.relative_to(root)
            for name in sorted(files):
                path = here / name
                if name.startswith(".") or path.resolve() == skip:
                    continue
                client.log_artifact(self._run_id, str(path), None if relative == Path() else relative.as_posix())

    @clkernel.hookimpl
    def output_files(self, state: TrainState) -> list[Path]:
        """The MLflow run's folder in a local file store (``mlruns/EXPERIMENT_ID/RUN_ID``), else nothing."""
        return [p for p in self._folders if p.exists()]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, str | None]:
        """``{"run_id": the MLflow run id, or None before the first value}`` (plain strings)."""
        return {"run_id": self._run_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the MLflow run of ``state["run_id"]`` when the next value arrives; None (a checkpoint taken
        before the first value, with no ``run_id`` option) starts a new one.

        :raises ValueError: when ``state`` holds no valid ``run_id``.
        :raises RuntimeError: when an MLflow run is already open (load checkpoints before the run starts).
        """
        if not isinstance(state, Mapping) or "run_id" not in state:
            raise ValueError(f"{_WHO}: a state dict holds 'run_id', got {state!r}")
        if self._client is not None:
            raise RuntimeError(f"{_WHO}: load_state_dict must be called before the run starts; MLflow run "
                               f"{self._run_id!r} is open")
        run_id = _text(state["run_id"], "run_id")
        if run_id is not None and not _RUN_ID.match(run_id):
            raise _fail("run_id", "an MLflow run id (letters, digits, _ and -)", run_id)
        self._run_id = run_id

