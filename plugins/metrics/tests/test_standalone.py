"""Standalone metrics (update / result / reset) against values computed by hand."""

from __future__ import annotations

import math
import time

import pytest
import torch

from clkernel_metrics import (
    Accuracy, AccuracyMatrix, BackwardTransfer, ClassAccuracy, ConfusionMatrix, CPUUsage, DiskUsage, Forgetting,
    ForwardTransfer, Loss, MaxGPUMemory, MaxRAM, TopKAccuracy, WallTime, backward_transfer, forgetting,
    forward_transfer,
)
from clkernel_metrics.standalone import (
    backward_transfer_per_experience, forgetting_per_experience, forward_transfer_per_experience,
)

LOGITS = torch.tensor([[2.0, 1.0, 0.0],   # pred 0, 2nd 1
                       [0.0, 3.0, 1.0],   # pred 1, 2nd 2
                       [1.0, 0.0, 2.0],   # pred 2, 2nd 0
                       [0.5, 2.0, 1.0],   # pred 1, 2nd 2
                       [3.0, 2.0, 1.0]])  # pred 0, 2nd 1
TARGETS = torch.tensor([0, 2, 2, 0, 1])  # right: samples 0 and 2; top-2 right: 0, 1, 2, 4


def test_accuracy_pools_samples_across_updates():
    acc = Accuracy()
    assert math.isnan(acc.result())
    acc.update(LOGITS, TARGETS)
    assert acc.result() == pytest.approx(2 / 5)
    acc.update(torch.tensor([1, 1, 1]), torch.tensor([1, 1, 0]))  # labels directly: 2 right of 3
    assert acc.result() == pytest.approx(4 / 8)  # sample-weighted, not (0.4 + 0.667) / 2
    acc.reset()
    assert acc.count == 0 and math.isnan(acc.result())


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"shape \(5, 3, 1\)"):
        Accuracy().update(LOGITS.unsqueeze(-1), TARGETS)


def test_topk_accuracy():
    top2 = TopKAccuracy(2)
    top2.update(LOGITS, TARGETS)
    assert top2.result() == pytest.approx(4 / 5)
    top1 = TopKAccuracy(1)
    top1.update(LOGITS, TARGETS)
    assert top1.result() == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="k=4 exceeds the model's 3 outputs"):
        TopKAccuracy(4).update(LOGITS, TARGETS)


def test_loss_is_a_per_sample_mean():
    loss = Loss()
    loss.update(torch.tensor(2.0), n=3)
    loss.update(torch.tensor([1.0, 0.0]))  # per-sample values
    assert loss.result() == pytest.approx((2 * 3 + 1 + 0) / 5)


def test_class_accuracy_and_confusion_matrix():
    per_class = ClassAccuracy()
    per_class.update(LOGITS, TARGETS)
    # class 0: samples 0 (right), 3 (wrong); class 1: sample 4 (wrong); class 2: samples 1 (wrong), 2 (right)
    assert per_class.result() == {0: 0.5, 1: 0.0, 2: 0.5}
    cm = ConfusionMatrix()
    cm.update(LOGITS, TARGETS)
    assert cm.result().tolist() == [[1, 1, 0],
                                     [1, 0, 0],
                                     [0, 1, 1]]
    cm.update(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), torch.tensor([3]))  # a fourth class appears
    assert cm.result().shape == (4, 4) and cm.result()[3, 3] == 1 and cm.result().sum() == 6


# The paper definitions, on a hand-made matrix. R[i][j]: accuracy on j after training i; b: before training.
R = [[0.90, 0.10, 0.20],
     [0.95, 0.80, 0.30],
     [0.50, 0.70, 0.95]]
B = [0.10, 0.05, 0.20]


def _matrix() -> AccuracyMatrix:
    m = AccuracyMatrix()
    for j, v in enumerate(B):
        m.update(None, j, v)
    for i, row in enumerate(R):
        for j, v in enumerate(row):
            m.update(i, j, v)
    return m


def test_accuracy_matrix_layout():
    m = _matrix()
    assert m.result().tolist() == R
    assert m.initial().tolist() == B
    partial = AccuracyMatrix()
    partial.update(0, 0, 0.5)
    partial.update(1, 2, 0.25)
    out = partial.result()
    assert out.shape == (2, 3) and out[0, 0] == 0.5 and out[1, 2] == 0.25 and out.isnan().sum() == 4


def test_bwt_lopez_paz_ranzato():
    # BWT = 1/(T-1) sum_{i<T} R[T,i] - R[i,i]
    expected = ((0.50 - 0.90) + (0.70 - 0.80)) / 2
    assert backward_transfer(_matrix().result()) == pytest.approx(expected)
    assert backward_transfer_per_experience(_matrix().result()) == pytest.approx({0: -0.40, 1: -0.10})
    assert backward_transfer(_matrix().result(), k=1) == pytest.approx(0.95 - 0.90)


def test_fwt_lopez_paz_ranzato():
    # FWT = 1/(T-1) sum_{i>=2} R[i-1,i] - b_i
    expected = ((0.10 - 0.05) + (0.30 - 0.20)) / 2
    m = _matrix()
    assert forward_transfer(m.result(), m.initial()) == pytest.approx(expected)
    assert forward_transfer_per_experience(m.result(), m.initial()) == pytest.approx({1: 0.05, 2: 0.10})
    assert math.isnan(forward_transfer(m.result(), torch.zeros(0)))  # no evaluation before training


def test_forgetting_chaudhry():
    # f_j^k = max_{l<k} R[l,j] - R[k,j]; average over j < k
    m = _matrix().result()
    assert forgetting_per_experience(m) == pytest.approx({0: 0.95 - 0.50, 1: 0.80 - 0.70})
    assert forgetting(m) == pytest.approx((0.45 + 0.10) / 2)
    assert forgetting(m, k=1) == pytest.approx(0.90 - 0.95)  # accuracy rose: negative forgetting
    assert math.isnan(forgetting(m, k=0))


def test_matrix_metric_classes():
    f, bwt, fwt = Forgetting(), BackwardTransfer(), ForwardTransfer()
    for metric in (f, bwt, fwt):
        for j, v in enumerate(B):
            metric.update(None, j, v)
        for i, row in enumerate(R):
            for j, v in enumerate(row):
                metric.update(i, j, v)
    assert f.result() == pytest.approx(0.275)
    assert bwt.result() == pytest.approx(-0.25)
    assert fwt.result() == pytest.approx(0.075)
    f.reset()
    assert math.isnan(f.result())


def test_wall_time_and_cpu_usage():
    t, cpu = WallTime(), CPUUsage()
    time.sleep(0.05)
    t.update()
    cpu.update()
    assert t.result() >= 0.05
    idle = cpu.result()
    cpu.reset()
    end = time.perf_counter() + 0.1
    while time.perf_counter() < end:
        pass
    busy = cpu.result()
    assert idle < busy and busy > 10


def test_max_ram_sees_a_transient_allocation():
    ram = MaxRAM(every=0.01)
    try:
        before = ram.result()
        big = torch.ones(40 * 2**20 // 4 * 4)  # 160 MiB, touched
        big += 1
        time.sleep(0.05)
        del big
        assert ram.result() >= before + 100
        ram.reset()
        assert ram.result() < before + 100
    finally:
        ram.close()


def test_max_gpu_memory_needs_cuda():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        MaxGPUMemory("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_max_gpu_memory_nested_periods():
    outer = MaxGPUMemory("cuda")
    x = torch.ones(2**20 * 16, device="cuda")  # 64 MiB
    del x
    inner = MaxGPUMemory("cuda")  # resets CUDA's peak: the outer period keeps it
    assert outer.result() >= 64 and inner.result() < 64


def test_disk_usage(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 2**20)
    (tmp_path / "y.bin").write_bytes(b"0" * 2**19)
    disk = DiskUsage([tmp_path, tmp_path / "missing"])
    assert disk.result() == pytest.approx(1.5)
    (tmp_path / "z.bin").write_bytes(b"0" * 2**19)
    assert disk.result() == pytest.approx(1.5)  # measured at update()
    disk.update()
    assert disk.result() == pytest.approx(2.0)


def test_options_are_validated_by_the_kernel_validators():
    with pytest.raises(ValueError, match="top-k accuracy: k must be a positive integer, got 0"):
        TopKAccuracy(0)
    with pytest.raises(ValueError, match="max RAM: every must be a positive number, got -1"):
        MaxRAM(-1)
    with pytest.raises(ValueError, match="max RAM: every must be a positive number, got True"):
        MaxRAM(True)  # type: ignore[arg-type]
