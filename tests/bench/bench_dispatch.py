"""The kernel's per-iteration event dispatch cost with 5 active plugins (target: <= 5 us per iteration).

Each of the 5 plugins implements every per-iteration training event (9 of them, loss_terms included) as a
no-op. Measured two ways: the dispatch alone (the loop's prebuilt calls for one iteration's events, in a tight
loop), and end to end (an epoch of a tiny model with the 5 plugins minus the same epoch without plugins, per
iteration). For comparison, the same events fired through plain pluggy hook calls.

    .venv/bin/python tests/bench/bench_dispatch.py
"""

from __future__ import annotations

import statistics
import time

import torch

from clkernel import CLDataset, Naive, hookimpl
from clkernel.hookspecs import ITERATION_EVENTS

TRAIN_EVENTS = [e for e in ITERATION_EVENTS if "eval" not in e]


class NoOp:
    def __init__(self, name: str) -> None:
        self.name = name


def _noop():
    def event(self, state):
        return None

    return event


for _event in TRAIN_EVENTS:
    setattr(NoOp, _event, hookimpl(_noop(), specname=_event))


def make_strategy(n_plugins: int) -> Naive:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), plugins=[NoOp(f"p{i}") for i in range(n_plugins)],
                 train_mb_size=1, device="cpu")


def dispatch_only(n: int = 200_000) -> tuple[float, float]:
    strategy = make_strategy(5)
    dispatcher = strategy.dispatcher
    dispatcher.prepare()
    state = strategy.state
    calls = [dispatcher.calls[e] for e in TRAIN_EVENTS if e != "loss_terms"]
    terms = dispatcher.functions("loss_terms")
    start = time.perf_counter()
    for _ in range(n):
        for call in calls:
            call(state)
        for _name, fn in terms:
            fn(state)
    tuples = (time.perf_counter() - start) / n
    hooks = [getattr(strategy.plugin_manager.hook, e) for e in TRAIN_EVENTS]
    start = time.perf_counter()
    for _ in range(n // 10):
        for hook in hooks:
            hook(state=state)
    return tuples, (time.perf_counter() - start) / (n // 10)


def end_to_end(repeats: int = 7, samples: int = 20_000) -> tuple[float, float]:
    """Median per-iteration time without plugins, and median extra time with the 5 plugins."""
    data = CLDataset.from_tensors(torch.randn(samples, 2), torch.randint(0, 2, (samples,)))
    diffs, bases = [], []
    for _ in range(repeats):
        per_iter = []
        for n_plugins in (0, 5):
            strategy = make_strategy(n_plugins)
            start = time.perf_counter()
            strategy.train(data)
            per_iter.append((time.perf_counter() - start) / samples)
        diffs.append(per_iter[1] - per_iter[0])
        bases.append(per_iter[0])
    return statistics.median(bases), statistics.median(diffs)


def main() -> None:
    torch.set_num_threads(1)
    tuples, hooks = dispatch_only()
    print(f"5 plugins x {len(TRAIN_EVENTS)} per-iteration events")
    print(f"dispatch through the loop's prebuilt calls: {tuples * 1e6:.2f} us per iteration (target <= 5)")
    print(f"the same through plain pluggy hook calls:   {hooks * 1e6:.2f} us per iteration")
    base, extra = end_to_end()
    print(f"end to end, 5 plugins minus none:           {extra * 1e6:.2f} us per iteration "
          f"(a training step alone: {base * 1e6:.0f} us, so this difference is mostly noise)")


if __name__ == "__main__":
    main()
