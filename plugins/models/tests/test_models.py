"""Every registered model builds for the benchmarks it is meant for, trains, and reports bad input clearly."""

from __future__ import annotations

import inspect
from typing import Any

import importlib_metadata
import pytest
import torch

from clkernel import Benchmark, CLDataset, Experience, Naive, Stream
from clkernel.discovery import Registry
from clkernel_models import registration

MNIST, CIFAR, DIGITS = (1, 28, 28), (3, 32, 32), (1, 8, 8)
CASES = [
    ("simple-mlp", MNIST), ("simple-mlp", CIFAR), ("simple-mlp", DIGITS),
    ("simple-cnn", MNIST), ("simple-cnn", CIFAR),
    ("slim-resnet18", CIFAR), ("slim-resnet18", MNIST), ("slim-resnet18", DIGITS),
    ("mt-simple-mlp", MNIST), ("mt-simple-mlp", CIFAR), ("mt-simple-mlp", DIGITS),
    ("mt-simple-cnn", MNIST), ("mt-simple-cnn", CIFAR),
]


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    source = reg.add_module(registration, "models")
    assert source.status == "ok", source.error
    return reg


def build(registry: Registry, name: str, context: dict[str, Any]) -> torch.nn.Module:
    """Like ``clkernel run``: fill the factory's context parameters."""
    options = registry.get("model", name).options()
    return registry.load("model", name, **{k: v for k, v in context.items() if k in options})


def tiny_benchmark(shape: tuple[int, ...], n: int = 4) -> Benchmark:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2 * n, *shape, generator=g), torch.arange(4).repeat(n // 2)
    t = (y >= 2).long()
    data = CLDataset.from_tensors(x, y, t)
    exps = [Experience(i, data.subset((t == i).nonzero().flatten())) for i in (0, 1)]
    return Benchmark({"train": Stream("train", exps), "test": Stream("test", exps)})


@pytest.mark.parametrize("name,shape", CASES)
def test_each_model_builds_for_its_benchmarks_and_runs_forward_and_backward(registry, context, name, shape):
    torch.manual_seed(0)
    model = build(registry, name, context(shape, 10))
    x, t = torch.randn(4, *shape), torch.tensor([0, 1, 1, 0])
    if getattr(model, "takes_task_labels", False):
        for task in (0, 1):
            model.adaptation(Experience(task, CLDataset.from_tensors(x[:2], torch.tensor([0, 9]), task)))
        out = model(x, t)
    else:
        out = model(x)
    assert out.shape == (4, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 9, 9, 0])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("name,shape", CASES)
def test_each_model_trains_and_evaluates_inside_a_strategy(registry, context, name, shape):
    torch.manual_seed(0)
    bench = tiny_benchmark(shape)
    model = build(registry, name, context(shape, bench.num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    strategy = Naive(model, optimizer, train_mb_size=4, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    strategy.train(bench.train_stream)
    strategy.eval(bench.test_stream)
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed, "training changed no parameter"


def test_simple_mlp_is_the_default_model_and_every_model_documents_itself(registry):
    assert registry.available("model") == sorted(registration.MODELS)
    assert registry.defaults("model") == ["simple-mlp"]
    for name in registration.MODELS:
        comp = registry.get("model", name)
        assert comp.summary, f"{name} has no summary"
        for param in comp.options().values():
            assert param.default is not param.empty and param.annotation is not param.empty, (name, param.name)


def test_the_entry_point_is_declared_for_installed_distributions():
    try:
        dist = importlib_metadata.distribution("clkernel-models")
    except importlib_metadata.PackageNotFoundError:
        pytest.skip("clkernel-models is not installed (pip install -e plugins/models)")
    eps = [ep for ep in dist.entry_points if ep.group == "clkernel.plugins"]
    assert [(ep.name, ep.value) for ep in eps] == [("models", "clkernel_models.registration")]


def test_simple_mlp_has_avalanches_defaults_and_flattens_its_input(registry):
    params = inspect.signature(registration.simple_mlp).parameters
    assert {k: params[k].default for k in ("hidden_size", "hidden_layers", "drop_rate")} == {
        "hidden_size": 512, "hidden_layers": 1, "drop_rate": 0.5}
    model = registry.load("model", "simple-mlp", input_size=64, num_classes=3, hidden_layers=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 4
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"expects 64 values per sample \(input_size\), got input of shape \(2, 784\)"):
        model(torch.randn(2, 1, 28, 28))


def test_bad_shapes_and_options_name_the_culprit(registry, context):
    with pytest.raises(ValueError, match=r"needs images of at least 10x10 pixels.*\(1, 8, 8\)"):
        build(registry, "simple-cnn", context(DIGITS, 10))
    with pytest.raises(ValueError, match=r"in_channels=3 but the benchmark's input_shape is \(1, 28, 28\)"):
        registry.load("model", "slim-resnet18", in_channels=3, input_shape=MNIST)
    with pytest.raises(ValueError, match="takes images"):
        registry.load("model", "mt-simple-cnn", input_shape=(64,), in_channels=64)
    with pytest.raises(ValueError, match=r"SimpleMLP: drop_rate must be a number in \[0, 1\), got 1.5"):
        registry.load("model", "simple-mlp", drop_rate=1.5)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        registry.load("model", "mt-simple-mlp", hidden_size=0)
    cnn = build(registry, "simple-cnn", context(MNIST, 10))
    with pytest.raises(ValueError, match=r"SimpleCNN expects images of shape \(batch, 1, H, W\).*\(2, 3, 32, 32\)"):
        cnn(torch.randn(2, *CIFAR))
