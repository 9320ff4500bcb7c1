"""Shared fixtures: small seeded class- and task-incremental benchmarks, an accuracy plugin, model contexts."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch

from clkernel import Benchmark, CLDataset, Experience, Stream


def _benchmark(n_exp: int, classes_per_exp: int, shape: tuple[int, ...], per_class: int, task_labels: bool,
               seed: int) -> Benchmark:
    """Separable Gaussian clusters: one random mean per class; experience ``i`` has classes ``i*c .. i*c+c-1``."""
    g = torch.Generator().manual_seed(seed)
    n_classes = n_exp * classes_per_exp
    means = torch.randn(n_classes, *shape, generator=g) * 2
    streams = {}
    for split, offset in (("train", 0), ("test", 1)):
        y = torch.arange(n_classes).repeat_interleave(per_class)
        x = means[y] + 0.5 * torch.randn(len(y), *shape, generator=g)
        t = y // classes_per_exp if task_labels else torch.zeros_like(y)
        data = CLDataset.from_tensors(x, y, t)
        streams[split] = Stream(split, [
            Experience(i, data.class_subset(range(i * classes_per_exp, (i + 1) * classes_per_exp)))
            for i in range(n_exp)])
    return Benchmark(streams, name="clusters")


@pytest.fixture
def make_benchmark() -> Callable[..., Benchmark]:
    """``make(n_exp=5, classes_per_exp=2, shape=(8,), per_class=20, task_labels=False, seed=0)``."""

    def make(n_exp: int = 5, classes_per_exp: int = 2, shape: tuple[int, ...] = (8,), per_class: int = 20,
             task_labels: bool = False, seed: int = 0) -> Benchmark:
        return _benchmark(n_exp, classes_per_exp, shape, per_class, task_labels, seed)

    return make


@pytest.fixture
def context() -> Callable[..., dict[str, Any]]:
    """What ``clkernel run`` fills factory parameters with, for an input shape and a number of classes."""

    def make(shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
        return {"num_classes": num_classes, "input_shape": tuple(shape), "input_size": math.prod(shape),
                "in_channels": shape[0]}

    return make
