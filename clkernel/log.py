"""Logging: the kernel and plugins log structured events through the standard library's ``logging``.

A library does not configure logging. :func:`get_logger` returns a structlog logger that renders each event
with whatever processors structlog is configured with and hands it to the standard-library logger of the same
name (``clkernel``, ``clkernel.metrics``...). So, used from Python, nothing below WARNING appears unless the
script configures logging itself (``logging.basicConfig(level=logging.INFO)``, or its own structlog set-up); a
broken plugin's warning reaches stderr through Python's last-resort handler. Only the ``clkernel`` command calls
:func:`configure_logging`: first at start (events on stderr), then again once the run folder exists, with
``log_file=<run>/events.jsonl`` (every event in the file as a JSON line; only warnings and errors on stderr).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import structlog

__all__ = ["configure_logging", "describe_exception", "get_logger"]


def get_logger(name: str = "clkernel") -> Any:
    """A structlog logger for events of ``name``, handed to ``logging.getLogger(name)``.

    Call it as ``log.info("event_name", key=value, ...)``.
    """
    return structlog.wrap_logger(logging.getLogger(name))


_LEVELS = "debug, info, warning, error, critical"


def describe_exception(exc: BaseException) -> str:
    """``"ExceptionType: message"``. An error that a ``DataLoader`` worker raised comes back in the main process
    with the worker's whole traceback in its message; it is described by the traceback's last line (the
    worker's exception and message) and the worker, e.g. ``"OSError: cannot read x.png (in DataLoader worker
    process 0)"``."""
    message = str(exc)
    head, marker, tail = message.partition("\nOriginal Traceback (most recent call last):")
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if marker and lines and head.startswith("Caught "):
        return f"{lines[-1]} ({head.split(' ', 2)[-1].rstrip('.')})"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _level(name: str, what: str) -> int:
    numeric = logging.getLevelNamesMapping().get(name.upper())
    if numeric is None:
        raise ValueError(f"unknown {what} {name.lower()!r}; levels: {_LEVELS}")
    return numeric


class _Event(dict):  # type: ignore[type-arg]
    """A structured event, the message of a ``LogRecord`` once :func:`configure_logging` ran: the handlers below
    render it their own way; any other handler (a script's, pytest's) sees its JSON line."""

    def __str__(self) -> str:
        return _json_line(self)


def _keep_exc_info(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Turn ``exc_info=True`` (what ``log.exception`` passes) or an exception into the ``sys.exc_info()`` tuple
    now, while it is known; each handler decides how much of it to show."""
    exc = event_dict.pop("exc_info", None)
    if exc is True:
        exc = sys.exc_info()
    elif isinstance(exc, BaseException):
        exc = (type(exc), exc, exc.__traceback__)
    if isinstance(exc, tuple) and exc[0] is not None:
        event_dict["exc_info"] = exc
    return event_dict


def _to_record(logger: Any, method_name: str, event_dict: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (_Event(event_dict),), {}


def _event_of(record: logging.LogRecord) -> dict[str, Any]:
    """The event of a record: the structured one, or one made of a plain ``logging`` call's message."""
    if isinstance(record.msg, _Event):
        return dict(record.msg)
    event: dict[str, Any] = {"event": record.getMessage(), "logger": record.name,
                             "level": record.levelname.lower(),
                             "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                             + f".{int(record.msecs * 1000):06d}Z"}
    if record.exc_info and record.exc_info[0] is not None:
        event["exc_info"] = record.exc_info
    return event


def _json_line(event: dict[str, Any]) -> str:
    event = dict(event)
    exc = event.pop("exc_info", None)
    if exc:
        event["exception"] = "".join(traceback.format_exception(*exc)).rstrip("\n")
    return json.dumps(event, default=repr)


def _one_line(event: dict[str, Any]) -> dict[str, Any]:
    """The event without its traceback (the log file has it)."""
    event = dict(event)
    event.pop("exc_info", None)
    event.pop("exception", None)
    return event


class _ConsoleHandler(logging.Handler):
    """Writes each event to whatever ``sys.stderr`` is *now* (it may be replaced, as pytest does): a console line
    or a JSON line. With ``log_file`` set, an exception takes one line; its traceback is in the file. While a
    tqdm bar is drawn (tqdm already imported), the line is written through ``tqdm.write`` so that the bar
    stays whole."""

    def __init__(self, fmt: str, level: int, log_file: Path | None) -> None:
        super().__init__(level)
        self.fmt, self.log_file = fmt, log_file
        self.renderer = (structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
                         if fmt == "console" else None)  # a traceback without every frame's locals (tensors)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = _event_of(record)
            if self.log_file is not None and event.get("exc_info"):
                event = _one_line(event)
                event["traceback_in"] = str(self.log_file)
            if self.renderer is not None:
                line = self.renderer(None, event.get("level", "info"), event)
            else:
                line = _json_line(event)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None and getattr(getattr(tqdm, "tqdm", None), "_instances", None):
                tqdm.tqdm.write(line, file=sys.stderr)
                sys.stderr.flush()
            else:
                print(line, file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


class _FileHandler(logging.Handler):
    """Appends each event to a file as a JSON line, tracebacks included (key ``exception``)."""

    def __init__(self, path: Path, level: int) -> None:
        super().__init__(level)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(_json_line(_event_of(record)) + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def configure_logging(fmt: str = "auto", level: str | None = None, *,
                      log_file: str | os.PathLike[str] | None = None, console_level: str | None = None) -> None:
    """Configure logging for the ``clkernel`` command.

    * Console: events go to stderr (stdout stays for results, ``clkernel plugins --json``) in ``fmt``:
      ``console`` lines, ``json`` lines, or ``auto`` (console in a terminal, JSON otherwise), from
      ``console_level`` up.
    * ``log_file`` (``<run>/events.jsonl`` for ``clkernel run``): every event from ``level`` up, appended as a
      JSON line, an exception's traceback included (key ``exception``); on the console that event is then one
      line, naming the file (key ``traceback_in``). Without a file the console shows the traceback.

    ``level`` comes from ``level``, else ``$CLKERNEL_LOG_LEVEL``, else ``info``. ``console_level`` defaults to
    ``level`` without a file, and to ``warning`` (or ``level`` when higher) with one. Configures structlog's
    processors and the standard-library ``clkernel`` logger. Calling it again replaces the previous set-up (its
    file is closed; no handler is added twice): call it at start without a file, then with the file once the run
    folder exists.

    :raises ValueError: for an unknown format or level.
    :raises OSError: when ``log_file`` cannot be opened for appending.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if fmt not in ("console", "json"):
        raise ValueError(f"log format must be auto, console or json, got {fmt!r}")
    file_level = _level(level or os.environ.get("CLKERNEL_LOG_LEVEL", "info"), "log level")
    if console_level is not None:
        stderr_level = _level(console_level, "console log level")
    else:
        stderr_level = max(file_level, logging.WARNING) if log_file is not None else file_level
    path = Path(log_file) if log_file is not None else None
    handlers: list[logging.Handler] = [_ConsoleHandler(fmt, stderr_level, path)]
    if path is not None:
        handlers.append(_FileHandler(path, file_level))  # opened before the old set-up goes: an error leaves it
    lowest = min(file_level, stderr_level) if path is not None else stderr_level
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _keep_exc_info,
            _to_record,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lowest),
        cache_logger_on_first_use=False,
    )
    logger = logging.getLogger("clkernel")
    for handler in [h for h in logger.handlers if isinstance(h, (_ConsoleHandler, _FileHandler))]:
        logger.removeHandler(handler)
        handler.close()
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(lowest)
    logger.propagate = False
