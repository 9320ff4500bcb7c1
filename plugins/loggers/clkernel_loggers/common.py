"""What every logger shares: checking its folder at construction, recognising values, reading names.

Loggers never import clkernel-metrics: they recognise values by type (numbers and one-element tensors are
scalars, 1-D tensors vectors, 2-D tensors matrices, matplotlib figures figures) and read names of the kernel's
scheme ``QUANTITY_GRANULARITY/PHASE/STREAM[/expNNN][/taskNNN][/classNNN]`` with
:func:`clkernel.parse_metric_name`. A name outside the scheme (a third-party metric's) is accepted too: its
value is written as unstructured (:func:`metric_parts` gives None).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from clkernel.names import MetricName, parse_metric_name

__all__ = ["LoggerPathError", "check_filename",
           "default_run_dir", "flatten_config", "is_figure", "is_matrix", "is_vector",
           "metric_parts", "prepare_dir", "scalar", "to_jsonable", "versions", "write_atomic"]


class LoggerPathError(OSError, ValueError):
    """A logger cannot write where it was asked to; raised when the logger is built, before any training.

    Also a :class:`ValueError`: a path option that cannot be used is a bad option (``clkernel run`` reports it
    as a usage error, exit code 2).
    """


_RUN_DIR: Path | None = None


def default_run_dir() -> Path:
    """``runs/<date-time>``, the same for every logger of this process that is given no ``run_dir``."""
    global _RUN_DIR
    if _RUN_DIR is None:
        _RUN_DIR = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    return _RUN_DIR


def prepare_dir(path: str | os.PathLike[str] | None, who: str) -> Path:
    """Create ``path`` (or the default run folder) and check that a file can be written in it.

    :raises LoggerPathError: naming the logger and the path, when the folder cannot be created or written.
    """
    folder = Path(path) if path is not None else default_run_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".clkernel-write-test-{os.getpid()}"
        with open(probe, "w") as f:
            f.write("ok")
        probe.unlink()
    except OSError as e:
        raise LoggerPathError(f"the {who} logger cannot write to {str(folder)!r}: "
                              f"{e.strerror or type(e).__name__}"
                              f"{f' ({e.filename})' if e.filename and str(e.filename) != str(folder) else ''}"
                              ) from e
    return folder


def check_filename(filename: Any, who: str, folder: Path, option: str = "filename") -> str:
    """``filename`` if it is a plain file name (no folder part) that can be a file in ``folder``.

    :raises ValueError: naming the logger, the option and the value, otherwise (a name with a folder part, an
        empty name, ``.`` or ``..``, or the name of an existing folder in ``folder``).
    """
    if not isinstance(filename, str) or not filename.strip():
        raise ValueError(f"{who}: {option} must be a file name, got {filename!r}")
    if "/" in filename or os.sep in filename or (os.altsep and os.altsep in filename) or filename in (".", ".."):
        raise ValueError(f"{who}: {option} must be a plain file name, written in the run folder (no folder "
                         f"part), got {filename!r}")
    if (folder / filename).is_dir():
        raise ValueError(f"{who}: {option} {filename!r} is a folder in {str(folder)!r}")
    if (folder / filename).exists() and not os.access(folder / filename, os.W_OK):
        raise LoggerPathError(f"the {who} logger cannot write to {str(folder / filename)!r}: the file is read-only")
    return filename


def scalar(value: Any) -> float | None:
    """``value`` as a float when it is a number or a one-element tensor / array, else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else None
    if type(value).__module__ == "numpy" and getattr(value, "size", 0) == 1:
        return float(value)
    return None


def is_matrix(value: Any) -> bool:
    """A 2-D tensor or array (accuracy matrix, confusion matrix)."""
    return (isinstance(value, torch.Tensor) or type(value).__module__ == "numpy") and getattr(value, "ndim", 0) == 2


def is_vector(value: Any) -> bool:
    """A 1-D tensor or array of more than one element (the initial accuracies)."""
    return ((isinstance(value, torch.Tensor) or type(value).__module__ == "numpy") and getattr(value, "ndim", 0) == 1
            and scalar(value) is None)


def is_figure(value: Any) -> bool:
    """A matplotlib figure (recognised without importing matplotlib)."""
    return any(c.__name__ == "Figure" and c.__module__.startswith("matplotlib") for c in type(value).__mro__)


@functools.lru_cache(maxsize=4096)  # names repeat: parse each once
def metric_parts(name: str) -> MetricName | None:
    """:func:`clkernel.parse_metric_name` of ``name``, or None for a name outside the scheme (loggers accept
    any name and write such values as unstructured)."""
    try:
        return parse_metric_name(name)
    except ValueError:
        return None


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def to_jsonable(value: Any) -> Any:
    """A JSON-ready copy: tensors and arrays become (nested) lists, NaN and infinities become null, figures and
    other objects their ``repr``."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        return _clean(value)
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        return _clean(value.tolist()) if hasattr(value, "tolist") else repr(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    return repr(value)


def flatten_config(config: dict[str, Any] | None, prefix: str = "") -> dict[str, int | float | str | bool]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists, None and other values become strings (TensorBoard hparams
    take only numbers, strings and booleans)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(to_jsonable(value))
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            yield from _strings(v)


def versions(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions of Python, torch, the kernel and the clkernel plugin distributions.

    ``plugins`` lists the distributions that provide a component named in ``config`` (every installed one when
    there is no config), and always this one; ``installed_plugins`` lists them all.
    """
    import clkernel

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "clkernel": clkernel.__version__}
    installed: dict[str, str] = {}
    used: dict[str, str] = {}
    try:
        from clkernel.discovery import registry

        names = {s.split(":")[0].strip() for s in _strings(config)} if config else set()
        for source in registry().sources:
            label = source.distribution or source.entry_point
            installed[label] = source.version
            components = {n for ns in source.components.values() for n in ns}
            if not config or components & names or label == "clkernel-loggers":
                used[label] = source.version
    except Exception as e:  # noqa: BLE001 - versions are informative; a broken registry must not stop a run
        out["plugins_error"] = f"{type(e).__name__}: {e}"
    out["plugins"], out["installed_plugins"] = used, installed
    return out


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file and a rename, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
