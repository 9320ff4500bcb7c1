"""structlog set-up: configured once, console lines in a terminal, JSON lines otherwise (or on request)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging"]


class _StderrLogger:
    """Writes each rendered event to whatever ``sys.stderr`` is *now* (it may be replaced, as pytest does)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure_logging(fmt: str = "auto", level: str | None = None) -> None:
    """Configure structlog for the ``clkernel`` command: ``fmt`` is ``auto``, ``console`` or ``json``.

    Events go to stderr, so that stdout stays for results (``clkernel plugins --json``). The level comes from
    ``level``, else ``$CLKERNEL_LOG_LEVEL``, else ``info``.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    name = (level or os.environ.get("CLKERNEL_LOG_LEVEL", "info")).upper()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, name, logging.INFO)),
        logger_factory=lambda *args: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
