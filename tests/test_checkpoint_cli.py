"""Checkpoints on the command line: ``clkernel run`` stopped by SIGTERM or SIGINT writes a checkpoint, says
``interrupted`` and exits 143 / 130; ``clkernel run --resume RUN_DIR`` then finishes with the same results as an
uninterrupted run. A folder or checkpoint that cannot be resumed, or an option that changed, is exit 2 with one
line, and the files stay as they were. Real processes, the embedded split-digits benchmark."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clkernel.checkpoint import checkpoint_files, read_checkpoint

RUN = ["--benchmark", "split-digits:n_experiences=3", "--epochs", "2", "--plugin", "replay:mem_size=60",
       "--plugin", "ewc", "--logger", "csv", "--logger", "jsonl", "--logger", "report:plots=false",
       "--mb-size", "8", "--checkpoint-every", "20"]  # the second checkpoint comes early in a long experience


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CLKERNEL_DATA", None)
    return env


def clkernel(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clkernel.cli", "--log-format", "json", "run", *args], cwd=cwd,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(path: Path) -> list[list[str]]:
    lines = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, h in enumerate(lines[0]) if h != "wall_time"]
    return [[line[i] for i in keep] for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An uninterrupted run, and two runs stopped by SIGTERM and SIGINT once their second checkpoint exists,
    all started together."""
    cwd = tmp_path_factory.mktemp("cli")
    procs = {name: clkernel(cwd, *RUN, "--output", name) for name in ("whole", "term", "int")}
    sent: dict[str, str] = {}
    signals = {"term": signal.SIGTERM, "int": signal.SIGINT}
    try:
        deadline = time.monotonic() + 240
        while len(sent) < len(signals):  # each run is signalled as soon as its own second checkpoint exists, so
            for name in set(signals) - set(sent):  # that the signal comes inside its first experience
                if len(checkpoint_files(cwd / name / "checkpoints")) >= 2:
                    sent[name] = checkpoint_files(cwd / name / "checkpoints")[-1].name  # the newest before it
                    procs[name].send_signal(signals[name])
                assert procs[name].poll() is None or name in sent, procs[name].communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        codes = {name: finish(proc) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return {"cwd": cwd, "codes": codes, "sent": sent}


@pytest.mark.parametrize(("name", "code", "error"), [("term", 143, "Terminated: SIGTERM"),
                                                      ("int", 130, "KeyboardInterrupt")])
def test_a_signal_writes_a_checkpoint_then_resume_finishes_the_same_run(runs, name, code, error):
    cwd = runs["cwd"]
    assert runs["codes"]["whole"][0] == 0, runs["codes"]["whole"][1]
    rc, err = runs["codes"][name]
    assert rc == code, err
    line = json.loads(err.strip().splitlines()[-1])
    assert line["event"] == "interrupted" and line["resume"] == f"clkernel run --resume {name}"
    results = json.loads((cwd / name / "results.json").read_text())
    assert results["status"] == "interrupted" and results["error"] == error
    newest = checkpoint_files(cwd / name / "checkpoints")[-1]
    # Numbered in order: the newest is the one the signal's iteration wrote, or, when the signal came while the
    # newest before it was being written (its file already there), that one, which holds the same state. A
    # file's mtime cannot say which: its clock is coarser than time.time().
    assert newest.name >= runs["sent"][name]
    assert read_checkpoint(newest)[0]["position"]["stage"] == "train"  # inside an experience: not its end

    rc, err = finish(clkernel(cwd, "--resume", name, "--checkpoint-every", "50"))  # the cadence may change
    assert rc == 0, err
    whole, resumed = (json.loads((cwd / n / "results.json").read_text()) for n in ("whole", name))
    assert resumed["status"] == "completed"
    assert resumed["final_metrics"] == whole["final_metrics"]
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    for csv in ("metrics_train.csv", "metrics_eval.csv"):
        assert rows(cwd / name / csv) == rows(cwd / "whole" / csv), csv
    assert json.loads((cwd / name / "config.json").read_text())["checkpoint_every"] == 20  # the saved one stays


def test_a_completed_run_has_nothing_to_resume(runs):
    rc, err = finish(clkernel(runs["cwd"], "--resume", "whole"))
    assert rc == 2 and "the run is completed" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("case", "expect"), [
    ("truncated", "is truncated or corrupt"),
    ("changed-option", "--epochs 3 differs from the resumed run's 2"),
    ("no-config", "no config.json"),
    ("missing-folder", "no such folder"),
    ("plugin-gone", "config.json, the resumed run's configuration): unknown plugin 'gone-plugin'"),
])
def test_a_run_that_cannot_resume_is_exit_2_one_line_and_changes_nothing(runs, tmp_path, case, expect):
    folder = tmp_path / "run"
    subprocess.run(["cp", "-r", str(runs["cwd"] / "whole"), str(folder)], check=True)
    (folder / "results.json").write_text(json.dumps({"status": "interrupted"}))
    args = ["--resume", str(folder)]
    if case == "truncated":
        newest = checkpoint_files(folder / "checkpoints")[-1]
        newest.write_bytes(newest.read_bytes()[:5000])
    elif case == "changed-option":
        args += ["--epochs", "3", "--device", "cpu"]  # the device may change, the epochs may not
    elif case == "no-config":
        (folder / "config.json").unlink()
    elif case == "plugin-gone":  # saved with a plugin since uninstalled: the saved configuration is named
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "plugin": [*config["plugin"], "gone-plugin"]}))
    else:
        args = ["--resume", str(tmp_path / "nowhere")]
    before = digest(tmp_path)
    rc, err = finish(clkernel(tmp_path, *args))
    assert rc == 2 and expect in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert digest(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see torch being imported")
def test_a_signal_during_start_up_exits_cleanly_and_leaves_nothing(tmp_path):
    proc = clkernel(tmp_path, *RUN, "--output", "out")
    maps = Path(f"/proc/{proc.pid}/maps")
    while proc.poll() is None and "libtorch" not in maps.read_text():  # clkernel run imports torch once its
        time.sleep(0.005)                                                 # signal handlers are in place
    proc.send_signal(signal.SIGTERM)  # noted, and honoured before anything is created
    rc, err = finish(proc)
    assert rc == 143 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
