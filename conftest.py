"""Root pytest configuration for the kernel's and every plugin's tests, and the test helpers they share.

One intra-op thread: the suite runs test after test on a 2-core machine, where a second OpenMP thread only
competes with the first (small tensor ops ran up to 100x slower with two threads under load).

The ``blobs`` fixture gives small class-incremental data and models built from tensors, with no plugin needed;
the ``accuracy`` fixture is a plugin recording the accuracy of every evaluated experience.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream

torch.set_num_threads(1)


def make_blobs(num_classes: int = 4, per_class: int = 60, dim: int = 8, seed: int = 0, spread: float = 0.6,
               task_of_class: Callable[[int], int] | None = None, noise_seed: int | None = None) -> CLDataset:
    """Gaussian blobs, one well-separated centre per class (fixed by ``seed``; ``noise_seed`` draws the
    samples around them), with a ``sample_id`` data attribute."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 3
    if noise_seed is not None:
        g.manual_seed(noise_seed)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    t = torch.tensor([task_of_class(int(c)) for c in y]) if task_of_class else 0
    return CLDataset.from_tensors(x, y, t, sample_id=torch.arange(len(y)))


def make_benchmark(num_exps: int = 2, classes_per_exp: int = 2, per_class: int = 60, dim: int = 8, seed: int = 0,
                   task_incremental: bool = False) -> Benchmark:
    """A class-incremental benchmark of blobs: experience e holds classes e*k .. e*k+k-1."""
    n = num_exps * classes_per_exp
    task = (lambda c: c // classes_per_exp) if task_incremental else None
    train = make_blobs(n, per_class, dim, seed, task_of_class=task)
    test = make_blobs(n, per_class // 2, dim, seed, task_of_class=task, noise_seed=seed + 1000)

    def stream(name: str, data: CLDataset) -> Stream:
        return Stream(name, [Experience(e, data.class_subset(range(e * classes_per_exp, (e + 1) * classes_per_exp)))
                             for e in range(num_exps)])

    return Benchmark({"train": stream("train", train), "test": stream("test", test)}, name="blobs")


def make_model(dim: int = 8, num_classes: int = 4, hidden: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))


class Probe:
    """Records what the loop does, for tests: minibatches, datasets, loss terms, parameters."""

    name = "probe"

    def __init__(self) -> None:
        self.mb_sizes: list[tuple[int, int]] = []  # (experience index, minibatch size)
        self.mbs: list[tuple[int, torch.Tensor]] = []  # (experience index, y)
        self.dataset_sizes: list[int] = []
        self.start_params: list[list[torch.Tensor]] = []
        self.end_params: list[list[torch.Tensor]] = []
        self.loss_terms: list[dict[str, float]] = []
        self.iterations: list[int] = []
        self._its = 0

    @clkernel.hookimpl
    def before_training_epoch(self, state: Any) -> None:
        if state.epoch == 0:
            self.dataset_sizes.append(len(state.dataset))
            self.start_params.append([p.detach().clone() for p in state.model.parameters()])
            self._its = 0

    @clkernel.hookimpl
    def before_forward(self, state: Any) -> None:
        self.mb_sizes.append((state.experience.index, len(state.mb_y)))
        self.mbs.append((state.experience.index, state.mb_y.clone()))
        self._its += 1

    @clkernel.hookimpl
    def before_backward(self, state: Any) -> None:
        self.loss_terms.append({k: float(v.detach()) for k, v in state.loss_terms.items()})

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        self.end_params.append([p.detach().clone() for p in state.model.parameters()])
        self.iterations.append(self._its)


def stream_accuracy(model: torch.nn.Module, stream: Stream) -> list[float]:
    """Accuracy on each experience of ``stream``."""
    out = []
    with torch.no_grad():
        for exp in stream:
            x, y, _ = exp.dataset.eval().get_batch(torch.arange(len(exp.dataset)))
            out.append(float((model(x).argmax(1) == y).float().mean()))
    return out


@pytest.fixture
def blobs() -> Any:
    """The helpers above, as one fixture: ``blobs.make_benchmark(...)``, ``blobs.Probe()``..."""
    import types

    return types.SimpleNamespace(make_blobs=make_blobs, make_benchmark=make_benchmark, make_model=make_model,
                                 Probe=Probe, accuracy=stream_accuracy)


class Accuracy:
    """Accuracy per evaluated experience (``results[exp.index]``), and the evaluated outputs (``outputs``)."""

    name = "test-accuracy"

    def __init__(self) -> None:
        self.results: dict[int, float] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._correct: torch.Tensor | None = None
        self._seen = 0
        self._out: list[torch.Tensor] = []

    @clkernel.hookimpl
    def before_eval_exp(self, state: Any) -> None:
        self._correct, self._seen, self._out = torch.zeros((), dtype=torch.long), 0, []

    @clkernel.hookimpl
    def after_eval_iteration(self, state: Any) -> None:
        self._correct += (state.mb_output.argmax(1) == state.mb_y).sum().cpu()
        self._seen += len(state.mb_y)
        self._out.append(state.mb_output.detach().cpu())

    @clkernel.hookimpl
    def after_eval_exp(self, state: Any) -> None:
        self.results[state.experience.index] = int(self._correct) / self._seen
        self.outputs[state.experience.index] = torch.cat(self._out)


@pytest.fixture
def accuracy() -> Accuracy:
    return Accuracy()
