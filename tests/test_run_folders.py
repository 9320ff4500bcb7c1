"""`clkernel run` never loses or mixes results: one new folder per run (also for runs started together), nothing
created before every check passed, a ``status`` in results.json, and exit codes 0 / 1 / 2 / 130 / 143 for real
processes ended by real signals. Runs use the first-party split-digits benchmark, small and fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAST = ["--benchmark", "split-digits:n_experiences=2", "--epochs", "1", "--mb-size", "64"]

PLUGIN = '''
import time
import clkernel


class Explode:
    """Raises after the first training experience: mid-run."""
    name = "explode"

    @clkernel.hookimpl
    def after_training_exp(self, state):
        raise RuntimeError("kaboom mid-run")


class Wait:
    """Waits (long) in the first training experience, so that a test can signal a running run."""
    name = "wait"

    @clkernel.hookimpl
    def before_training_exp(self, state):
        time.sleep(120)


@clkernel.hookimpl
def register_plugins(register):
    register("explode", Explode)
    register("wait", Wait)
'''


def _env(site: Path | None = None, disable: str = "") -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLKERNEL_DISABLE_PLUGINS": disable}
    env.pop("CLKERNEL_DATA", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "clkernel.cli", "--log-format", "json", "run", *args]


def _clkernel(cwd: Path, *args: str, site: Path | None = None, disable: str = "",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**_env(site, disable), **(env or {})})


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture
def site(install_dist):
    return install_dist("clk-test-plugins", "clk_test_plugins", PLUGIN, entry_point="testplugins")


def test_runs_started_together_get_distinct_folders_each_with_its_results(tmp_path):
    procs = [subprocess.Popen(_cmd(*FAST, "--seed", str(i), "--logger", "report:plots=false"), cwd=tmp_path,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outs]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 8 and all("-split-digits" in f.name for f in folders)
    seeds = sorted(_results(f)["config"]["seed"] for f in folders)
    assert seeds == list(range(8))  # each run wrote its own results.json, in its own folder
    assert all(_results(f)["status"] == "completed" and _results(f)["error"] is None for f in folders)
    printed = {line.split("results in ")[1] for out, _ in outs for line in out.splitlines()
               if "results in" in line}
    assert printed == {str(f.relative_to(tmp_path)) for f in folders}


@pytest.fixture
def in_process(cli_main, monkeypatch):
    """``clkernel run`` in this process (no torch import to wait for), in ``tmp_path``, without ``$CLKERNEL_DATA``."""
    monkeypatch.delenv("CLKERNEL_DATA", raising=False)
    return lambda *args: cli_main("--log-format", "json", "run", *FAST, *args)


def test_an_output_folder_that_holds_files_is_refused_unless_overwrite(tmp_path, in_process, capsys,
                                                                       monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert in_process("--output", "out", "--logger", "report:plots=false") == 2
    assert capsys.readouterr().err.strip() == (
        "clkernel run: error: --output out is not empty; pass --overwrite to write into it (files of the same "
        "name are replaced, others are kept), or give a new folder")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]
    monkeypatch.setenv("CLKERNEL_DATA", str(tmp_path))
    assert in_process("--output", "out", "--overwrite", "--logger", "report:plots=false") == 0
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # kept: --overwrite deletes nothing
    results = _results(tmp_path / "out")
    assert results["status"] == "completed" and results["config"]["data_root"] == str(tmp_path)
    assert results["config"]["output"] == "out"


def test_an_empty_output_folder_is_used(tmp_path, in_process):
    (tmp_path / "out").mkdir()
    assert in_process("--output", "out", "--logger", "report:plots=false") == 0
    assert _results(tmp_path / "out")["status"] == "completed"


@pytest.mark.parametrize("args, message", [
    (["--model", "simple-mlp:num_classes=2"], "model simple-mlp gives 2 outputs but the benchmark has 10 classes"),
    (["--model", "simple-mlp:input_size=10"], "model simple-mlp cannot take the inputs of benchmark split-digits "
                                              "(one sample of shape (1, 8, 8)): "),
    (["--logger", "reprot"], "unknown logger 'reprot'"),
    (["--overwrite"], "--overwrite applies only with --output DIR"),
    (["--output", "new/run", "--logger", "report:dpi=5"], "report: dpi must be an integer >= 10"),
])
def test_usage_errors_create_nothing(tmp_path, in_process, capsys, args, message):
    assert in_process(*args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_says_failed_with_the_error_and_exits_1_with_one_line(site, tmp_path):
    result = _clkernel(tmp_path, *FAST, "--plugin", "explode", "--output", "out", "--logger", "report:plots=false",
                       site=site)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert json.loads(result.stderr)["traceback_in"] == "out/events.jsonl"
    results = _results(tmp_path / "out")
    assert results["status"] == "failed"
    assert "kaboom mid-run" in results["error"] and "'explode'" in results["error"]
    assert "Traceback" in (tmp_path / "out" / "events.jsonl").read_text()


def test_signalled_runs_are_closed_say_interrupted_and_exit_130_or_143(site, tmp_path):
    """Real processes, real signals: SIGTERM -> 143, SIGINT (Ctrl-C) -> 130; both close the run first."""
    signals = {"term": (signal.SIGTERM, 143, "Terminated: SIGTERM"), "int": (signal.SIGINT, 130, "KeyboardInterrupt")}
    procs = {name: subprocess.Popen(_cmd(*FAST, "--plugin", "wait", "--output", name, "--logger",
                                         "report:plots=false"), cwd=tmp_path, env=_env(site),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in signals}
    try:
        for name, proc in procs.items():
            deadline = time.monotonic() + 60
            while not (tmp_path / name / "results.json").exists():  # written when the run starts
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signals[name][0])
        errs = {name: proc.communicate(timeout=60)[1] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, (_, code, error) in signals.items():
        assert procs[name].returncode == code, errs[name]
        results = _results(tmp_path / name)
        assert results["status"] == "interrupted" and results["error"] == error
        assert '"interrupted"' in errs[name] and len(errs[name].strip().splitlines()) == 1, errs[name]


def test_without_metric_and_logger_packages_the_run_warns_and_prints_its_results(tmp_path):
    result = _clkernel(tmp_path, *FAST, disable="clkernel-metrics,clkernel-loggers")
    assert result.returncode == 0, result.stderr
    warnings = [json.loads(line) for line in result.stderr.splitlines()]
    assert [w["event"] for w in warnings] == ["no_metric", "no_logger"]
    assert "pip install clkernel-metrics" in warnings[0]["message"]
    assert "pip install clkernel-loggers" in warnings[1]["message"]
    assert 'final results: {"accuracy/test": ' in result.stdout and "run finished; results in runs/" in result.stdout
