"""Registration: names, defaults, options as `clkernel run` parses them."""

from __future__ import annotations

import pytest

from clkernel.discovery import Registry

from clkernel_loggers import InteractiveLogger, LoggerPathError, ReportLogger, TensorBoardLogger
from clkernel_loggers import registration


def test_registered_loggers_and_defaults(tmp_path):
    reg = Registry()
    source = reg.add_module(registration, "loggers")
    assert source.status == "ok", source.error
    assert reg.available("logger") == ["csv", "interactive", "jsonl", "report", "tensorboard", "text"]
    assert reg.defaults("logger") == ["interactive", "report"]
    report = reg.load("logger", "report", run_dir=tmp_path, config={"seed": 1}, dpi=50)
    assert isinstance(report, ReportLogger) and report.dpi == 50 and report.config == {"seed": 1}
    assert isinstance(reg.load("logger", "tensorboard", run_dir=str(tmp_path)), TensorBoardLogger)
    assert isinstance(reg.load("logger", "interactive", bars=False), InteractiveLogger)
    for name in ("csv", "jsonl", "text"):
        assert reg.load("logger", name, run_dir=tmp_path).run_dir == tmp_path
    assert set(reg.get("logger", "report").options()) >= {"run_dir", "config"}


def test_factory_with_a_bad_folder_fails_before_training(tmp_path):
    reg = Registry()
    reg.add_module(registration, "loggers")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoggerPathError, match="the report logger cannot write to"):
        reg.load("logger", "report", run_dir=tmp_path / "file" / "run")


def test_cli_option_parsing_of_the_installed_entry_point():
    from clkernel.discovery import parse_options, reset_registry

    reset_registry()
    try:
        name, options = parse_options("logger", "report:dpi=50,plots=false")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"clkernel-loggers is not installed in this environment: {e}")
    finally:
        reset_registry()
    assert (name, options) == ("report", {"dpi": 50, "plots": False})
