"""What the ``clkernel`` command's terminal shows: with ``configure_logging(log_file=...)`` the structured events
go to the JSON-lines file and only warnings and errors to stderr (an exception in one line, its traceback in the
file); a warning logged while a bar is drawn does not break the bar."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from clkernel.log import configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging changes process-wide state: put it back after each test."""
    logger = logging.getLogger("clkernel")
    saved = (list(logger.handlers), logger.level, logger.propagate, structlog.get_config(),
             structlog.is_configured())
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    if saved[4]:
        structlog.configure(**saved[3])
    else:
        structlog.reset_defaults()


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_info_events_go_to_the_file_only_and_warnings_to_both(tmp_path, capsys):
    log = get_logger("clkernel")
    configure_logging("json")  # at start: stderr only
    log.info("before_the_folder")
    assert json.loads(capsys.readouterr().err)["event"] == "before_the_folder"

    path = tmp_path / "run" / "events.jsonl"
    configure_logging("json", log_file=path)  # once the run folder exists
    log.info("experience_start", experience=0)
    get_logger("clkernel.metrics").debug("hidden")  # below the level: nowhere
    get_logger("clkernel.metrics").warning("slow_metric", seconds=3)
    logging.getLogger("clkernel.thirdparty").info("plain %s", "logging")  # a plugin using logging directly
    err = capsys.readouterr().err
    assert [json.loads(line)["event"] for line in err.splitlines()] == ["slow_metric"]
    events = _events(path)
    assert [e["event"] for e in events] == ["experience_start", "slow_metric", "plain logging"]
    assert events[0]["level"] == "info" and events[0]["experience"] == 0 and "timestamp" in events[0]
    assert events[2]["logger"] == "clkernel.thirdparty"
    handlers = [h for h in logging.getLogger("clkernel").handlers if type(h).__module__ == "clkernel.log"]
    assert len(handlers) == 2  # configured twice: one console handler, one file handler (pytest may add its own)


def test_an_exception_has_its_traceback_in_the_file_and_one_line_on_stderr(tmp_path, capsys):
    log = get_logger("clkernel")
    path = tmp_path / "events.jsonl"
    configure_logging("console", log_file=path)
    try:
        raise RuntimeError("kaboom")
    except RuntimeError as e:
        log.exception("run_failed", error=f"{type(e).__name__}: {e}")
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "run_failed" in err and "kaboom" in err and str(path) in err  # where the traceback is
    (event,) = _events(path)
    assert event["event"] == "run_failed" and event["level"] == "error"
    assert event["exception"].startswith("Traceback (most recent call last):")
    assert 'raise RuntimeError("kaboom")' in event["exception"]


def test_without_a_file_the_console_keeps_the_traceback_and_the_level(capsys):
    log = get_logger("clkernel")
    configure_logging("json", level="warning")
    log.info("quiet")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("command_failed")
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["event"] == "command_failed" and "ValueError: bad" in event["exception"]


def test_levels(tmp_path, capsys):
    log = get_logger("clkernel")
    configure_logging("json", level="debug", log_file=tmp_path / "e.jsonl", console_level="error")
    log.debug("d")
    log.warning("w")
    log.error("e")
    assert [json.loads(x)["event"] for x in capsys.readouterr().err.splitlines()] == ["e"]
    assert [e["event"] for e in _events(tmp_path / "e.jsonl")] == ["d", "w", "e"]
    with pytest.raises(ValueError, match="unknown console log level 'loud'"):
        configure_logging("json", console_level="loud")
    with pytest.raises(ValueError, match="log format must be"):
        configure_logging("xml")


def test_a_warning_during_a_bar_is_written_above_it(tmp_path, monkeypatch):
    """tqdm clears its bars, the warning is written, the bar is drawn again: no line is cut in two."""
    from tqdm import tqdm

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    configure_logging("json", log_file=tmp_path / "e.jsonl")
    bar = tqdm(total=4, file=err, leave=False, ncols=60, mininterval=0)
    bar.update(1)
    get_logger("clkernel").warning("nonfinite_loss", iteration=1)
    bar.update(1)
    bar.close()
    line = next(x for x in err.getvalue().split("\n") if "nonfinite_loss" in x)
    assert json.loads(line.split("\r")[-1])["iteration"] == 1  # the line itself is whole
    assert "nonfinite_loss" in (tmp_path / "e.jsonl").read_text()
