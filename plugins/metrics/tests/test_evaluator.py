"""The Evaluator in the training loop, on a model with fixed predictions: every value is known by hand."""

from __future__ import annotations

import math

import pytest
import torch

import clkernel
from clkernel_metrics import (
    RUNNING_EVERY, AccuracyMatrixMetrics, AccuracyMetrics, ClassAccuracyMetrics, ConfusionMatrixMetrics, Evaluator,
    LossMetrics, PluginMetric, TopKAccuracyMetrics, default_evaluator, disk_usage_metrics, gpu_usage_metrics,
    timing_metrics,
)

R2 = [[0.8, 0.1], [0.6, 0.9]]
B2 = [0.2, 0.05]


class MinibatchRecorder:
    """Computes the accuracy of every training minibatch independently of the metrics."""

    name = "recorder"

    def __init__(self) -> None:
        self.right: list[int] = []
        self.sizes: list[int] = []

    @clkernel.hookimpl
    def after_training_iteration(self, state):
        self.right.append(int((state.mb_output.argmax(-1) == state.mb[1]).sum()))
        self.sizes.append(len(state.mb[1]))


def _values(history, name):
    return [v for _, v in history[name]]


def test_accuracy_and_loss_at_every_granularity(table):
    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    evaluator = Evaluator(
        AccuracyMetrics(minibatch=True, running_epoch=True, epoch=True, experience=True, stream=True),
        LossMetrics(minibatch=True, running_epoch=True, epoch=True, experience=True, stream=True))
    recorder = MinibatchRecorder()
    strategy = table.strategy(setup, evaluator, recorder, train_epochs=2)
    r, w = table.ce_right(4), table.ce_wrong(4)

    out = strategy.train(setup.train[0])
    assert out["acc_epoch/train/train"] == pytest.approx(0.75)
    assert out["loss_epoch/train/train"] == pytest.approx(0.75 * r + 0.25 * w, rel=1e-6)
    out = strategy.eval(setup.test)
    assert out["acc_exp/eval/test/exp000"] == pytest.approx(0.8)
    assert out["acc_exp/eval/test/exp001"] == pytest.approx(0.1)
    assert out["acc_stream/eval/test"] == pytest.approx((8 + 2) / 30)  # pooled over samples
    assert out["acc_exp_mean/eval/test"] == pytest.approx((0.8 + 0.1) / 2)  # mean over experiences
    assert out["loss_exp/eval/test/exp000"] == pytest.approx(0.8 * r + 0.2 * w, rel=1e-6)
    assert out["loss_stream/eval/test"] == pytest.approx((8 * r + 2 * w + 2 * r + 18 * w) / 30, rel=1e-6)
    assert out["loss_exp_mean/eval/test"] == pytest.approx((0.8 * r + 0.2 * w + 0.1 * r + 0.9 * w) / 2, rel=1e-6)

    strategy.train(setup.train[1])
    out = strategy.eval(setup.test)
    assert out["acc_exp/eval/test/exp000"] == pytest.approx(0.6)
    assert out["acc_stream/eval/test"] == pytest.approx((6 + 18) / 30)

    history = evaluator.all_metrics()
    assert _values(history, "acc_epoch/train/train") == pytest.approx([0.75, 0.75, 0.5, 0.5])
    mb = _values(history, "acc_mb/train/train")
    assert mb == pytest.approx([r_ / n for r_, n in zip(recorder.right, recorder.sizes)])
    running = _values(history, "acc_running_epoch/train/train")
    per_epoch = [2, 2, 3, 3]  # minibatches of 8 per epoch: 16 / 8, then 24 / 8
    expected, k = [], 0
    for n_mb in per_epoch:
        right = total = 0
        for _ in range(n_mb):
            right, total = right + recorder.right[k], total + recorder.sizes[k]
            expected.append(right / total)
            k += 1
    assert running == pytest.approx(expected)
    assert [s for s, _ in history["acc_epoch/train/train"]] == [2, 4, 7, 10]  # step: state.iteration
    assert len(_values(history, "loss_mb/train/train")) == 10
    assert all(type(v) is float for _, v in history["acc_mb/train/train"])


class ChunkSpy(PluginMetric):
    """Records how many minibatches each chunk holds: how often the evaluator flushed."""

    uses_outputs = True

    def __init__(self) -> None:
        self.minibatches: list[tuple[str, int]] = []

    def update(self, chunk) -> None:
        self.minibatches.append((chunk.phase, len(chunk.sizes)))


class RunningRecorder:
    """The running epoch accuracy and loss and the minibatch accuracy at every iteration, computed independently
    of the metrics: ``values[iteration] = (running acc, running loss, minibatch acc)``."""

    name = "running-recorder"

    def __init__(self) -> None:
        self.values: dict[int, tuple[float, float, float]] = {}

    @clkernel.hookimpl
    def before_training_epoch(self, state):
        self.right = self.loss = self.n = 0.0

    @clkernel.hookimpl
    def after_training_iteration(self, state):
        n = len(state.mb[1])
        right = float((state.mb_output.argmax(-1) == state.mb[1]).sum())
        self.right, self.loss, self.n = self.right + right, self.loss + float(state.loss.detach()) * n, self.n + n
        self.values[state.iteration] = (self.right / self.n, self.loss / self.n, right / n)


def test_values_every_k_iterations_cost_one_flush_per_emission(table):
    """Running values every 3 iterations: the buffer is flushed at iterations 3, 6, 9... and at epoch ends, not
    at every iteration; the running values pool the epoch so far, the mb values hold the last minibatch only."""
    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[64, 24], train_right=[0.75, 0.5])
    spy, recorder = ChunkSpy(), RunningRecorder()
    evaluator = Evaluator(AccuracyMetrics(minibatch=True, running_epoch=True, epoch=False, stream=False, every=3),
                          LossMetrics(running_epoch=True, epoch=False, stream=False, every=3), spy)
    strategy = table.strategy(setup, evaluator, recorder, train_epochs=2)  # 8 minibatches of 8 per epoch
    strategy.train(setup.train[0])
    assert spy.minibatches == [("train", n) for n in (3, 3, 2, 1, 3, 3, 1)]  # flushes at 3, 6, 8 | 9, 12, 15, 16
    history = evaluator.all_metrics()
    steps = [3, 6, 9, 12, 15]
    assert [s for s, _ in history["acc_running_epoch/train/train"]] == steps
    assert _values(history, "acc_running_epoch/train/train") == pytest.approx([recorder.values[i][0] for i in steps])
    assert _values(history, "loss_running_epoch/train/train") == pytest.approx(
        [recorder.values[i][1] for i in steps], rel=1e-6)
    assert _values(history, "acc_mb/train/train") == pytest.approx([recorder.values[i][2] for i in steps])
    assert len({round(v, 6) for v in _values(history, "acc_mb/train/train")}) > 1  # not all the same value


def test_flush_size_does_not_change_values(table):
    results = []
    for flush_every, flush_elements in ((1, 2**21), (2, 2**21), (256, 2**21), (256, 40)):  # 40: every 2nd mb
        setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
        evaluator = Evaluator(AccuracyMetrics(), LossMetrics(), flush_every=flush_every,
                              flush_elements=flush_elements)
        strategy = table.strategy(setup, evaluator, eval_mb_size=3)
        strategy.train(setup.train)
        strategy.eval(setup.test)
        results.append(evaluator.last_metrics())
    for other in results[1:]:
        assert other.keys() == results[0].keys()
        for key in results[0]:
            assert other[key] == pytest.approx(results[0][key], rel=1e-6)


def test_default_metrics_return_the_documented_names(table):
    assert RUNNING_EVERY == 32
    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    evaluator = default_evaluator()
    strategy = table.strategy(setup, evaluator)
    assert evaluator.needs_initial_eval(strategy.state) is False
    assert set(strategy.eval(setup.test)) == {  # before training: b, no matrix yet
        "acc_exp/eval/test/exp000", "acc_exp/eval/test/exp001", "acc_stream/eval/test", "acc_exp_mean/eval/test",
        "loss_exp/eval/test/exp000", "loss_exp/eval/test/exp001", "loss_stream/eval/test",
        "loss_exp_mean/eval/test", "accuracy_initial_stream/eval/test"}
    assert set(strategy.train(setup.train[0])) == {"acc_epoch/train/train", "loss_epoch/train/train"}  # 2 it < 32
    out = strategy.eval(setup.test)
    assert set(out) == {
        "acc_exp/eval/test/exp000", "acc_exp/eval/test/exp001", "acc_stream/eval/test", "acc_exp_mean/eval/test",
        "loss_exp/eval/test/exp000", "loss_exp/eval/test/exp001", "loss_stream/eval/test",
        "loss_exp_mean/eval/test", "accuracy_matrix_stream/eval/test"}
    assert out["accuracy_matrix_stream/eval/test"].tolist() == [pytest.approx(R2[0])]
    for name in out:
        clkernel.parse_metric_name(name)  # every name follows the kernel's scheme

    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    strategy = table.strategy(setup, default_evaluator(running_every=1))
    out = strategy.train(setup.train[0])
    assert out["acc_running_epoch/train/train"] == pytest.approx(0.75)  # a 0-d tensor: the whole epoch at its end
    assert out["loss_running_epoch/train/train"] == pytest.approx(out["loss_epoch/train/train"], rel=1e-6)
    with pytest.raises(ValueError, match="default metrics: running_every must be a positive integer, got 0"):
        default_evaluator(running_every=0)


# The hand-made matrix of test_standalone: R[i][j] after training i, b before training.
R3 = [[0.90, 0.10, 0.20],
      [0.95, 0.80, 0.30],
      [0.50, 0.70, 0.95]]
B3 = [0.10, 0.05, 0.20]


def test_accuracy_matrix_forgetting_bwt_fwt_in_the_loop(table):
    setup = table.build(R3, B3, test_sizes=[20, 20, 20], train_sizes=[8, 8, 8], train_right=[1, 1, 1])
    cl = Evaluator(AccuracyMatrixMetrics(matrix=True, forgetting=True, bwt=True, fwt=True))
    strategy = table.strategy(setup, cl)
    assert cl.needs_initial_eval(strategy.state) is True
    out_b = strategy.eval(setup.test)  # before training: b is recorded and logged, nothing is derived yet
    assert set(out_b) == {"accuracy_initial_stream/eval/test"}
    b = out_b["accuracy_initial_stream/eval/test"]
    assert b.dtype == torch.float64 and b.shape == (3,) and b.tolist() == pytest.approx(B3)
    out0 = (strategy.train(setup.train[0]), strategy.eval(setup.test))[1]
    out1 = (strategy.train(setup.train[1]), strategy.eval(setup.test))[1]
    out2 = (strategy.train(setup.train[2]), strategy.eval(setup.test))[1]

    matrix = out0["accuracy_matrix_stream/eval/test"]
    assert matrix.shape == (1, 3) and matrix[0].tolist() == pytest.approx(R3[0])
    assert "forgetting_stream/eval/test" not in out0 and "bwt_stream/eval/test" not in out0
    assert out0["fwt_exp/eval/test/exp001"] == pytest.approx(0.10 - 0.05)
    assert out0["fwt_stream/eval/test"] == pytest.approx(0.05)

    assert out1["forgetting_exp/eval/test/exp000"] == pytest.approx(0.90 - 0.95)
    assert out1["bwt_exp/eval/test/exp000"] == pytest.approx(0.95 - 0.90)
    assert out1["fwt_stream/eval/test"] == pytest.approx(((0.10 - 0.05) + (0.30 - 0.20)) / 2)

    assert out2["accuracy_matrix_stream/eval/test"].flatten().tolist() == pytest.approx(sum(R3, []))
    assert out2["forgetting_exp/eval/test/exp000"] == pytest.approx(0.95 - 0.50)
    assert out2["forgetting_exp/eval/test/exp001"] == pytest.approx(0.80 - 0.70)
    assert out2["forgetting_stream/eval/test"] == pytest.approx((0.45 + 0.10) / 2)
    assert out2["bwt_stream/eval/test"] == pytest.approx(((0.50 - 0.90) + (0.70 - 0.80)) / 2)
    assert out2["fwt_stream/eval/test"] == pytest.approx(0.075)


def test_periodic_evaluation_inside_an_experience_is_not_a_row(table):
    setup = table.build(R3, B3, test_sizes=[20, 20, 20], train_sizes=[8, 8, 8], train_right=[1, 1, 1])
    cl = Evaluator(AccuracyMatrixMetrics(matrix=True, bwt=True))
    strategy = table.strategy(setup, cl, train_epochs=2, eval_every=1)
    out = strategy.train(setup.train, eval_streams=[setup.test])
    assert out["accuracy_matrix_stream/eval/test"].flatten().tolist() == pytest.approx(sum(R3, []))
    assert out["bwt_stream/eval/test"] == pytest.approx(-0.25)


def test_the_kernel_runs_the_initial_evaluation_that_fwt_asks_for(table):
    setup = table.build(R3, B3, test_sizes=[20, 20, 20], train_sizes=[8, 8, 8], train_right=[1, 1, 1])
    strategy = table.strategy(setup, Evaluator(AccuracyMatrixMetrics(matrix=False, fwt=True)))
    out = strategy.train(setup.train, eval_streams=[setup.test])
    assert out["accuracy_initial_stream/eval/test"].tolist() == pytest.approx(B3)
    assert out["fwt_exp/eval/test/exp001"] == pytest.approx(0.10 - 0.05)
    assert out["fwt_exp/eval/test/exp002"] == pytest.approx(0.30 - 0.20)
    assert out["fwt_stream/eval/test"] == pytest.approx(0.075)
    assert "accuracy_matrix_stream/eval/test" not in out  # matrix=False


def test_fwt_without_initial_evaluation_emits_nothing(table):
    setup = table.build(R3, B3, test_sizes=[20, 20, 20], train_sizes=[8, 8, 8], train_right=[1, 1, 1])
    strategy = table.strategy(setup, Evaluator(AccuracyMatrixMetrics(matrix=False, fwt=True)))
    strategy.train(setup.train[0])
    assert strategy.eval(setup.test) == {}


def test_per_task_stream_accuracy(table):
    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5],
                        test_tasks=[0, 1])
    strategy = table.strategy(setup, Evaluator(AccuracyMetrics(epoch=False)))
    strategy.train(setup.train[0])
    out = strategy.eval(setup.test)
    assert out["acc_stream/eval/test/task000"] == pytest.approx(0.8)
    assert out["acc_stream/eval/test/task001"] == pytest.approx(0.1)
    # one experience holding both task labels: counted sample by sample
    from clkernel import Experience, Stream

    merged = setup.test[0].dataset.concat(setup.test[1].dataset)
    out = strategy.eval(Stream("mixed", [Experience(0, merged)]))
    assert out["acc_stream/eval/mixed/task000"] == pytest.approx(0.8)
    assert out["acc_stream/eval/mixed/task001"] == pytest.approx(0.1)
    single = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    strategy = table.strategy(single, Evaluator(AccuracyMetrics(epoch=False)))
    assert not any("task" in k for k in strategy.eval(single.test))


def test_class_accuracy_topk_and_confusion_matrix(table):
    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    evaluator = Evaluator(ClassAccuracyMetrics(epoch=True), TopKAccuracyMetrics(2, epoch=False),
                          ConfusionMatrixMetrics(num_classes=5, experience=True))
    strategy = table.strategy(setup, evaluator)
    out_train = strategy.train(setup.train[0])
    out = strategy.eval(setup.test)
    preds = setup.table[1]  # stage 1: after training experience 0
    cm = [[0] * 5 for _ in range(5)]
    right: dict[int, list[int]] = {}
    for exp in setup.test:
        ids = exp.dataset.get_batch(torch.arange(len(exp.dataset)))[0][:, 0].long().tolist()
        for i, y in zip(ids, exp.dataset.targets.tolist()):
            p = int(preds[i])
            cm[y][p] += 1
            right.setdefault(y, []).append(int(p == y))
    assert out["confusion_matrix_stream/eval/test"].tolist() == cm
    assert out["confusion_matrix_stream/eval/test"].dtype == torch.long
    assert out["confusion_matrix_exp/eval/test/exp000"].sum() == 10
    for c, flags in right.items():
        assert out[f"class_acc_stream/eval/test/class{c:03d}"] == pytest.approx(sum(flags) / len(flags))
    assert set(k for k in out_train if k.startswith("class_acc_epoch")) == {
        "class_acc_epoch/train/train/class000", "class_acc_epoch/train/train/class001"}
    expected = 0  # top-2 from the model's logits, computed directly
    for exp in setup.test:
        ids = exp.dataset.get_batch(torch.arange(len(exp.dataset)))[0][:, 0].long()
        logits = setup.model(ids.float().unsqueeze(1)).detach()
        expected += int((logits.topk(2, dim=-1).indices == exp.dataset.targets.unsqueeze(-1)).any(-1).sum())
    assert out["top2_acc_stream/eval/test"] == pytest.approx(expected / 30)
    assert out["top2_acc_stream/eval/test"] > (8 + 2) / 30  # more than top-1


def test_resource_metrics_in_the_loop(table, tmp_path):
    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    (tmp_path / "f.bin").write_bytes(b"0" * 2**20)
    evaluator = Evaluator(timing_metrics(), gpu_usage_metrics(), disk_usage_metrics([tmp_path]))
    strategy = table.strategy(setup, evaluator, train_epochs=2)
    out = strategy.train(setup.train[0])
    assert set(out) == {"time_epoch/train/train", "time_exp/train/train/exp000", "time_stream/train/train",
                        "disk_usage_exp/train/train/exp000", "disk_usage_stream/train/train"}  # no GPU on CPU
    assert 0 < out["time_epoch/train/train"] <= out["time_exp/train/train/exp000"] <= out["time_stream/train/train"]
    assert out["disk_usage_stream/train/train"] == pytest.approx(1.0)
    out = strategy.eval(setup.test)
    assert out["time_exp/eval/test/exp001"] > 0 and out["time_stream/eval/test"] > 0


def test_state_dict_round_trip(table, tmp_path):
    setup = table.build(R3, B3, test_sizes=[20, 20, 20], train_sizes=[8, 8, 8], train_right=[1, 1, 1])
    cl = Evaluator(AccuracyMatrixMetrics(bwt=True), AccuracyMetrics())
    strategy = table.strategy(setup, cl)
    for exp in setup.train[:2]:
        strategy.train(exp)
        strategy.eval(setup.test)
    torch.save(cl.state_dict(), tmp_path / "ckpt.pt")
    restored = Evaluator(AccuracyMatrixMetrics(bwt=True), AccuracyMetrics())
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    before, after = cl.all_metrics(), restored.all_metrics()
    assert before.keys() == after.keys()
    for name in before:
        assert [s for s, _ in before[name]] == [s for s, _ in after[name]]
        for (_, a), (_, b) in zip(before[name], after[name]):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, equal_nan=True)
            else:
                assert a == b
    strategy = table.strategy(setup, restored)
    setup.model.stage = 2
    strategy.train(setup.train[2])
    out = strategy.eval(setup.test)
    assert out["accuracy_matrix_stream/eval/test"].flatten().tolist() == pytest.approx(sum(R3, []))


def test_bad_inputs_get_clear_errors(table):
    with pytest.raises(TypeError, match="PluginMetric"):
        Evaluator(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="acc: choose at least one of"):
        AccuracyMetrics(epoch=False, experience=False, stream=False)
    with pytest.raises(ValueError, match="confusion matrix: num_classes must be a positive integer, got 0"):
        ConfusionMatrixMetrics(num_classes=0)
    with pytest.raises(ValueError, match="Evaluator: flush_every must be a positive integer, got 0"):
        Evaluator(AccuracyMetrics(), flush_every=0)
    with pytest.raises(ValueError, match="acc: every must be a positive integer, got 1.5"):
        AccuracyMetrics(every=1.5)

    class TupleModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 4)

        def forward(self, x):
            return (self.lin(x), None)

    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    model = TupleModel()
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), criterion=lambda o, y: o[0].sum(),
                              plugins=[default_evaluator()], device="cpu")
    with pytest.raises(clkernel.PluginError, match="mb_output to be a tensor"):
        strategy.train(setup.train[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_synchronisation_inside_an_epoch():
    """On CUDA the default evaluator synchronises at epoch / experience boundaries only."""
    import warnings

    from clkernel import CLDataset, Experience, Stream

    torch.manual_seed(0)
    ds = CLDataset.from_tensors(torch.randn(4096, 32), torch.randint(0, 10, (4096,)))
    stream = Stream("train", [Experience(0, ds)])
    counts = []
    for plugins in ([], [default_evaluator()]):
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins,
                                  train_mb_size=64, device="cuda")
        strategy.train(stream)  # warm-up
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                strategy.train(stream)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[1] - counts[0] <= 2  # 64 minibatches: at most the epoch-end transfer (and the train() end)


def test_stream_accuracy_is_sample_weighted_not_experience_weighted(table):
    setup = table.build([[1.0, 0.05]], [0.0, 0.0], test_sizes=[10, 20], train_sizes=[8], train_right=[1.0])
    strategy = table.strategy(setup, default_evaluator())
    strategy.train(setup.train[0])
    out = strategy.eval(setup.test)
    assert out["acc_stream/eval/test"] == pytest.approx(11 / 30)
    assert out["acc_exp_mean/eval/test"] == pytest.approx(0.525)
    assert not math.isclose(out["acc_stream/eval/test"], out["acc_exp_mean/eval/test"])


def test_labels_beyond_the_model_outputs(table):
    """A model that does not output every class yet: accuracy and the confusion matrix still count every label;
    the loss names the problem."""
    setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
    narrow = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5],
                         num_classes=2)  # predictions only 0 or 1; exp 1 holds label 2
    setup.model.num_classes = 2
    setup.model.table.copy_(narrow.table)
    evaluator = Evaluator(AccuracyMetrics(epoch=False), ConfusionMatrixMetrics())
    strategy = table.strategy(setup, evaluator)
    out = strategy.eval(setup.test)
    assert out["confusion_matrix_stream/eval/test"].shape == (3, 3)
    assert out["confusion_matrix_stream/eval/test"][2].sum() == 10  # the ten samples of label 2, never predicted
    strategy = table.strategy(setup, Evaluator(LossMetrics(epoch=False)))
    with pytest.raises(clkernel.PluginError, match="loss metric: the criterion cannot compare"):
        strategy.eval(setup.test)


def test_thread_count_is_restored(table):
    """The evaluator runs its small reductions on one intra-op thread and restores the user's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        setup = table.build(R2, B2, test_sizes=[10, 20], train_sizes=[16, 24], train_right=[0.75, 0.5])
        strategy = table.strategy(setup, default_evaluator())
        strategy.train(setup.train[0])
        out = strategy.eval(setup.test)
        assert torch.get_num_threads() == 2
        assert out["acc_stream/eval/test"] == pytest.approx(10 / 30)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_resolve_computes_every_deferred_value_in_one_transfer(device):
    from clkernel_metrics import Deferred, resolve

    items = {"a": Deferred(torch.tensor(3, device=device), lambda t: t.item() / 4),
             "m": Deferred(torch.tensor([[1, 2], [3, 4]], device=device), lambda t: t.long()),
             "#x": Deferred(torch.tensor([5.0, 6.0], device=device),
                            lambda t: {"x0": t[0].item(), "x1": t[1].item()}, expand=True),
             "none": Deferred(torch.tensor(1.0, device=device), lambda t: None),
             "plain": 1.5}
    out = resolve(items)
    assert list(out) == ["a", "m", "x0", "x1", "plain"]  # in order; "#x" expanded, "none" dropped
    assert out["a"] == 0.75 and out["m"].tolist() == [[1, 2], [3, 4]] and out["plain"] == 1.5
    assert out["m"].device.type == "cpu" and out["m"].dtype == torch.long
    assert (out["x0"], out["x1"]) == (5.0, 6.0)
