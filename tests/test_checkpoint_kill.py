"""Runs killed with SIGKILL and resumed end bit for bit as uninterrupted runs: real processes, every method.

For each method (Naive, Replay, GDumb, EWC separate and online, LwF, PNN, Cumulative, Replay+EWC+LwF), with the
default metrics and every logger (text, CSV, JSON lines, TensorBoard, report without its plots, interactive), a
subprocess trains split-digits with a checkpoint every few iterations and kills itself with SIGKILL at a point drawn
from a seeded generator: inside an epoch, at an experience's start (after the previous one's end) or inside an
evaluation (:class:`Killer`, a test plugin of this file, present in every run so that the plugin lists agree). The
run is then resumed from its newest checkpoint, in this process, and must end with the model's tensors,
``results.json``'s metrics and accuracy matrices, and every CSV and JSON-lines row (the wall-clock column aside)
equal to those of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch

import clkernel
from clkernel import Checkpointer, Strategy, latest_checkpoint, load, read_checkpoint, run

HERE = Path(__file__).resolve().parent
METHODS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "naive": (),
    "replay": (("replay", {"mem_size": 60}),),
    "gdumb": (("gdumb", {"mem_size": 150}),),
    "ewc": (("ewc", {"ewc_lambda": 5.0}),),
    "ewc-online": (("ewc", {"ewc_lambda": 5.0, "mode": "online", "decay_factor": 0.5}),),
    "lwf": (("lwf", {"alpha": 1.0}),),
    "pnn": (),
    "cumulative": (("cumulative", {}),),
    "replay-ewc-lwf": (("replay", {"mem_size": 60}), ("ewc", {"ewc_lambda": 5.0}), ("lwf", {"alpha": 1.0})),
}
LOGGERS = ("text", "csv", "jsonl", "tensorboard", "report", "interactive")
#: The report without its PNGs: they are drawn from the restored history, which results.json shows; drawing them
#: after a resume is checked byte for byte in plugins/loggers/tests/test_resume.py. Plotting was a third of a run.
LOGGER_OPTIONS = {"report": {"plots": False}, "interactive": {"stream": "stdout"}}
EVERY, EPOCHS, SEED = 7, 2, 0


class Killer:
    """Sends SIGKILL to its own process at ``point``: ``("train", experience, epoch, iteration)`` after that
    training iteration, ``("start", experience)`` when that experience begins, ``("eval", experience, iteration)``
    inside the evaluation that follows that training experience. Does nothing without a point."""

    name = "killer"

    def __init__(self, point: tuple[Any, ...] | None = None) -> None:
        self.point = point

    def _kill(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        if self.point and self.point[0] == "train" and self.point[1:] == (
                state.experiences_trained, state.epoch, state.epoch_iteration):
            self._kill()

    @clkernel.hookimpl
    def before_training_exp(self, state: Any) -> None:
        if self.point and self.point[0] == "start" and self.point[1] == state.experiences_trained:
            self._kill()

    @clkernel.hookimpl
    def after_eval_iteration(self, state: Any) -> None:
        if self.point and self.point[0] == "eval" and (self.point[1] + 1, self.point[2]) == (
                state.experiences_trained, state.epoch_iteration):
            self._kill()


def build(method: str, folder: Path, point: tuple[Any, ...] | None = None) -> tuple[Any, Strategy]:
    """The run of ``method`` writing into ``folder``, seeded as a script or ``clkernel run`` seeds it."""
    torch.set_num_threads(1)
    random.seed(SEED), numpy.random.seed(SEED), torch.manual_seed(SEED)
    if method == "pnn":
        bench = load("benchmark", "split-digits", n_experiences=3, seed=SEED, return_task_id=True)
        model = load("model", "pnn", input_size=64, num_classes=10, hidden_features_per_column=16, benchmark=bench)
    else:
        bench = load("benchmark", "split-digits", n_experiences=3, seed=SEED)
        model = load("model", "simple-mlp", input_size=64, num_classes=10, hidden_size=32)
    plugins = [load("plugin", name, **options) for name, options in METHODS[method]]
    loggers = [load("logger", name, run_dir=folder, **LOGGER_OPTIONS.get(name, {})) for name in LOGGERS]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = Strategy(model, optimizer, plugins=[*plugins, Killer(point), load("metric", "default"), *loggers],
                        train_mb_size=32, train_epochs=EPOCHS, device="cpu",
                        checkpoint=Checkpointer(folder / "checkpoints", every=EVERY, keep=2))
    return bench, strategy


def main(method: str, folder: str, point: str) -> None:
    """The killed run (in a subprocess): trains until :class:`Killer` kills it."""
    bench, strategy = build(method, Path(folder), tuple(json.loads(point)))
    run(strategy, bench)
    raise SystemExit(f"{method}: the run was not killed at {point}")


def kill_points() -> dict[str, tuple[Any, ...]]:
    """One point per method, drawn from a seeded generator, each kind (inside an epoch, at an experience's
    start, inside an evaluation) for three methods at least."""
    rng = random.Random(12)
    kinds = ["train", "start", "eval"] * 3
    rng.shuffle(kinds)
    points = {}
    for method, kind in zip(METHODS, kinds):
        if kind == "train":  # iteration 1..5 of an epoch: every experience's epoch has at least 5 minibatches
            points[method] = ("train", rng.randrange(1, 3), rng.randrange(EPOCHS), rng.randrange(1, 6))
        elif kind == "start":
            points[method] = ("start", rng.randrange(1, 3))
        else:
            points[method] = ("eval", rng.randrange(0, 3), rng.randrange(1, 3))
    return points


POINTS = kill_points()


def rows(path: Path) -> list[Any]:
    """The rows of a CSV (without the wall-clock column) or JSON-lines file (without time fields)."""
    lines = path.read_text().splitlines()
    if path.suffix == ".csv":
        header = lines[0].split(",")
        keep = [i for i, h in enumerate(header) if h != "wall_time"]
        return [[line.split(",")[i] for i in keep] for line in lines]
    return [{k: v for k, v in json.loads(line).items() if "time" not in k} for line in lines]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.Popen]]:
    """Every killed run, started together (they run while the references train here)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = {}
    for method, point in POINTS.items():
        folder = tmp_path_factory.mktemp(f"killed-{method}")
        code = f"import test_checkpoint_kill as t; t.main({method!r}, {str(folder)!r}, {json.dumps(point)!r})"
        out[method] = folder, subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, text=True)
    yield out
    for _, proc in out.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("method", list(METHODS))
def test_a_run_killed_at_any_point_resumes_bit_identical(method, killed, tmp_path):
    bench, reference = build(method, tmp_path)
    run(reference, bench)

    folder, proc = killed[method]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err  # killed where the point says, not finished nor failed
    newest = latest_checkpoint(folder / "checkpoints")
    assert newest is not None
    where = f"{method} killed at {POINTS[method]}, resumed from {read_checkpoint(newest)[0]['position']}"
    bench, resumed = build(method, folder)
    run(resumed, bench, resume_from=newest)

    for (name, a), b in zip(reference.state.model.state_dict().items(), resumed.state.model.state_dict().values()):
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b  # extra state: PNN's task registry
        assert same, f"{where}: model entry {name} differs"
    expected, got = (json.loads((f / "results.json").read_text()) for f in (tmp_path, folder))
    assert got["status"] == "completed"
    for key in ("final_metrics", "accuracy_matrix", "experiences_trained"):
        assert got[key] == expected[key], f"{where}: results.json {key} differs"
    files = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".csv", ".jsonl") and p.name != "events.jsonl")
    assert "metrics_eval.csv" in files and "metrics.jsonl" in files
    for name in files:
        assert rows(folder / name) == rows(tmp_path / name), f"{where}: rows of {name} differ"
