"""Cost of the dynamic heads: a training step of an MLP whose classifier is an IncrementalClassifier (grown over 5
experiences) or a MultiHeadClassifier (5 tasks), against the same MLP with a plain nn.Linear classifier, in the same
hand-written PyTorch loop and process. Prints time per step and the ratio to the plain model.

    python plugins/models/bench/bench_dynamic_heads.py [--device cuda] [--steps 200] [--batch 128]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from clkernel import CLDataset, Experience
from clkernel_models import IncrementalClassifier, MultiHeadClassifier


def backbone() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())


class WithHeads(nn.Module):
    takes_task_labels = True

    def __init__(self, heads: MultiHeadClassifier) -> None:
        super().__init__()
        self.features, self.heads = backbone(), heads

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(x), t)


def exp(index: int, classes: list[int], task: int = 0) -> Experience:
    y = torch.tensor(classes)
    return Experience(index, CLDataset.from_tensors(torch.zeros(len(y), 1), y, task))


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "plain":
        return nn.Sequential(backbone(), nn.Linear(256, 10))
    if kind.startswith("incremental"):
        clf = IncrementalClassifier(256, 2)
        for i in range(5 if kind == "incremental" else 2):
            clf.adaptation(exp(i, [2 * i, 2 * i + 1]))
        if kind != "incremental":
            clf.grow(range(10), activate=False)  # 10 units, 4 trained: the masked path
        return nn.Sequential(backbone(), clf)
    heads = MultiHeadClassifier(256, 10)
    for i in range(5):
        heads.adaptation(exp(i, [2 * i, 2 * i + 1], task=i))
    return WithHeads(heads)


def time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    takes_t = getattr(model, "takes_task_labels", False)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x, t) if takes_t else model(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()

    for _ in range(10):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 784, generator=g).to(dev)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(dev)
    t_one = torch.zeros(args.batch, dtype=torch.long, device=dev)
    t_mix = torch.randint(0, 5, (args.batch,), generator=g).to(dev)
    y_mix = (2 * t_mix + torch.randint(0, 2, (args.batch,), generator=g).to(dev))
    cases = [
        ("plain nn.Linear", "plain", y, t_one),
        ("IncrementalClassifier, 5 blocks, all trained", "incremental", y, t_one),
        ("IncrementalClassifier, 3 blocks, masked units", "incremental-masked", y % 4, t_one),
        ("MultiHeadClassifier, 5 tasks, one task per batch", "multihead", y % 2, t_one),
        ("MultiHeadClassifier, 5 tasks mixed in each batch", "multihead", y_mix, t_mix),
    ]
    print(f"device {dev}, batch {args.batch}, {args.steps} steps, best of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    models = [build(kind).to(dev) for _, kind, _, _ in cases]
    best = [float("inf")] * len(cases)
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every case alike
        for i, (model, (_, _, targets, tasks)) in enumerate(zip(models, cases)):
            best[i] = min(best[i], time_steps(model, x, targets, tasks, args.steps))
    for (label, *_), b in zip(cases, best):
        print(f"{label:52s} {b * 1e3:8.3f} ms/step   x{b / best[0]:5.2f}")


if __name__ == "__main__":
    main()
