"""The default metrics and the progress display against a plain hand-written PyTorch loop doing the same work.

Work (the kernel benchmark, ``tests/bench/bench_loop_overhead.py``): 60,000 in-memory random 1x28x28 samples, 10
classes, 5 class-incremental experiences of 2 classes, an MLP 784-512-10, SGD, minibatches of 128, 1 epoch per
experience, then evaluation on a 10,000-sample test stream (5 experiences) after each training experience.
Variants, run one after the other in each repetition (the order reversed every other repetition, so that a
change of machine load hits all of them alike):

* ``plain``: the hand-written loop (minibatches gathered with ``index_select``, the fastest gather on the CPU);
* ``plain+acc``: the same loop also counting right predictions and summing the loss of every evaluation
  minibatch on the device, read once per experience (what the metrics compute, done by hand);
* ``bare``: clkernel's Naive strategy, no plugin;
* ``metrics``: Naive with the default metrics (``clkernel.load("metric", "default")``) and the interactive
  logger drawing its bars into /dev/null.

Prints the median training and evaluation times of each and the ratios to ``plain`` (targets, issue 18: bare <=
1.02 in training, metrics <= 1.05 in training and evaluation), with the wall clock and with the process's CPU
time (``time.process_time``: on a machine shared with other jobs it moves less than the wall clock). Then, the
direct cost: a few more ``metrics`` runs in which every event of the evaluator and of the logger is timed (CPU
time of the thread inside the event, ``time.thread_time``; the two clock readings per call are included), as a
share of the ``bare`` run's time: a measure that a busy machine hardly moves.

    .venv/bin/python plugins/metrics/bench/bench_evaluator_overhead.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Naive, Stream
from clkernel.log import configure_logging

MB, EVAL_MB, EXPS = 128, 128, 5
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Times = dict[str, float]  # train / eval, wall / cpu


def make_data(seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(60_000, 1, 28, 28, generator=g), torch.randint(0, 10, (60_000,), generator=g),
            torch.rand(10_000, 1, 28, 28, generator=g), torch.randint(0, 10, (10_000,), generator=g))


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))


class Clock:
    """Adds up wall and CPU seconds per phase."""

    def __init__(self) -> None:
        self.times: Times = {"train wall": 0.0, "eval wall": 0.0, "train cpu": 0.0, "eval cpu": 0.0}

    def run(self, phase: str, fn: Callable[[], object]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.times[f"{phase} wall"] += time.perf_counter() - wall
        self.times[f"{phase} cpu"] += time.process_time() - cpu


def plain_run(data: Data, seed: int, metrics: bool = False) -> Times:
    """Train and evaluate by hand; with ``metrics``, count right predictions and sum the loss per experience."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = torch.nn.CrossEntropyLoss()
    clock = Clock()
    results: list[tuple[float, float]] = []

    def train(exp: int) -> None:
        model.train()
        idx = torch.isin(train_y, torch.tensor([2 * exp, 2 * exp + 1])).nonzero().flatten()
        xe, ye = train_x[idx], train_y[idx]
        perm = torch.randperm(len(ye))
        for s in range(0, len(ye), MB):
            b = perm[s:s + MB]
            optimizer.zero_grad(set_to_none=True)
            criterion(model(xe.index_select(0, b)), ye.index_select(0, b)).backward()
            optimizer.step()

    @torch.no_grad()
    def evaluate() -> None:
        model.eval()
        for exp in range(EXPS):
            idx = torch.isin(test_y, torch.tensor([2 * exp, 2 * exp + 1])).nonzero().flatten()
            xt, yt = test_x[idx], test_y[idx]
            right, loss = torch.zeros((), dtype=torch.long), torch.zeros(())
            for s in range(0, len(idx), EVAL_MB):
                out = model(xt[s:s + EVAL_MB])
                if metrics:
                    y = yt[s:s + EVAL_MB]
                    right += (out.argmax(1) == y).sum()
                    loss += torch.nn.functional.cross_entropy(out, y, reduction="sum")
            if metrics:
                results.append((right.item() / len(idx), loss.item() / len(idx)))

    for exp in range(EXPS):
        clock.run("train", lambda: train(exp))  # noqa: B023 (called at once)
        clock.run("eval", evaluate)
    return clock.times


class Timed:
    """Forwards every event of ``inner`` (a plugin object) and adds up the thread's CPU time spent inside them,
    per phase (events with ``eval`` in their name, the others)."""

    def __init__(self, inner: object, seconds: dict[str, float]) -> None:
        self.name = f"timed-{getattr(inner, 'name', type(inner).__name__)}"
        self.seconds = seconds
        for attr in dir(type(inner)):
            spec = getattr(getattr(type(inner), attr, None), "clkernel_impl", None)
            if spec is not None:
                setattr(self, attr, self._forward(getattr(inner, attr), attr, spec))

    def _forward(self, fn: Callable[..., object], event: str, spec: dict) -> Callable[..., object]:
        phase, seconds, clock = "eval" if "eval" in event else "train", self.seconds, time.thread_time

        def timed(*args: object) -> object:
            start = clock()
            try:
                return fn(*args)
            finally:
                seconds[phase] += clock() - start

        if event == "log_metrics":
            def call(state, values):  # noqa: ANN001, ANN202 (the spec's argument names, as pluggy reads them)
                return timed(state, values)
        else:
            def call(state):  # noqa: ANN001, ANN202
                return timed(state)
        call.__name__ = event
        options = {k: v for k, v in spec.items() if k in ("tryfirst", "trylast") and v}
        return clkernel.hookimpl(**options)(call)


def clkernel_run(data: Data, seed: int, metrics: bool = False, inside: dict[str, float] | None = None) -> Times:
    """The same work through Naive (building the benchmark is not timed, as above)."""
    train_x, train_y, test_x, test_y = data
    train, test = CLDataset.from_tensors(train_x, train_y), CLDataset.from_tensors(test_x, test_y)
    bench = Benchmark({name: Stream(name, [Experience(i, ds.class_subset([2 * i, 2 * i + 1])) for i in range(EXPS)])
                       for name, ds in (("train", train), ("test", test))})
    torch.manual_seed(seed)
    model = make_model()
    plugins: list[object] = []
    if metrics:
        from clkernel_loggers import InteractiveLogger

        plugins = [clkernel.load("metric", "default"), InteractiveLogger(bars=True, file=open(os.devnull, "w"))]
        if inside is not None:
            plugins = [Timed(p, inside) for p in plugins]
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(),
                     train_mb_size=MB, eval_mb_size=EVAL_MB, device="cpu", plugins=plugins)
    clock = Clock()
    for exp in bench.train_stream:
        clock.run("train", lambda: strategy.train(exp))  # noqa: B023 (called at once)
        clock.run("eval", lambda: strategy.eval(bench.test_stream))
    strategy.close()
    return clock.times


RUNS: dict[str, Callable[[Data, int], Times]] = {
    "plain": plain_run,
    "plain+acc": lambda data, seed: plain_run(data, seed, metrics=True),
    "bare": clkernel_run,
    "metrics": lambda data, seed: clkernel_run(data, seed, metrics=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the kernel benchmark: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_logging(level="warning")
    data = make_data()
    for fn in RUNS.values():  # warm-up
        fn(data, 0)
    times: dict[str, list[Times]] = {name: [] for name in RUNS}
    order = list(RUNS.items())
    for rep in range(args.repeats):  # interleaved, so drifts in machine load hit all
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            times[name].append(fn(data, rep))
    keys = ("train wall", "eval wall", "train cpu", "eval cpu")
    med = {name: {k: statistics.median(t[k] for t in ts) for k in keys} for name, ts in times.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'median s':10s} " + " ".join(f"{k:>11s}" for k in keys))
    for name, m in med.items():
        print(f"{name:10s} " + " ".join(f"{m[k]:11.3f}" for k in keys))
    for name, target in (("plain+acc", None), ("bare", "train <= 1.02"), ("metrics", "train and eval <= 1.05")):
        ratios = " ".join(f"{k} {med[name][k] / med['plain'][k]:.3f}," for k in keys).rstrip(",")
        print(f"ratio {name}/plain: {ratios}" + (f"  (target {target})" if target else ""))
    print(f"ratio metrics/bare: " + " ".join(f"{k} {med['metrics'][k] / med['bare'][k]:.3f}," for k in keys).rstrip(","))
    shares = []
    for rep in range(3):
        inside = {"train": 0.0, "eval": 0.0}
        clkernel_run(data, rep, metrics=True, inside=inside)
        shares.append({p: inside[p] / med["bare"][f"{p} cpu"] for p in inside})
    print("inside the evaluator's and the logger's events (thread CPU time, median of 3 runs) / bare CPU time: "
          f"train {statistics.median(s['train'] for s in shares):.2%}, eval {statistics.median(s['eval'] for s in shares):.2%}")


if __name__ == "__main__":
    main()
