"""A resumed run emits, bit for bit, the metric values of the uninterrupted run, wherever the checkpoint was taken.

Run A trains uninterrupted with every metric family (periodic evaluations inside experiences and an evaluation
before training included), the kernel's ``Checkpointer`` writing a checkpoint every 3 training iterations and at
each experience's end. Each run B is a fresh strategy with a fresh evaluator resumed from one of them
(``clkernel.run(..., resume_from=)``): its evaluator must end with run A's history. Wall-clock and memory values
cannot repeat: for them only the names and steps must.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import clkernel
from clkernel_metrics import (
    AccuracyMatrixMetrics, AccuracyMetrics, ClassAccuracyMetrics, ConfusionMatrixMetrics, Evaluator, LossMetrics,
    TopKAccuracyMetrics, cpu_usage_metrics, ram_usage_metrics, timing_metrics,
)
from clkernel_metrics.standalone import CPUUsage, MaxRAM, Mean, WallTime

MEASURED = ("time_", "cpu_usage_", "max_ram_")  # values of the clock and the machine, not of the run


def _evaluator() -> Evaluator:
    every = dict(minibatch=True, running_epoch=True, epoch=True, experience=True, stream=True, every=4)
    return Evaluator(AccuracyMetrics(**every), LossMetrics(**every), TopKAccuracyMetrics(2, **every),
                     ClassAccuracyMetrics(epoch=True), ConfusionMatrixMetrics(experience=True),
                     AccuracyMatrixMetrics(forgetting=True, bwt=True, fwt=True), timing_metrics(),
                     cpu_usage_metrics(), ram_usage_metrics(every=0.05), flush_every=4)


def _roundtrip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class Each:
    """Calls ``fn()`` after every training iteration."""

    name = "each"

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        self.fn()


def _run(blobs: Any, plugins: list[Any], checkpoints: Path | None = None, resume_from: Path | None = None) -> None:
    bench = blobs.make_benchmark(num_exps=3, classes_per_exp=2, per_class=20)  # 40 samples: 5 iterations
    model = blobs.make_model(num_classes=6, seed=1)
    checkpoint = clkernel.Checkpointer(checkpoints, every=3, keep=100) if checkpoints is not None else None
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.005), plugins=plugins,
                                 train_mb_size=8, eval_mb_size=16, train_epochs=2, eval_every=1, device="cpu",
                                 generator=torch.Generator().manual_seed(0), checkpoint=checkpoint)
    clkernel.run(strategy, bench, resume_from=resume_from)


#: Checkpoints resumed from, numbered from 1 as written: after iterations 3, 6, 9, at experience 0's end, after
#: iterations 12, 15, 18, at experience 1's end, ... So 1: iteration 3, inside epoch 0 (minibatches buffered);
#: 3: iteration 9, inside epoch 1, after a periodic evaluation; 4: experience 0 trained, before its evaluation;
#: 6: iteration 15, the last of an epoch, its running values logged and its epoch values not yet; 13: the last
#: experience trained, before the last evaluation.
RESUMED = (1, 3, 4, 6, 13)


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


def test_a_resumed_evaluator_emits_what_the_uninterrupted_one_emitted(blobs, tmp_path):
    first = _evaluator()
    _run(blobs, [first], checkpoints=tmp_path)
    expected = first.all_metrics()
    assert {"fwt_stream/eval/test", "bwt_stream/eval/test", "forgetting_stream/eval/test",
            "class_acc_epoch/train/train/class000", "top2_acc_running_epoch/train/train", "acc_mb/train/train",
            "time_epoch/train/train", "confusion_matrix_exp/eval/test/exp002"} <= set(expected)
    files = clkernel.checkpoint.checkpoint_files(tmp_path)
    assert len(files) == 13  # 30 iterations: 10 every 3, 3 experience ends
    for number in RESUMED:
        fresh = _evaluator()
        _run(blobs, [fresh], resume_from=files[number - 1])
        _same(fresh.all_metrics(), expected)


def test_taking_a_state_changes_nothing(blobs):
    """The evaluator's state_dict() flushes nothing: an evaluator whose state is taken at every iteration emits
    what one left alone emits (sums keep their grouping, so their last bits)."""
    left_alone, observed = _evaluator(), _evaluator()
    _run(blobs, [left_alone, Each(lambda: None)])
    _run(blobs, [observed, Each(lambda: _roundtrip(observed.state_dict()))])
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
