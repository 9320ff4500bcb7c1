"""Entry point of clkernel-wandb: registers the ``wandb`` logger that ``clkernel run --logger wandb`` accepts.

``run_dir`` and ``config`` are filled by ``clkernel run``. Cheap to import (neither torch nor wandb): the logger
module is imported inside the factory, and wandb itself when the first value arrives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import clkernel

__all__ = ["register_loggers", "wandb"]


def wandb(run_dir: str | Path | None = None, config: dict | None = None, project: str = "clkernel",
          entity: str | None = None, mode: str | None = None, name: str | None = None,
          tags: list[str] | str | None = None, group: str | None = None, dir: str | Path | None = None,
          run_id: str | None = None, log_plots: bool = True) -> Any:
    """Weights & Biases: scalars against the training iteration, the configuration, the accuracy matrix as a
    table, the run folder's plots as images; resumable (the W&B run id is in the logger's state).

    mode: online, offline or disabled (default: WANDB_MODE, else online). dir: where W&B writes its files (default:
    the run folder). name: the W&B run name (default: the run folder's name). tags: a list, or one string with
    tags separated by ';'. run_id: resume this W&B run. log_plots: upload the run folder's PNG files at the end.
    """
    from clkernel_wandb.logger import WandbLogger

    return WandbLogger(run_dir, config=config, project=project, entity=entity, mode=mode, name=name, tags=tags,
                       group=group, dir=dir, run_id=run_id, log_plots=log_plots)


@clkernel.hookimpl
def register_loggers(register: Callable[..., None]) -> None:
    """Register the ``wandb`` logger."""
    register("wandb", wandb)
