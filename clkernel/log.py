"""Logging: the kernel and plugins log structured events through the standard library's ``logging``.

A library does not configure logging. :func:`get_logger` returns a structlog logger that renders each event
with whatever processors structlog is configured with and hands the line to the standard-library logger of the
same name (``clkernel``, ``clkernel.metrics``...). So, used from Python, nothing below WARNING appears unless the
script configures logging itself (``logging.basicConfig(level=logging.INFO)``, or its own structlog set-up); a
broken plugin's warning reaches stderr through Python's last-resort handler. Only the ``clkernel`` command calls
:func:`configure_logging`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger"]


def get_logger(name: str = "clkernel") -> Any:
    """A structlog logger for events of ``name``, handed to ``logging.getLogger(name)``.

    Call it as ``log.info("event_name", key=value, ...)``.
    """
    return structlog.wrap_logger(logging.getLogger(name))


class _StderrHandler(logging.Handler):
    """Writes each rendered event to whatever ``sys.stderr`` is *now* (it may be replaced, as pytest does)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr, flush=True)


def configure_logging(fmt: str = "auto", level: str | None = None) -> None:
    """Configure logging for the ``clkernel`` command: ``fmt`` is ``auto``, ``console`` or ``json``.

    Events go to stderr, so that stdout stays for results (``clkernel plugins --json``): console lines in a
    terminal, JSON lines otherwise (``auto``). The level comes from ``level``, else ``$CLKERNEL_LOG_LEVEL``, else
    ``info``. Configures structlog's processors and the standard-library ``clkernel`` logger; calling it again
    replaces the previous set-up.

    :raises ValueError: for an unknown format or level.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if fmt not in ("console", "json"):
        raise ValueError(f"log format must be auto, console or json, got {fmt!r}")
    name = (level or os.environ.get("CLKERNEL_LOG_LEVEL", "info")).upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {name.lower()!r}; levels: debug, info, warning, error, critical")
    renderer = structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    logger = logging.getLogger("clkernel")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_StderrHandler())
    logger.setLevel(numeric)
    logger.propagate = False
