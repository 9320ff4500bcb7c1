"""A write that fails during the run (a full disk, a file size limit) names the file it could not write.

Real failures, no mocks: a logger's file is a symbolic link to ``/dev/full`` (every write: ENOSPC), or the
process runs under ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored (a write past the limit: EFBIG).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import sys
from typing import Iterator

import pytest
import torch

import clkernel

from clkernel_loggers import (
    CSVLogger, InteractiveLogger, JSONLLogger, LoggerWriteError, ReportLogger, TensorBoardLogger, TextLogger,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full") or sys.platform != "linux",
                                reason="needs Linux's /dev/full and RLIMIT_FSIZE")


def _state() -> clkernel.TrainState:
    return clkernel.TrainState(model=torch.nn.Linear(1, 1), optimizer=None, criterion=None,  # type: ignore[arg-type]
                               device=torch.device("cpu"), train_mb_size=1, train_epochs=1, eval_mb_size=1)


@pytest.mark.parametrize("make, filename", [(CSVLogger, "metrics_eval.csv"), (JSONLLogger, "metrics.jsonl"),
                                            (TextLogger, "log.txt")], ids=["csv", "jsonl", "text"])
def test_a_full_disk_names_the_file(make, filename, tmp_path):
    (tmp_path / filename).symlink_to("/dev/full")
    logger, state = make(tmp_path), _state()
    logger.log_metrics(state, {"acc_exp/eval/test/exp000": 0.5})  # buffered
    with pytest.raises(LoggerWriteError) as info:
        logger.after_eval(state)  # the flush at the end of an evaluation writes
    error = info.value
    path = str(tmp_path / filename)
    assert str(error) == (f"the {make.name} logger could not write {path!r}: No space left on device "
                          f"(errno {errno.ENOSPC}, ENOSPC)")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename == path
    assert isinstance(error.__cause__, OSError) and not isinstance(error.__cause__, LoggerWriteError)
    logger.after_run(state)  # the failed file is closed quietly: the error was reported once


def test_interactive_output_on_a_full_disk_names_it(tmp_path):
    out = open("/dev/full", "w")  # noqa: SIM115 - closing it flushes again, on a full disk
    try:
        logger, state = InteractiveLogger(file=out, bars=False), _state()
        logger.log_metrics(state, {"acc_stream/eval/test": 0.5})
        logger.before_eval(state)
        logger.log_metrics(state, {"acc_stream/eval/test": 0.5})
        with pytest.raises(LoggerWriteError, match="^the interactive logger could not write '/dev/full': No space "
                                                   "left on device"):
            logger.after_eval(state)  # prints its line
    finally:
        with contextlib.suppress(OSError):
            out.close()


@contextlib.contextmanager
def _file_size_limit(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes in any file of this process fail with EFBIG (``RLIMIT_FSIZE``; ``SIGXFSZ``
    ignored instead of killing the process), inside the block only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
def test_a_file_size_limit_names_the_file(tmp_path):
    """Every logger writing past RLIMIT_FSIZE (EFBIG): the CSV file, TensorBoard's event file (written by its
    background thread, reported at the next call), results.json (written through a temporary file: the last
    complete one stays). After the failure, ``after_run`` does not report it a second time."""
    state = _state()
    loggers = {"csv": CSVLogger(tmp_path / "csv"), "tensorboard": TensorBoardLogger(tmp_path / "tb"),
               "report": ReportLogger(tmp_path / "report", plots=False)}
    errors: dict[str, LoggerWriteError] = {}
    with _file_size_limit(8 * 1024):
        for kind, logger in loggers.items():
            with pytest.raises(LoggerWriteError) as info:
                for step in range(1, 5000):  # far past 8 KiB in every file
                    state.iteration = step
                    logger.log_metrics(state, {f"acc_exp/eval/test/exp{step:03d}": step / 5000,
                                               "loss_stream/eval/test": 1.0 / step})
                    logger.after_eval(state)  # flush / rewrite
            errors[kind] = info.value
            logger.after_run(state)  # the same failure: not reported again
    event_files = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    results = tmp_path / "report" / "results.json"
    expected = {"csv": tmp_path / "csv" / "metrics_eval.csv", "tensorboard": event_files[0], "report": results}
    for kind, path in expected.items():
        error = errors[kind]
        assert str(error) == (f"the {kind} logger could not write {str(path)!r}: File too large "
                              f"(errno {errno.EFBIG}, EFBIG)")
        assert (error.errno, error.filename) == (errno.EFBIG, str(path))
        assert type(error.__cause__) is OSError
    assert len(event_files) == 1
    assert json.loads(results.read_text())["status"] == "running"  # the last complete results.json
    assert not list((tmp_path / "report").glob(".*.tmp"))  # no temporary file left


def test_the_command_line_says_which_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    """``clkernel run`` on a full disk: exit code 1 and one line on the console naming the file."""
    pytest.importorskip("clkernel_benchmarks", reason="the run uses split-digits")
    pytest.importorskip("clkernel_metrics", reason="the run uses the default metrics")
    from clkernel.testing import cli_in_process

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics_train.csv").symlink_to("/dev/full")
    monkeypatch.setenv("CLKERNEL_DATA", str(tmp_path / "no-data"))
    monkeypatch.chdir(tmp_path)
    with cli_in_process() as main:  # clkernel's own main in this process: no interpreter start, no torch import
        code = main("run", "--benchmark", "split-digits:n_experiences=2", "--epochs", "1", "--logger", "csv",
                    "--output", str(run_dir), "--overwrite")
    out, err = capsys.readouterr()
    assert code == 1, err[-3000:]
    path = str(run_dir / "metrics_train.csv")
    lines = [line for line in err.splitlines() if path in line]
    assert len(lines) == 1, err
    assert f"the csv logger could not write {path!r}: No space left on device" in lines[0]
    assert "Traceback" not in err + out
