"""Metrics under torch.distributed: counts and sums over the ranks, every rank ending with one process's values.

The reduction is checked on a group faked with threads (the exact collectives, cheaply), and one real launch
(torchrun, 2 processes, gloo) runs split-digits with metrics and loggers: both ranks end with the same values,
those of one process evaluating the same models on the same data, and rank 1 writes and prints nothing.
"""

from __future__ import annotations

import json
import textwrap
import threading

import pytest
import torch

import clkernel
from clkernel import distributed
from clkernel.testing import torchrun
from clkernel_metrics import (
    AccuracyMatrixMetrics, AccuracyMetrics, ClassAccuracyMetrics, ConfusionMatrixMetrics, Evaluator, LossMetrics,
    max_over_ranks, sum_over_ranks,
)


def test_one_process_returns_the_values_untouched():
    values = [torch.tensor(3), 4, 2.5, torch.ones(2, 2)]
    out = sum_over_ranks(values)
    assert out is values and out[0] is values[0] and out[3] is values[3]
    assert sum_over_ranks([None, torch.ones(3)], same_shapes=False)[0] is None
    assert max_over_ranks(1.5) == 1.5


class ThreadGroup:
    """A process group of ``n`` threads: ``all_reduce_sum`` waits for every thread and sums what they gave
    (shapes must agree, as in torch.distributed)."""

    def __init__(self, n: int) -> None:
        self.n, self.local = n, threading.local()
        self.barrier = threading.Barrier(n, timeout=20)
        self.slots: list[torch.Tensor | None] = [None] * n
        self.calls = [0] * n

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        r = self.local.rank
        self.calls[r] += 1
        self.slots[r] = t.clone()
        self.barrier.wait()
        total = torch.stack(self.slots).sum(0)  # type: ignore[arg-type]
        self.barrier.wait()
        return t.copy_(total)

    def run(self, monkeypatch: pytest.MonkeyPatch, fn) -> list:  # noqa: ANN001
        monkeypatch.setattr(distributed, "is_distributed", lambda: True)
        monkeypatch.setattr(distributed, "world_size", lambda: self.n)
        monkeypatch.setattr(distributed, "rank", lambda: self.local.rank)
        monkeypatch.setattr(distributed, "all_reduce_sum", self.all_reduce_sum)
        results: list = [None] * self.n
        errors: list[BaseException] = []

        def target(r: int) -> None:
            self.local.rank = r
            try:
                results[r] = fn(r)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def test_sums_numbers_and_tensors_keeping_their_types(monkeypatch):
    group = ThreadGroup(2)
    mine = {0: [torch.tensor(3), 5, 0.25, torch.tensor([1.5, 2.0]), torch.tensor(7.0, dtype=torch.float32)],
            1: [torch.tensor(4), 6, 0.5, torch.tensor([0.5, 1.0]), torch.tensor(1.0, dtype=torch.float32)]}
    out = group.run(monkeypatch, lambda r: sum_over_ranks(mine[r]))
    assert group.calls == [1, 1]  # one collective
    for got in out:
        assert got[0].dtype == torch.int64 and int(got[0]) == 7
        assert isinstance(got[1], int) and got[1] == 11
        assert isinstance(got[2], float) and got[2] == 0.75
        assert got[3].tolist() == [2.0, 3.0]
        assert got[4].dtype == torch.float32 and float(got[4]) == 8.0


def test_counts_of_different_shapes_or_missing_are_padded(monkeypatch):
    """Class counts ``[C, 2]`` where rank 0 saw classes 0-2 and rank 1 classes 0-3; a count only rank 1 has; one
    that no rank has."""
    group = ThreadGroup(2)
    mine = {0: [torch.tensor([[1, 2], [3, 4], [5, 6]]), None, None],
            1: [torch.tensor([[10, 20], [30, 40], [50, 60], [70, 80]]), torch.tensor([9, 9]), None]}
    out = group.run(monkeypatch, lambda r: sum_over_ranks(mine[r], same_shapes=False))
    assert group.calls == [2, 2]  # the shapes, then the values
    for got in out:
        assert got[0].tolist() == [[11, 22], [33, 44], [55, 66], [70, 80]]
        assert got[1].tolist() == [9, 9] and got[1].dtype == torch.int64
        assert got[2] is None


def test_none_needs_same_shapes_false(monkeypatch):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="same_shapes=False"):
        sum_over_ranks([None])


def test_max_over_ranks(monkeypatch):
    group = ThreadGroup(3)
    assert group.run(monkeypatch, lambda r: max_over_ranks([2.0, 7.5, 1.0][r])) == [7.5, 7.5, 7.5]


def test_evaluator_on_shards_gives_the_pooled_values(monkeypatch, table):
    """Two ranks train on their halves of an experience (the kernel's DistributedSampler split; DDP left out, the
    model has nothing to learn), then each evaluates every other sample of the test experiences (5 and 3
    samples, 3 and 2 minibatches): the epoch accuracy, and accuracy, loss, class accuracy, confusion matrix and
    accuracy matrix of the evaluation, are those of all the samples, on both ranks."""
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, **options: model)

    def rank(r: int) -> dict:
        setup = table.build(R=[[0.8, 0.2]], b=[0.5, 0.4], test_sizes=[10, 5], train_sizes=[8], train_right=[0.75])
        evaluator = Evaluator(AccuracyMetrics(), LossMetrics(), ClassAccuracyMetrics(),
                              ConfusionMatrixMetrics(num_classes=4, experience=True),
                              AccuracyMatrixMetrics(matrix=True))
        strategy = table.strategy(setup, evaluator, train_mb_size=2, eval_mb_size=2)
        return {**strategy.train(setup.train[0]), **strategy.eval(setup.test)}

    out = ThreadGroup(2).run(monkeypatch, rank)
    assert out[0].keys() == out[1].keys()
    right, wrong = table.ce_right(4), table.ce_wrong(4)
    expected = {"acc_epoch/train/train": 0.75, "acc_exp/eval/test/exp000": 0.8, "acc_exp/eval/test/exp001": 0.2, "acc_stream/eval/test": 9 / 15,
                "acc_exp_mean/eval/test": 0.5, "loss_exp/eval/test/exp000": 0.8 * right + 0.2 * wrong,
                "loss_stream/eval/test": (9 * right + 6 * wrong) / 15}
    for r in (0, 1):
        for name, value in expected.items():
            assert out[r][name] == pytest.approx(value, rel=1e-6), (r, name)  # float32 losses
        assert out[r]["accuracy_matrix_stream/eval/test"][0].tolist() == pytest.approx([0.8, 0.2])
        # experience 0: labels 0,1 alternating, the first 8 right, the last 2 (labels 0 and 1) predicted +1
        assert out[r]["confusion_matrix_exp/eval/test/exp000"].tolist() == [
            [4, 1, 0, 0], [0, 4, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
        assert out[r]["confusion_matrix_stream/eval/test"].sum() == 15
        assert out[r]["class_acc_exp/eval/test/exp000/class000"] == pytest.approx(0.8)
    for name in out[0]:
        if isinstance(out[0][name], float):
            assert out[0][name] == out[1][name], name


# ---------------------------------------------------------------------------------------------- real launch

SCRIPT = textwrap.dedent("""
    import copy, io, json, sys
    from pathlib import Path
    import torch
    import clkernel
    from clkernel_loggers import CSVLogger, InteractiveLogger, JSONLLogger, ReportLogger, TextLogger
    from clkernel_metrics import (AccuracyMatrixMetrics, AccuracyMetrics, ClassAccuracyMetrics,
                                  ConfusionMatrixMetrics, Evaluator, LossMetrics, timing_metrics)

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bench = clkernel.load("benchmark", "split-digits", n_experiences=5, seed=0)
    model = clkernel.load("model", "simple-mlp", input_size=64, num_classes=10, hidden_size=32, drop_rate=0.0)
    evaluator = Evaluator(AccuracyMetrics(running_epoch=True, every=4), LossMetrics(),
                          ClassAccuracyMetrics(epoch=True), ConfusionMatrixMetrics(num_classes=10),
                          AccuracyMatrixMetrics(matrix=True, forgetting=True), timing_metrics())

    class Snapshots:
        name = "snapshots"
        models = []
        @clkernel.hookimpl
        def after_training_exp(self, state):
            self.models.append(copy.deepcopy(state.model.state_dict()))

    console = io.StringIO()
    run_dir = out / f"run{rank}"
    loggers = [CSVLogger(run_dir), JSONLLogger(run_dir), TextLogger(run_dir), ReportLogger(run_dir, plots=False),
               InteractiveLogger(file=console, bars=False)]
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1),
                              plugins=[evaluator, Snapshots(), *loggers], train_mb_size=16, eval_mb_size=16,
                              device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    plain = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in results.items()}
    state = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in strategy.state.metrics.items()}
    (out / f"rank{rank}.json").write_text(json.dumps({"results": plain, "state": state,
                                                      "console": console.getvalue()}))
    if rank == 0:
        torch.save(Snapshots.models, out / "models.pt")
    torch.distributed.destroy_process_group()
""")



def test_two_ranks_end_with_the_values_of_one_process(tmp_path):
    pytest.importorskip("clkernel_loggers", reason="clkernel-loggers (plugins/loggers) is not installed")
    pytest.importorskip("clkernel_benchmarks", reason="clkernel-benchmarks (plugins/benchmarks) is not installed")
    pytest.importorskip("clkernel_models", reason="clkernel-models (plugins/models) is not installed")
    script = tmp_path / "metrics_ddp.py"
    script.write_text(SCRIPT)
    done = torchrun(str(script), str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # rank 1 wrote and printed nothing; rank 0 did
    assert not (tmp_path / "run1").exists()
    assert ranks[1]["console"] == "" and "acc" in ranks[0]["console"]
    assert (tmp_path / "run0" / "results.json").exists()

    # the same values on both ranks, in the result and in state.metrics (running values are each rank's own)
    for key in ("results", "state"):
        a, b = ranks[0][key], ranks[1][key]
        assert a.keys() == b.keys()
        for name in a:
            if "running_epoch" in name:
                continue
            assert json.dumps(a[name]) == json.dumps(b[name]) or a[name] == pytest.approx(b[name], abs=1e-12), name
    res = ranks[0]["results"]
    assert 0 < res["acc_epoch/train/train"] <= 1

    # one process, evaluating the model of each experience on the whole test stream
    bench = clkernel.load("benchmark", "split-digits", n_experiences=5, seed=0)
    models = torch.load(tmp_path / "models.pt", weights_only=True)
    assert len(models) == 5
    model = clkernel.load("model", "simple-mlp", input_size=64, num_classes=10, hidden_size=32, drop_rate=0.0)
    rows = []
    for state_dict in models:
        model.load_state_dict(state_dict)
        model.eval()
        with torch.no_grad():
            accs = []
            for exp in bench.test_stream:
                x, y, _ = exp.dataset.eval().get_batch(torch.arange(len(exp.dataset)))
                accs.append(float((model(x).argmax(1) == y).double().mean()))  # by hand
            rows.append(accs)
    assert torch.tensor(res["accuracy_matrix_stream/eval/test"]) == pytest.approx(torch.tensor(rows, dtype=torch.float64),
                                                                                   abs=1e-6)
    for j, acc in enumerate(rows[-1]):
        assert res[f"acc_exp/eval/test/exp{j:03d}"] == pytest.approx(acc, abs=1e-6)
    one = Evaluator(AccuracyMetrics(), LossMetrics(), ClassAccuracyMetrics(), ConfusionMatrixMetrics(num_classes=10))
    single = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[one], eval_mb_size=16,
                            device="cpu").eval(bench.test_stream)
    for name, value in single.items():
        if isinstance(value, float):
            assert res[name] == pytest.approx(value, abs=1e-6), name
        else:
            assert res[name] == value.tolist(), name
    assert res["forgetting_stream/eval/test"] == pytest.approx(
        sum(max(r[j] for r in rows[:-1]) - rows[-1][j] for j in range(4)) / 4, abs=1e-6)
