"""Shared fixtures: the UCI digits as a 5-task task-incremental benchmark, a synthetic one, an accuracy plugin."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Callable

import pytest
import torch

from clkernel import Benchmark, CLDataset, Experience, Stream

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def _task_streams(x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int) -> Benchmark:
    """Task ``i`` = classes ``2i, 2i+1`` with task label ``i``; a seeded per-class train/test split."""
    g = torch.Generator().manual_seed(seed)
    t = y // 2
    train_idx, test_idx = [], []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    streams = {}
    for name, idx in (("train", torch.cat(train_idx)), ("test", torch.cat(test_idx))):
        data = CLDataset.from_tensors(x[idx], y[idx], t[idx])
        streams[name] = Stream(name, [Experience(i, data.subset((data.task_labels == i).nonzero().flatten()))
                                      for i in range(int(t.max()) + 1)])
    return Benchmark(streams, name="split-digits-task-il")


@pytest.fixture(scope="session")
def split_digits() -> Benchmark:
    """The UCI digits (1,797 8x8 images) split into 5 tasks of 2 classes, with task labels; 30 % test."""
    path = DATA / "digits" / "digits.csv.gz"
    if not path.is_file():
        pytest.skip(f"the UCI digits are not at {path} (the shared data folder is absent)")
    with gzip.open(path, "rt") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f) if row]
    data = torch.tensor(rows)
    x = (data[:, :64].float() / 16.0).reshape(-1, 1, 8, 8)
    return _task_streams(x, data[:, 64], 0.3, seed=0)


@pytest.fixture
def clusters() -> Callable[..., Benchmark]:
    """``make(n_tasks=3, features=6, per_class=20, seed=0)``: separable Gaussian clusters, 2 classes per task."""

    def make(n_tasks: int = 3, features: int = 6, per_class: int = 20, seed: int = 0) -> Benchmark:
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(2 * n_tasks, features, generator=g) * 2
        y = torch.arange(2 * n_tasks).repeat_interleave(2 * per_class)
        x = means[y] + 0.5 * torch.randn(len(y), features, generator=g)
        return _task_streams(x, y, 0.5, seed)

    return make
