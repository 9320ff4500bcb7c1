"""Checkpoints from Python: ``Strategy.state_dict`` / ``load_state_dict``, ``clkernel.save_checkpoint`` /
``load_checkpoint`` and the loop's ``Checkpointer``.

A run resumed from any of its checkpoints (inside an epoch, at an experience's end, before the last evaluation)
ends with the model, the metrics it returns and every plugin's state equal (``torch.equal``) to those of the
uninterrupted run. Bad checkpoint files (truncated, random bytes, pickles with a payload, other models, other
plugin lists, newer formats: hundreds of generated cases) are refused with an error naming what is wrong, and
neither the files nor the strategy change. Runs use the embedded split-digits benchmark, on the CPU.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clkernel
from clkernel import CheckpointError, Checkpointer, Strategy, load, load_checkpoint, read_checkpoint, run
from clkernel.checkpoint import FORMAT_VERSION, atomic_write, checkpoint_files, save_checkpoint

EPOCHS, MB = 2, 32


def build(plugins: tuple[str, ...] = (), *, hidden: int = 16, folder: Path | None = None, every: int = 0,
          keep: int = 1000, seed: int = 0, mb: int = MB) -> tuple[Any, torch.nn.Module, Strategy]:
    """Benchmark, model and strategy, built after seeding, as a script (or ``clkernel run``) builds them."""
    torch.manual_seed(seed)
    bench = load("benchmark", "split-digits", n_experiences=3, seed=seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    made = [load("plugin", name, **({"mem_size": 60} if name in ("replay", "gdumb") else {})) for name in plugins]
    checkpoint = Checkpointer(folder, every=every, keep=keep) if folder is not None else None
    strategy = Strategy(model, optimizer, plugins=[*made, load("metric", "default")], train_mb_size=mb,
                        train_epochs=EPOCHS, device="cpu", checkpoint=checkpoint)
    return bench, model, strategy


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # nan


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two uninterrupted runs of Replay + EWC: one without checkpoints, one writing one every 9 iterations."""
    folder = tmp_path_factory.mktemp("ckpts")
    bench, model, strategy = build(("replay", "ewc"))
    results = run(strategy, bench)
    bench, model2, strategy2 = build(("replay", "ewc"), folder=folder, every=9)
    results2 = run(strategy2, bench)
    return {"model": model.state_dict(), "results": results, "model2": model2.state_dict(), "results2": results2,
            "folder": folder, "files": checkpoint_files(folder),
            "plugins": {n: p.state_dict() for n, p in zip(strategy.plugin_names, strategy.plugins)
                        if n in ("replay", "ewc")}}


def test_checkpointing_does_not_change_the_run(reference):
    assert equal(reference["model"], reference["model2"])
    assert equal(reference["results"], reference["results2"])
    stages = [read_checkpoint(f)[0]["position"]["stage"] for f in reference["files"]]
    assert stages.count("eval") == 3 and "train" in stages  # every experience's end, and inside epochs


def test_resuming_from_any_checkpoint_ends_bit_identical(reference):
    files = reference["files"]
    picks = random.Random(0).sample(range(len(files)), 4) + [len(files) - 1]
    for i in picks:
        bench, model, strategy = build(("replay", "ewc"))
        results = run(strategy, bench, resume_from=files[i])
        where = read_checkpoint(files[i])[0]["position"]
        assert equal(model.state_dict(), reference["model"]), where
        assert equal(results, reference["results"]), where
        for name, state in reference["plugins"].items():
            assert equal(strategy.plugins[strategy.plugin_names.index(name)].state_dict(), state), (name, where)


def test_a_checkpoint_file_is_plain_tensors_with_a_header(reference):
    path = reference["files"][1]
    blob = torch.load(path, weights_only=True)  # loadable by anyone, safely
    header = blob["header"]
    assert header["kind"] == "clkernel-checkpoint" and header["format"] == FORMAT_VERSION
    assert header["plugins"] == ["replay", "ewc", "default-metrics"]
    assert header["kernel"] == clkernel.__version__ == header["distributions"]["clkernel"]
    assert {"clkernel-replay", "clkernel-ewc", "clkernel-metrics"} <= set(header["distributions"])
    payload = blob["payload"].numpy().tobytes()
    assert header["size"] == len(payload) and header["sha256"] == hashlib.sha256(payload).hexdigest()
    position = header["position"]
    assert position == {"experience": 0, "epoch": 0, "iteration": 18, "stage": "train"}  # every 9 iterations


def test_keep_the_last_k_and_number_them_in_order(tmp_path):
    bench, _, strategy = build(folder=tmp_path, every=5, keep=2)
    run(strategy, bench)
    files = checkpoint_files(tmp_path)
    assert len(files) == 2 and [f.name for f in files] == sorted(f.name for f in files)
    numbers = [int(f.stem.split("-")[1]) for f in files]
    assert numbers[1] == numbers[0] + 1 and numbers[0] > 2
    assert clkernel.latest_checkpoint(tmp_path) == files[-1]
    assert read_checkpoint(files[-1])[0]["position"]["stage"] == "eval"  # the last experience's end
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint-000001.pt"
    path.write_bytes(b"previous")

    def explode(f: Any) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, explode)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["checkpoint-000001.pt"]


def test_every_random_generator_comes_back(tmp_path):
    bench, _, strategy = build()
    random.seed(1), numpy.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / "c.pt", strategy)
    expected = (random.random(), numpy.random.rand(), torch.rand(()).item())
    random.seed(9), numpy.random.seed(9), torch.manual_seed(9)
    bench, _, other = build()
    load_checkpoint(tmp_path / "c.pt", other)
    assert (random.random(), numpy.random.rand(), torch.rand(()).item()) == expected


class _RequestAt:
    """Asks the strategy's checkpointer for a checkpoint at a training iteration, as a signal handler does."""

    name = "request"

    def __init__(self, iteration: int) -> None:
        self.iteration, self.strategy = iteration, None

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        if state.iteration == self.iteration:
            assert self.strategy.checkpoint.request(KeyboardInterrupt("asked"))


def test_a_request_writes_a_checkpoint_at_the_end_of_the_iteration_then_ends_the_run(tmp_path, reference):
    torch.manual_seed(0)
    bench = load("benchmark", "split-digits", n_experiences=3, seed=0)
    ck = Checkpointer(tmp_path)
    assert not ck.request(KeyboardInterrupt())  # outside a training experience: raise at once
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    asker = _RequestAt(25)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[asker], train_mb_size=MB,
                        train_epochs=EPOCHS, device="cpu", checkpoint=ck)
    asker.strategy = strategy
    with pytest.raises(KeyboardInterrupt, match="asked"):
        run(strategy, bench)
    assert strategy.state.outcome == "interrupted"
    header = read_checkpoint(clkernel.latest_checkpoint(tmp_path))[0]
    assert header["iteration"] == 25 and header["position"]["stage"] == "train"


class _Opaque:
    name = "opaque"

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": [1, {"x": object()}]}

    def load_state_dict(self, state: Any) -> None:
        pass


def test_a_plugin_state_that_is_not_plain_is_refused_when_saving_naming_the_plugin(tmp_path):
    model = torch.nn.Linear(2, 2)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[_Opaque()], device="cpu")
    with pytest.raises(CheckpointError, match=r"plugin 'opaque'.*\['buffer'\]\[1\]\['x'\].*builtins.object"):
        save_checkpoint(tmp_path / "c.pt", strategy)
    assert list(tmp_path.iterdir()) == []


def test_resuming_inside_an_experience_with_another_minibatch_size_is_refused(reference):
    inside = next(f for f in reference["files"] if read_checkpoint(f)[0]["position"]["stage"] == "train")
    bench, _, strategy = build(("replay", "ewc"), mb=16)
    with pytest.raises(CheckpointError, match=r"a global minibatch of 32 \(train_mb_size=32 on 1 process\(es\)\); "
                                              r"this strategy has 16 \(train_mb_size=16 on 1\)"):
        load_checkpoint(inside, strategy)


# ---------------------------------------------------------------------- bad checkpoints, generated

class _Evil:
    """Pickles as a call of os.system: what a malicious checkpoint would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return os.system, (f"touch {self.marker}",)


def _rewrite(blob: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    torch.save(blob, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def bad_cases(reference, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A valid checkpoint's bytes, and strategies that do not fit it, built once: a refused load must leave them
    unchanged, so reusing them across cases also checks that."""
    source = next(f for f in reference["files"] if read_checkpoint(f)[0]["position"]["stage"] == "train")
    data = source.read_bytes()
    blob = torch.load(io.BytesIO(data), weights_only=True)
    strategies = {
        "fits": build(("replay", "ewc"))[2],
        "shape": build(("replay", "ewc"), hidden=24)[2],
        "missing": build(("replay",))[2],
        "extra": build(("replay", "ewc", "lwf"))[2],
    }
    marker = tmp_path_factory.mktemp("marker") / "pwned"
    return {"data": data, "blob": blob, "strategies": strategies, "marker": marker,
            "folder": tmp_path_factory.mktemp("bad")}


KINDS = ["truncated", "random", "flipped", "pickle", "pickle_in_payload", "shape", "missing", "extra", "newer",
         "not_clkernel"]


@settings(max_examples=240, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), where=st.floats(0.0, 1.0), noise=st.binary(min_size=1, max_size=64),
       version=st.integers(FORMAT_VERSION + 1, 10**6))
def test_bad_checkpoints_are_refused_naming_what_is_wrong_and_change_nothing(bad_cases, kind, where, noise, version):
    data, blob, marker = bad_cases["data"], bad_cases["blob"], bad_cases["marker"]
    strategy = bad_cases["strategies"].get(kind, bad_cases["strategies"]["fits"])
    if kind == "truncated":
        content, expect = data[:int(where * (len(data) - 1))], r"is truncated or corrupt"
    elif kind == "random":
        content, expect = noise * (1 + int(where * 100)), r"is truncated or corrupt|holds a pickled object"
    elif kind == "flipped":  # a byte of the payload changed: the zip's or the header's checksum catches it
        buf = bytearray(data)
        payload = blob["payload"].numpy().tobytes()
        at = data.find(payload) + min(int(where * len(payload)), len(payload) - 1)
        buf[at] ^= noise[0] or 1
        content, expect = bytes(buf), r"is corrupt|is truncated or corrupt|holds a pickled object"
    elif kind == "pickle":
        content, expect = pickle.dumps({"header": _Evil(marker)}), r"holds a pickled object .*refused"
    elif kind == "pickle_in_payload":  # a valid header and checksum around a malicious payload
        inner = _rewrite({"state": _Evil(marker)})
        header = {**blob["header"], "size": len(inner), "sha256": hashlib.sha256(inner).hexdigest()}
        content = _rewrite({"header": header, "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8)})
        expect = r"holds a pickled object .*refused"
    elif kind == "newer":
        content = _rewrite({**blob, "header": {**blob["header"], "format": version}})
        expect = rf"format version {version}, newer than this clkernel .* upgrade"
    elif kind == "not_clkernel":
        content, expect = _rewrite({"model": torch.zeros(3), "noise": noise}), r"is not a clkernel checkpoint"
    else:
        content = data
        expect = {"shape": r"does not fit: size mismatch for 1.weight: copying a param with shape "
                           r"torch.Size\(\[16, 64\]\) from checkpoint, the shape in current model is torch.Size\(\[24, 64\]\)",
                  "missing": r"plugin 'ewc' of the checkpoint's run is missing from this strategy",
                  "extra": r"plugin 'lwf' of this strategy is extra"}[kind]
    path = bad_cases["folder"] / f"checkpoint-{kind}.pt"
    path.write_bytes(content)
    before_files = digest(bad_cases["folder"])
    before_state = strategy.state_dict()
    with pytest.raises(CheckpointError, match=expect) as info:
        load_checkpoint(path, strategy)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert digest(bad_cases["folder"]) == before_files
    after = strategy.state_dict()
    for key in ("model", "optimizer", "plugins"):
        assert equal(after[key], before_state[key]), key
    assert strategy.resume_position is None
    assert not marker.exists()
