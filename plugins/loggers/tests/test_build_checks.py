"""Bad path options fail when the logger is built (before training), with a message naming option and value."""

from __future__ import annotations

import os
import re

import pytest

from clkernel.discovery import Registry

from clkernel_loggers import JSONLLogger, LoggerPathError, TextLogger, registration


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry()
    r.add_module(registration, "loggers")
    return r


@pytest.mark.parametrize("name", ["text", "jsonl"])
@pytest.mark.parametrize("filename", ["no/such/dir/log.txt", "sub/log.txt", "..", ".", "", os.sep + "log.txt"])
def test_a_filename_must_be_a_plain_name_in_the_run_folder(reg, tmp_path, name, filename):
    expected = rf"^{name}: filename must be a (plain )?file name.*got {re.escape(repr(filename))}$"
    with pytest.raises(ValueError, match=expected):
        reg.load("logger", name, run_dir=tmp_path, filename=filename)


def test_good_filenames_and_existing_folder_names(reg, tmp_path):
    assert isinstance(reg.load("logger", "text", run_dir=tmp_path, filename="my.log"), TextLogger)
    assert isinstance(reg.load("logger", "jsonl", run_dir=tmp_path, filename="m.jsonl"), JSONLLogger)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="text: filename 'taken' is a folder in"):
        reg.load("logger", "text", run_dir=tmp_path, filename="taken")
    with pytest.raises(ValueError, match="jsonl: filename must be a file name, got 3"):
        reg.load("logger", "jsonl", run_dir=tmp_path, filename=3)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_log_file_is_refused(reg, tmp_path):
    (tmp_path / "log.txt").write_text("old")
    (tmp_path / "log.txt").chmod(0o444)
    with pytest.raises(LoggerPathError, match="the text logger cannot write to"):
        reg.load("logger", "text", run_dir=tmp_path)


def test_a_logger_path_error_is_a_usage_error(tmp_path):
    # `clkernel run` turns ValueError raised by a factory into exit code 2 with one line
    (tmp_path / "file").write_text("x")
    reg = Registry()
    reg.add_module(registration, "loggers")
    with pytest.raises(ValueError, match="the csv logger cannot write to"):
        reg.load("logger", "csv", run_dir=tmp_path / "file" / "run")
    assert issubclass(LoggerPathError, OSError)


@pytest.mark.parametrize("subdir", ["../outside", "/abs", "", 3])
def test_tensorboard_subdir_stays_inside_the_run_folder(reg, tmp_path, subdir):
    with pytest.raises(ValueError, match=f"tensorboard: subdir must be a folder name inside the run folder, "
                                         f"got {subdir!r}"):
        reg.load("logger", "tensorboard", run_dir=tmp_path, subdir=subdir)
