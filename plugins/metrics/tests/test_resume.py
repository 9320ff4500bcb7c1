"""A resumed run emits, bit for bit, the metric values of the uninterrupted run, wherever the checkpoint was taken.

Run A trains uninterrupted with every metric family (periodic evaluations inside experiences and an evaluation
before training included) and takes the evaluator's ``state_dict()`` (through ``torch.save`` /
``torch.load(weights_only=True)``) at several points. Each run B repeats the same seeded training with an empty
plugin slot; at the checkpoint a fresh evaluator loads the state, gets ``before_run`` (what the kernel does after
loading a checkpoint) and takes the slot: from there on it must emit what run A's evaluator emitted, and end with
the same history. Wall-clock and memory values cannot repeat: for them only the names and steps must.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import pytest
import torch

import clkernel
from clkernel.hookspecs import SPEC
from clkernel_metrics import (
    AccuracyMatrixMetrics, AccuracyMetrics, ClassAccuracyMetrics, ConfusionMatrixMetrics, Evaluator, LossMetrics,
    TopKAccuracyMetrics, cpu_usage_metrics, ram_usage_metrics, timing_metrics,
)
from clkernel_metrics.standalone import CPUUsage, MaxRAM, Mean, WallTime

MEASURED = ("time_", "cpu_usage_", "max_ram_")  # values of the clock and the machine, not of the run


def _evaluator() -> Evaluator:
    every = dict(minibatch=True, running_epoch=True, epoch=True, experience=True, stream=True, every=3)
    return Evaluator(AccuracyMetrics(**every), LossMetrics(**every), TopKAccuracyMetrics(2, **every),
                     ClassAccuracyMetrics(epoch=True), ConfusionMatrixMetrics(experience=True),
                     AccuracyMatrixMetrics(forgetting=True, bwt=True, fwt=True), timing_metrics(),
                     cpu_usage_metrics(), ram_usage_metrics(every=0.05), flush_every=4)


def _roundtrip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class Slot:
    """Forwards every event to ``target``; with none, the event is dropped."""

    name = "slot"

    def __init__(self) -> None:
        self.target: Any = None


def _forward(event: str) -> Callable[..., Any]:
    def hook(self: Slot, state: Any) -> Any:
        fn = getattr(self.target, event, None)
        return fn(state) if fn is not None else None

    hook.__name__ = event
    return clkernel.hookimpl(hook)


for _event in SPEC:
    if _event != "log_metrics":
        setattr(Slot, _event, _forward(_event))


class Points:
    """The last plugin: ``at(label, state)`` after every training iteration (``iteration N``) and at the end of
    every training experience (``trained K``, at the start of the evaluation that follows it)."""

    name = "points"

    def __init__(self, at: Callable[[str, Any], None]) -> None:
        self.at = at

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        self.at(f"iteration {state.iteration}", state)

    @clkernel.hookimpl(tryfirst=True)
    def before_eval(self, state: Any) -> None:
        if state.experiences_trained and state.epoch + 1 == state.train_epochs:
            self.at(f"trained {state.experiences_trained}", state)


def _run(blobs: Any, plugins: list[Any]) -> None:
    bench = blobs.make_benchmark(num_exps=3, classes_per_exp=2, per_class=20)  # 40 samples: 5 iterations
    model = blobs.make_model(num_classes=6, seed=1)
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.005), plugins=plugins,
                                 train_mb_size=8, eval_mb_size=16, train_epochs=2, eval_every=1, device="cpu",
                                 generator=torch.Generator().manual_seed(0))
    clkernel.run(strategy, bench)


POINTS = ["iteration 2", "iteration 7", "iteration 10", "trained 2"]  # a buffered minibatch; the middle of
# epoch 1 (after a periodic evaluation); the last iteration of an experience; before its evaluation


def _same(a: dict[str, list[tuple[int, Any]]], b: dict[str, list[tuple[int, Any]]]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert [s for s, _ in a[name]] == [s for s, _ in b[name]], name
        if name.startswith(MEASURED):
            continue
        for (_, x), (_, y) in zip(a[name], b[name]):
            if isinstance(x, torch.Tensor):
                torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)  # bit for bit
            else:
                assert x == y or (math.isnan(x) and math.isnan(y)), (name, x, y)


def test_a_resumed_evaluator_emits_what_the_uninterrupted_one_emitted(blobs):
    first = _evaluator()
    states: dict[str, Any] = {}

    def grab(label: str, state: Any) -> None:
        if label in POINTS:
            states[label] = _roundtrip(first.state_dict())

    _run(blobs, [first, Points(grab)])
    assert set(states) == set(POINTS)
    expected = first.all_metrics()
    assert {"fwt_stream/eval/test", "bwt_stream/eval/test", "forgetting_stream/eval/test",
            "class_acc_epoch/train/train/class000", "top2_acc_running_epoch/train/train", "acc_mb/train/train",
            "time_epoch/train/train", "confusion_matrix_exp/eval/test/exp002"} <= set(expected)

    for label in POINTS:
        slot, fresh = Slot(), _evaluator()

        def switch(at: str, state: Any, label: str = label, slot: Slot = slot, fresh: Evaluator = fresh) -> None:
            if at == label:
                fresh.load_state_dict(states[label])
                fresh.before_run(state)
                slot.target = fresh

        _run(blobs, [slot, Points(switch)])
        assert slot.target is fresh, label
        _same(fresh.all_metrics(), expected)


def test_taking_a_state_changes_nothing(blobs):
    """The evaluator's state_dict() flushes nothing: an evaluator whose state is taken at every iteration emits
    what one left alone emits (sums keep their grouping, so their last bits)."""
    left_alone, observed = _evaluator(), _evaluator()
    _run(blobs, [left_alone])
    _run(blobs, [observed, Points(lambda label, state: observed.state_dict())])
    _same(observed.all_metrics(), left_alone.all_metrics())


def test_meters_continue_their_period():
    mean = Mean()
    mean.add(torch.tensor(3.0), 4)
    resumed = Mean()
    resumed.load_state_dict(_roundtrip(mean.state_dict()))
    resumed.add(torch.tensor(1.0), 4)
    assert resumed.result() == 0.5

    for meter in (WallTime(), CPUUsage()):
        resumed = type(meter)()
        resumed.load_state_dict(_roundtrip({**meter.state_dict(), "elapsed": _plus(meter.state_dict()["elapsed"])}))
        if isinstance(meter, WallTime) and not isinstance(meter, CPUUsage):
            assert 100.0 <= resumed.result() < 110.0  # 100 s measured before the checkpoint, little since
        else:
            assert resumed.result() >= 0.0
    ram = MaxRAM()
    resumed_ram = MaxRAM()
    resumed_ram.load_state_dict(_roundtrip({"max": 1e9}))
    assert resumed_ram.result() == 1e9 and ram.result() < 1e9  # the peak before the checkpoint counts
    ram.close()
    resumed_ram.close()


def _plus(elapsed: Any) -> Any:
    return tuple(x + 100.0 for x in elapsed) if isinstance(elapsed, (tuple, list)) else elapsed + 100.0


@pytest.mark.parametrize("bad", [{"history": {}, "metrics": []}])
def test_a_state_of_other_families_is_refused(bad):
    with pytest.raises(ValueError, match="the state holds 0 metric families, this evaluator has 9"):
        _evaluator().load_state_dict(bad)
