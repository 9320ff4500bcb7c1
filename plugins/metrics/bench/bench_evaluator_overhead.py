"""How much the default evaluator (accuracy and loss at running-epoch, epoch, experience and stream level, and the
accuracy matrix) adds to a Naive run.

The kernel benchmark: 60,000 in-memory random 1x28x28 samples, 10 classes, 5 class-incremental experiences, an
MLP 784-512-10, SGD, minibatches of 128, 1 epoch, evaluation on a 10,000-sample test stream after each
experience, ``torch.set_num_threads(2)``. The same work runs with and without the evaluator in one process,
interleaved experience by experience (ABBA order: a change of machine load hits both variants alike), and the
script prints the median ratio of the whole runs' times, and of the experience pairs. It also adds up the time
spent inside the evaluator's events (a direct measure of its own cost, much less sensitive to a busy machine than
the difference of two runs). A plain hand-written PyTorch loop doing the same work is timed too, for reference.
Target: ratio <= 1.03.

    python plugins/metrics/bench/bench_evaluator_overhead.py [--reps 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import clkernel
from clkernel import CLDataset, Experience, Stream
from clkernel.log import configure_logging
from clkernel_metrics import Evaluator, default_evaluator

N_TRAIN, N_TEST, N_CLASSES, N_EXPS, MB = 60_000, 10_000, 10, 5, 128


def make_streams() -> tuple[Stream, Stream]:
    g = torch.Generator().manual_seed(0)
    streams = []
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = torch.randn(n, 1, 28, 28, generator=g)
        y = torch.arange(n) % N_CLASSES
        data = CLDataset.from_tensors(x, y)
        per = N_CLASSES // N_EXPS
        streams.append(Stream(name, [Experience(i, data.class_subset(range(i * per, (i + 1) * per)))
                                     for i in range(N_EXPS)]))
    return streams[0], streams[1]


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, N_CLASSES))


class Timed:
    """Forwards every event of the default evaluator and adds up the time spent in it: the evaluator's own
    cost, measured directly (far less sensitive to the machine's load than the difference of two runs)."""

    name = "timed-default-evaluator"

    def __init__(self) -> None:
        self.inner = default_evaluator()
        self.seconds = 0.0


def _forward(event: str):  # noqa: ANN202
    @clkernel.hookimpl
    def call(self: Timed, state):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        result = getattr(self.inner, event)(state)
        self.seconds += time.perf_counter() - start
        return result

    call.__name__ = event
    return call


for _event in [n for n in dir(Evaluator) if hasattr(getattr(Evaluator, n), "clkernel_impl")]:
    setattr(Timed, _event, _forward(_event))


def make_strategy(with_evaluator: bool) -> tuple[clkernel.Naive, Timed | None]:
    model = make_model()
    timed = Timed() if with_evaluator else None
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), plugins=[timed] if timed else [],
                              train_mb_size=MB, train_epochs=1, eval_mb_size=MB, device="cpu",
                              generator=torch.Generator().manual_seed(0))
    return strategy, timed


def run_pair(train: Stream, test: Stream, evaluator_first: bool
             ) -> tuple[float, float, float, list[float], dict]:
    """One whole run of each variant, interleaved experience by experience (so that a change of machine load
    hits both alike): returns (seconds without, seconds with, seconds inside the evaluator, the ratio of each
    experience's pair, last eval result)."""
    (plain, _), (with_ev, timed) = make_strategy(False), make_strategy(True)
    strategies = {False: plain, True: with_ev}
    seconds = {False: 0.0, True: 0.0}
    pair_ratios = []
    result: dict = {}
    for i, exp in enumerate(train):
        order = (True, False) if (i % 2 == 0) == evaluator_first else (False, True)
        pair = {}
        for flag in order:
            start = time.perf_counter()
            strategies[flag].train(exp)
            out = strategies[flag].eval(test)
            pair[flag] = time.perf_counter() - start
            seconds[flag] += pair[flag]
            if flag:
                result = out
        pair_ratios.append(pair[True] / pair[False])
    return seconds[False], seconds[True], timed.seconds, pair_ratios, result  # type: ignore[union-attr]


def run_plain(train: Stream, test: Stream) -> float:
    """The same work as a hand-written loop: no events, no metrics."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for exp in train:
        data = exp.dataset.train()
        model.train()
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(order), MB):
            x, y, _ = data.get_batch(order[i:i + MB])
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for test_exp in test:
                d = test_exp.dataset.eval()
                for i in range(0, len(d), MB):
                    model(d.get_batch(torch.arange(i, min(i + MB, len(d))))[0])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the benchmark: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_logging(level="warning")
    train, test = make_streams()
    run_pair(train, test, True)  # warm-up (imports, allocator)
    with_t, without_t, plain_t, ratios, own, pairs = [], [], [], [], [], []
    result: dict = {}
    for rep in range(args.reps):
        without, with_, inside, pair_ratios, result = run_pair(train, test, evaluator_first=rep % 2 == 1)
        pairs += pair_ratios
        plain_t.append(run_plain(train, test))
        with_t.append(with_)
        without_t.append(without)
        ratios.append(with_ / without)
        own.append(inside / without)
        print(f"rep {rep:2d}: naive {without:.3f} s, naive + default evaluator {with_:.3f} s, "
              f"ratio {ratios[-1]:.4f}, inside the evaluator {inside * 1000:.1f} ms ({own[-1]:.2%} of naive), "
              f"plain loop {plain_t[-1]:.3f} s", flush=True)
    print(f"threads {args.threads}, {args.reps} repetitions")
    print(f"median naive {statistics.median(without_t):.3f} s, with default evaluator "
          f"{statistics.median(with_t):.3f} s, plain loop {statistics.median(plain_t):.3f} s")
    print(f"median ratio (with / without default evaluator): {statistics.median(ratios):.4f}  (target <= 1.03)")
    print(f"median ratio of the {len(pairs)} experience pairs (train + eval of one experience, each variant): "
          f"{statistics.median(pairs):.4f}")
    print(f"median time inside the evaluator's events: {statistics.median(own):.2%} of the naive run")
    print(f"median ratio naive / plain loop: {statistics.median(without_t) / statistics.median(plain_t):.4f}")
    print(f"last eval values: acc_stream {result['acc_stream/eval/test']:.4f}, "
          f"loss_stream {result['loss_stream/eval/test']:.4f}")


if __name__ == "__main__":
    main()
