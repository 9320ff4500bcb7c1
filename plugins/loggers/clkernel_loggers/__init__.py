"""clkernel-loggers: where metric values go. Progress bars, text, CSV, JSON lines, TensorBoard and a final report.

Every logger is a training plugin implementing the kernel's ``log_metrics(state, values)`` event; none imports
clkernel-metrics and none computes a metric: each displays or writes the values it receives. Values are
recognised by type and by the kernel's naming scheme (:mod:`clkernel.names`); names outside the scheme are
accepted and written as unstructured. The kernel calls ``log_metrics`` and ``output_files`` on rank 0 only, so
loggers open their files on the first value and never check the rank; ``after_run`` closes what they opened.

Names are imported on first use (``lazy_loader``), so that ``clkernel plugins``, which imports every entry point's
registration module, does not import torch through this package.
"""

import lazy_loader

__version__ = "0.2.0"

_EXPORTS = {
    "common": ["LoggerPathError", "LoggerResumeError", "LoggerWriteError", "metric_parts"],
    "files": ["CSV_COLUMNS", "CSVLogger", "JSONLLogger", "TextLogger"],
    "interactive": ["InteractiveLogger"],
    "report": ["ReportLogger"],
    "tensorboard": ["TensorBoardLogger"],
}

__getattr__, __dir__, _lazy_all = lazy_loader.attach(__name__, submod_attrs=_EXPORTS)

__all__ = sorted([*_lazy_all, "__version__"])
