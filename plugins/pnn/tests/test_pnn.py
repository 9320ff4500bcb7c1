"""Progressive Neural Networks: frozen columns keep old tasks bit-identical; one column per task; bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import structlog
import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Naive, Stream
from clkernel.discovery import Registry
from clkernel_models import UnknownTaskError
from clkernel_pnn import PNN, registration


def adapter_params(adapter: str, k: int, d: int, h: int) -> int:
    if k == 0:
        return 0
    return k * d * h if adapter == "linear" else k + (k * d * h + h) + h * h


def column_params(adapter: str, k: int, in_features: int, h: int, num_layers: int) -> int:
    first = in_features * h + h + adapter_params(adapter, k, in_features, h)
    return first + (num_layers - 1) * (h * h + h + adapter_params(adapter, k, h, h))


class FreezeChecker:
    """On the first iteration of every epoch: earlier columns in eval mode without gradients, the newest training."""

    name = "freeze-checker"

    def __init__(self, model: PNN) -> None:
        self.model, self.checks = model, 0

    @clkernel.hookimpl
    def after_backward(self, state: Any) -> None:
        if state.epoch_iteration:
            return
        task = self.model.known_tasks[-1]
        for layer in self.model.layers:
            *old, newest = layer.columns
            assert newest.training and all(p.grad is not None for p in newest.parameters())
            for col in old:
                assert not col.training, "a frozen column is in train mode"
                assert all(not p.requires_grad and p.grad is None for p in col.parameters())
        for key, head in self.model.classifier.heads.items():
            assert all((p.grad is not None) == (key == str(task)) for p in head.parameters())
        self.checks += 1


@pytest.mark.parametrize("adapter,drop_rate", [("mlp", 0.2), ("linear", 0.0)])
def test_old_tasks_stay_bit_identical_and_each_task_adds_one_column(split_digits, accuracy, adapter, drop_rate):
    bench = split_digits
    torch.manual_seed(0)
    h, layers = 32, 2
    model = PNN(layers, 64, h, adapter, num_classes=10, drop_rate=drop_rate)
    # momentum and weight decay would move any frozen parameter that still had a gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    checker = FreezeChecker(model)
    strategy = Naive(model, optimizer, plugins=[checker, accuracy], train_mb_size=32, train_epochs=4,
                     eval_mb_size=64, device="cpu", generator=torch.Generator().manual_seed(0))
    head = 10 * h + 10
    count = sum(p.numel() for p in model.parameters())
    assert count == column_params(adapter, 0, 64, h, layers) + head
    right_after, outputs_after = {}, {}
    for k, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        strategy.eval(bench.test_stream[k])
        right_after[k], outputs_after[k] = accuracy.results[k], accuracy.outputs[k]
        assert model.num_columns == k + 1 and all(len(layer.columns) == k + 1 for layer in model.layers)
        new_count = sum(p.numel() for p in model.parameters())
        if k:
            assert new_count - count == column_params(adapter, k, 64, h, layers) + head
        count = new_count
        if k == 0:
            task0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert checker.checks == 5 * 4
    strategy.eval(bench.test_stream)
    assert accuracy.results[0] == right_after[0]  # the criterion, exactly
    for k in range(5):
        assert accuracy.results[k] == right_after[k]
        assert torch.equal(accuracy.outputs[k], outputs_after[k]), f"task {k}'s outputs changed"
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in task0.items()), "a task-0 parameter moved"
    # each task learnt (a sanity bound: the values follow the loop's shuffle order; the lowest, task 4 with the
    # linear adapter, is 0.887 with the DistributedSampler order the loop draws since issue 13)
    assert right_after[0] > 0.95 and min(right_after.values()) > 0.85, right_after


def test_training_later_tasks_uses_the_lateral_connections(clusters):
    bench = clusters(n_tasks=2)
    torch.manual_seed(0)
    model = PNN(2, 6, 8, "mlp", num_classes=4)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8, device="cpu")
    strategy.train(bench.train_stream)
    adapters = [layer.columns[1].adapter for layer in model.layers]
    assert all(a.alphas.grad is not None for a in adapters)
    x = bench.test_stream[1].dataset.get_batch(torch.arange(5))[0]
    model.eval()
    before = model(x, 1)
    with torch.no_grad():
        model.layers[0].columns[0].itoh.weight.mul_(2)  # column 0 feeds column 1 through the laterals
    assert not torch.equal(model(x, 1), before)


def test_bad_input_names_the_culprit(clusters):
    bench = clusters(n_tasks=3)
    model = PNN(1, 6, 8, num_classes=6)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8, device="cpu")
    strategy.train(bench.train_stream[:2])
    strategy.train(bench.train_stream[1])  # the newest task may go on training
    with pytest.raises(ValueError, match="cannot train task 0 again: its column was frozen when task 1 arrived"):
        strategy.train(bench.train_stream[0])
    mixed = bench.train_stream[1].dataset.concat(bench.train_stream[2].dataset)
    with pytest.raises(ValueError, match=r"one task per experience; training experience 7 has task labels \[1, 2\]"):
        strategy.train(Experience(7, mixed))
    model.eval()
    with pytest.raises(UnknownTaskError, match=r"task label 2, which it was never trained on .*\[0, 1\]"):
        model(torch.randn(3, 6), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"PNN expects 6 values per sample \(in_features\).*\(3, 7\)"):
        model(torch.randn(3, 7), 0)
    with pytest.raises(ValueError, match="adapter must be one of mlp, linear; got 'conv'"):
        PNN(adapter="conv")
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        PNN(num_layers=0)
    with pytest.raises(ValueError, match=r"in_features=100 does not match the benchmark's input size \(64"):
        registration.pnn(in_features=100, input_size=64)


def test_untrained_tasks_at_evaluation_get_the_fallback_once_warned(clusters, accuracy):
    bench = clusters(n_tasks=3)
    torch.manual_seed(0)
    model = PNN(1, 6, 8, num_classes=6)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[accuracy], train_mb_size=8,
                     train_epochs=3, device="cpu")
    strategy.train(bench.train_stream[0])
    with structlog.testing.capture_logs() as logs:
        strategy.eval(bench.test_stream)
    warnings = [e for e in logs if e["event"] == "untrained_task"]
    assert [(w["model"], w["tasks"]) for w in warnings] == [("PNN", [1]), ("PNN", [2])]
    assert (accuracy.outputs[1] == 0).all() and (accuracy.outputs[2] == 0).all()
    assert accuracy.results[0] > 0.9
    strict = PNN(1, 6, 8, unseen_task="error")
    strategy = Naive(strict, torch.optim.SGD(strict.parameters(), lr=0.1), train_mb_size=8, device="cpu")
    strategy.train(bench.train_stream[0])
    with pytest.raises(UnknownTaskError, match="never trained"):
        strategy.eval(bench.test_stream)


def test_adaptation_is_idempotent_and_a_trained_pnn_loads_into_a_fresh_one(clusters):
    bench = clusters(n_tasks=4)
    torch.manual_seed(0)
    model = PNN(2, 6, 8, "linear", num_classes=8)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), train_mb_size=8,
                     device="cpu")
    strategy.train(bench.train_stream[:3])
    model.train()
    for _ in range(2):
        params = [id(p) for p in model.parameters()]
        state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        model.adaptation(bench.train_stream[2])
        assert [id(p) for p in model.parameters()] == params
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor))
    fresh = PNN(2, 6, 8, "linear", num_classes=8)
    fresh.load_state_dict(torch.load(_saved(model), weights_only=True))
    model.eval()
    fresh.eval()
    x, t = torch.randn(9, 6), torch.tensor([2, 0, 1] * 3)
    assert torch.equal(fresh(x, t), model(x, t))
    assert fresh.known_tasks == [0, 1, 2] and fresh.num_columns == 3
    assert [p.requires_grad for p in fresh.parameters()] == [p.requires_grad for p in model.parameters()]
    fresh.train()
    assert [m.training for m in fresh.modules()] == [m.training for m in model.train().modules()]
    strategy = Naive(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), train_mb_size=8, device="cpu")
    strategy.train(bench.train_stream[3])  # training goes on after the restore
    assert fresh.num_columns == 4 and torch.equal(fresh(x, t), model(x, t))


def _saved(model: torch.nn.Module) -> Any:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_the_registered_model_builds_from_the_run_context_and_trains_in_a_strategy(shape):
    reg = Registry()
    assert reg.add_module(registration, "pnn").status == "ok"
    assert reg.available("model") == ["pnn"]
    context = {"input_size": math.prod(shape), "num_classes": 4, "input_shape": shape, "in_channels": shape[0]}
    options = reg.get("model", "pnn").options()
    torch.manual_seed(0)
    model = reg.load("model", "pnn", hidden_features_per_column=16, num_layers=2,
                     **{k: v for k, v in context.items() if k in options})
    assert model.in_features == math.prod(shape)
    x, y = torch.randn(8, *shape), torch.tensor([0, 1, 2, 3] * 2)
    t = (y >= 2).long()
    data = CLDataset.from_tensors(x, y, t)
    exps = [Experience(i, data.subset((t == i).nonzero().flatten())) for i in (0, 1)]
    model.adaptation(exps[0])
    out = model(x[t == 0], 0)
    assert out.shape == (4, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=4, device="cpu")
    strategy.train(exps)
    strategy.eval(exps)
    assert model.num_columns == 2 and model(x, t).shape == (8, 4)


def test_new_columns_follow_the_dtype_the_model_was_moved_to(clusters):
    bench = clusters(n_tasks=2)
    model = PNN(2, 6, 8, num_classes=4).double()
    for exp in bench.train_stream:
        model.adaptation(exp)
    assert model.num_columns == 2 and all(p.dtype == torch.float64 for p in model.parameters())
    x, t = torch.randn(4, 6, dtype=torch.float64), torch.tensor([1, 0, 1, 0])
    assert model(x, t).dtype == torch.float64


def test_the_registered_model_refuses_a_benchmark_without_task_labels(clusters):
    """`clkernel run` passes the benchmark: a class-incremental one (task label 0 everywhere) fails at build."""
    reg = Registry()
    reg.add_module(registration, "pnn")
    assert "benchmark" in reg.get("model", "pnn").options()
    task_il = clusters()
    class_il = Benchmark({name: Stream(name, [Experience(e.index, e.dataset.with_attribute(
        "task_labels", torch.zeros(len(e.dataset), dtype=torch.long))) for e in stream])
        for name, stream in task_il.streams.items()}, name="clusters-class-il")
    with pytest.raises(ValueError, match=r"^pnn: needs a benchmark with task labels \(e\.g\. "
                                         r"split-digits:return_task_id=True\); all 3 training experiences of "
                                         r"clusters-class-il have task label 0$"):
        reg.load("model", "pnn", benchmark=class_il, input_size=6)
    assert reg.load("model", "pnn", benchmark=task_il, input_size=6).in_features == 6
