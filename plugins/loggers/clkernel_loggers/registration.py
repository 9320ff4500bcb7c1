"""Entry point of clkernel-loggers: registers the loggers that ``clkernel run --logger NAME`` accepts.

``run_dir`` and ``config`` are filled by ``clkernel run``. Cheap to import (no torch): the logger modules (and
matplotlib, tensorboard, tqdm) are imported inside the factories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import clkernel

__all__ = ["csv", "interactive", "jsonl", "register_loggers", "report", "tensorboard", "text"]


def interactive(stream: str = "stderr", bars: bool | None = None, run_dir: str | Path | None = None) -> Any:
    """Progress bars updated in place showing the values metrics log, a line per trained experience and per
    evaluation, and a summary table at the end of the run; plain lines when the output is not a terminal.

    stream: stderr or stdout. bars: force the bars on or off (default: on in a terminal). run_dir: named on the
    summary's last line.
    """
    from clkernel_loggers.interactive import InteractiveLogger

    return InteractiveLogger(stream=stream, bars=bars, run_dir=run_dir)


def text(run_dir: str | Path | None = None, filename: str = "log.txt") -> Any:
    """A human-readable log file in the run folder."""
    from clkernel_loggers.files import TextLogger

    return TextLogger(run_dir, filename=filename)


def csv(run_dir: str | Path | None = None) -> Any:
    """Scalars in CSV files, one per phase (metrics_train.csv, metrics_eval.csv), in the run folder."""
    from clkernel_loggers.files import CSVLogger

    return CSVLogger(run_dir)


def jsonl(run_dir: str | Path | None = None, filename: str = "metrics.jsonl") -> Any:
    """One JSON object per metric value (metrics.jsonl) in the run folder."""
    from clkernel_loggers.files import JSONLLogger

    return JSONLLogger(run_dir, filename=filename)


def tensorboard(run_dir: str | Path | None = None, config: dict | None = None, subdir: str = "tensorboard") -> Any:
    """TensorBoard event files in run_dir/subdir: scalars, matrices as images, the configuration as hparams."""
    if not isinstance(subdir, str) or not subdir.strip() or Path(subdir).is_absolute() or ".." in Path(subdir).parts:
        raise ValueError(f"tensorboard: subdir must be a folder name inside the run folder, got {subdir!r}")
    from clkernel_loggers.tensorboard import TensorBoardLogger

    return TensorBoardLogger(run_dir, config=config, subdir=subdir)


def report(run_dir: str | Path | None = None, config: dict | None = None, plots: bool = True,
           dpi: int = 100) -> Any:
    """results.json (final metrics, accuracy matrix, configuration, versions) and PNG plots in the run folder,
    rewritten after every evaluation; clkernel run prints the files it wrote."""
    from clkernel_loggers.report import ReportLogger

    return ReportLogger(run_dir, config=config, plots=plots, dpi=dpi)


@clkernel.hookimpl
def register_loggers(register: Callable[..., None]) -> None:
    """Register every logger; ``interactive`` and ``report`` are the defaults."""
    register("interactive", interactive, default=True)
    register("report", report, default=True)
    register("text", text)
    register("csv", csv)
    register("jsonl", jsonl)
    register("tensorboard", tensorboard)
