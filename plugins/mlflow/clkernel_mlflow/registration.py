"""Entry point of clkernel-mlflow: registers the ``mlflow`` logger that ``clkernel run --logger mlflow`` accepts.

``run_dir`` and ``config`` are filled by ``clkernel run``. Cheap to import (neither torch nor mlflow): the logger
module is imported inside the factory, and mlflow itself when the first value arrives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import clkernel

__all__ = ["mlflow", "register_loggers"]


def mlflow(run_dir: str | Path | None = None, config: dict | None = None, tracking_uri: str | None = None,
           experiment: str = "clkernel", run_name: str | None = None, run_id: str | None = None,
           artifacts: bool = True) -> Any:
    """MLflow: scalars with the training iteration as step, the configuration as parameters, matrices and figures,
    and the run folder's files as artifacts at the end; resumable (the MLflow run id is in the logger's state).

    tracking_uri: default MLFLOW_TRACKING_URI, else a file store in the run folder (file:RUN/mlruns). run_name:
    default the run folder's name. run_id: continue this MLflow run. artifacts: upload the run folder at the end.
    """
    from clkernel_mlflow.logger import MlflowLogger

    return MlflowLogger(run_dir, config=config, tracking_uri=tracking_uri, experiment=experiment,
                        run_name=run_name, run_id=run_id, artifacts=artifacts)


@clkernel.hookimpl
def register_loggers(register: Callable[..., None]) -> None:
    """Register the ``mlflow`` logger."""
    register("mlflow", mlflow)
