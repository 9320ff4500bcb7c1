"""What every logger shares: checking its folder at construction, recognising values, reading names, reporting
a failed write, and the file bookkeeping of checkpoints (a file's size and a digest of its end).

Loggers never import clkernel-metrics: they recognise values by type (numbers and one-element tensors are
scalars, 1-D tensors vectors, 2-D tensors matrices, matplotlib figures figures) and read names of the kernel's
scheme ``QUANTITY_GRANULARITY/PHASE/STREAM[/expNNN][/taskNNN][/classNNN]`` with
:func:`clkernel.parse_metric_name`. A name outside the scheme (a third-party metric's) is accepted too: its
value is written as unstructured (:func:`metric_parts` gives None).
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import functools
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from clkernel.names import MetricName, parse_metric_name

__all__ = ["TAIL_BYTES", "LoggerPathError", "LoggerResumeError", "LoggerWriteError", "check_file_state",
           "check_filename", "default_run_dir", "file_state", "flatten_config", "is_figure", "is_matrix",
           "is_rank_zero", "is_vector", "metric_parts", "prepare_dir", "remove_file", "scalar", "to_jsonable",
           "truncate_file", "versions", "write_atomic", "writing"]


class LoggerPathError(OSError, ValueError):
    """A logger cannot write where it was asked to; raised when the logger is built, before any training.

    Also a :class:`ValueError`: a path option that cannot be used is a bad option (``clkernel run`` reports it
    as a usage error, exit code 2).
    """


class LoggerWriteError(OSError):
    """A logger could not write one of its files during the run: a full disk (``ENOSPC``), a quota
    (``EDQUOT``), a file size limit (``EFBIG``), a folder removed under it...

    An :class:`OSError` with the original ``errno`` and ``strerror``, ``filename`` the path of the file; the
    original exception is ``__cause__``. ``str()`` is one line naming the logger and the file:
    ``the csv logger could not write 'runs/x/metrics_train.csv': No space left on device (errno 28, ENOSPC)``.
    """

    def __init__(self, who: str, path: str | os.PathLike[str], error: OSError) -> None:
        super().__init__(error.errno, error.strerror or str(error) or type(error).__name__, os.fspath(path))
        self.who = who

    def __str__(self) -> str:
        code = f" (errno {self.errno}, {errno_module.errorcode.get(self.errno, '?')})" if self.errno else ""
        return f"the {self.who} logger could not write {self.filename!r}: {self.strerror}{code}"


class LoggerResumeError(ValueError):
    """A logger cannot resume from a checkpoint: a file it had written before the checkpoint is missing,
    shorter than it was, or no longer ends as it did (rows written before the checkpoint were lost or the file
    was replaced), or the state is not one this logger wrote. Raised by ``load_state_dict``, before any file is
    changed; the message names the file. A :class:`ValueError`: the run folder does not fit the checkpoint.
    """


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], who: str) -> Iterator[None]:
    """Turn an :class:`OSError` raised inside the block into a :class:`LoggerWriteError` naming ``path`` (an
    error that already names its file passes through unchanged)."""
    try:
        yield
    except LoggerWriteError:
        raise
    except OSError as e:
        raise LoggerWriteError(who, path, e) from e


#: Bytes at the end of a file whose digest a checkpoint records (:func:`file_state`).
TAIL_BYTES = 4096


def _tail_digest(f: Any, size: int) -> str:
    start = max(0, size - TAIL_BYTES)
    f.seek(start)
    return hashlib.sha256(f.read(size - start)).hexdigest()


def file_state(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "tail": sha256 hex of the last TAIL_BYTES bytes}`` of ``path`` now (flush it first):
    what a checkpoint records so that resuming can check the file and cut it back to this point. Reading the tail
    costs the same whatever the file's size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return {"size": size, "tail": _tail_digest(f, size)}


def check_file_state(path: Path, recorded: Mapping[str, Any], who: str) -> None:
    """Check that ``path`` still starts with what it held when ``recorded`` (:func:`file_state`) was taken.

    :raises LoggerResumeError: naming the logger and the file when it is missing, shorter than recorded, or
        its bytes before the recorded size no longer end as they did.
    """
    size = recorded["size"]
    try:
        with open(path, "rb") as f:
            actual = os.fstat(f.fileno()).st_size
            if actual < size:
                raise LoggerResumeError(
                    f"the {who} logger cannot resume: {str(path)!r} holds {actual} bytes, the checkpoint recorded "
                    f"{size}: what it wrote before the checkpoint was lost (restore the file, or start a new run)")
            if _tail_digest(f, size) != recorded["tail"]:
                raise LoggerResumeError(
                    f"the {who} logger cannot resume: {str(path)!r} does not hold what it held at the checkpoint "
                    f"(its bytes before offset {size} changed): the file was replaced or rewritten (restore it, or "
                    f"start a new run)")
    except FileNotFoundError:
        raise LoggerResumeError(f"the {who} logger cannot resume: {str(path)!r} is missing, the checkpoint "
                                f"recorded {size} bytes in it (restore the file, or start a new run)") from None
    except OSError as e:
        raise LoggerResumeError(f"the {who} logger cannot resume: cannot read {str(path)!r}: "
                                f"{e.strerror or e}") from e


def truncate_file(path: Path, size: int, who: str) -> None:
    """Cut ``path`` back to ``size`` bytes (what was written after a checkpoint goes).

    :raises LoggerWriteError: naming the file when it cannot be cut.
    """
    with writing(path, who):
        if path.stat().st_size != size:
            os.truncate(path, size)


def remove_file(path: Path, who: str) -> None:
    """Remove ``path`` if it exists (a file created after a checkpoint).

    :raises LoggerWriteError: naming the file when it exists and cannot be removed.
    """
    with writing(path, who):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def is_rank_zero() -> bool:
    """False only in a process of an initialised ``torch.distributed`` group whose rank is not 0 (the only place
    a logger asks: ``load_state_dict`` has no state to read the rank from, and other ranks never write)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


_RUN_DIR: Path | None = None


def default_run_dir() -> Path:
    """``runs/<date-time>``, the same for every logger of this process that is given no ``run_dir``."""
    global _RUN_DIR
    if _RUN_DIR is None:
        _RUN_DIR = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    return _RUN_DIR


def prepare_dir(path: str | os.PathLike[str] | None, who: str) -> Path:
    """Create ``path`` (or the default run folder) and check that a file can be written in it. On a
    ``torch.distributed`` rank other than 0 (which never writes) the folder is only named: nothing is created.

    :raises LoggerPathError: naming the logger and the path, when the folder cannot be created or written.
    """
    folder = Path(path) if path is not None else default_run_dir()
    if not is_rank_zero():
        return folder
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


def write_atomic(path: Path, data: bytes | str, who: str = "report") -> None:
    """Write ``path`` through a temporary file and a rename, so readers never see a half-written file: a write
    that fails leaves the previous ``path`` as it was (and removes the temporary file).

    :raises LoggerWriteError: naming ``path`` (and the ``who`` logger) when the write fails (a full disk).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path, who):
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
