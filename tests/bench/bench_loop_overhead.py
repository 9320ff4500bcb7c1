"""clkernel (Naive) against a plain hand-written PyTorch loop doing the same work, in one process.

Work: 60,000 in-memory random 1x28x28 samples, 10 classes, 5 class-incremental experiences of 2 classes,
MLP 784-512-10, SGD, minibatch 128, 1 epoch per experience, then evaluation on a 10,000-sample test stream
(5 experiences) after each training experience. Three runs, interleaved: the plain loop, clkernel bare, and
clkernel with the default metrics and the progress display (the interactive logger drawing its bars into
/dev/null). Prints the median time of each and the ratios to the plain loop (targets: bare <= 1.02, with
metrics and progress <= 1.05, for training and for evaluation).

    .venv/bin/python tests/bench/bench_loop_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Naive, Stream

MB, EVAL_MB = 128, 128


def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    train_x, train_y = torch.rand(60_000, 1, 28, 28, generator=g), torch.randint(0, 10, (60_000,), generator=g)
    test_x, test_y = torch.rand(10_000, 1, 28, 28, generator=g), torch.randint(0, 10, (10_000,), generator=g)
    return train_x, train_y, test_x, test_y


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))


def plain_run(data, seed: int) -> tuple[float, float]:
    """Train and evaluate by hand: slice each experience's tensors, loop over shuffled minibatches.

    Minibatches are gathered with ``index_select``, the fastest gather on CPU (``x[idx]`` is several times
    slower on torch 2.14), so the baseline is the strongest plain loop, not a naive one.
    """
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = torch.nn.CrossEntropyLoss()
    train_time = eval_time = 0.0
    for exp in range(5):
        start = time.perf_counter()
        model.train()
        idx = torch.isin(train_y, torch.tensor([2 * exp, 2 * exp + 1])).nonzero().flatten()
        xe, ye = train_x[idx], train_y[idx]
        perm = torch.randperm(len(ye))
        for s in range(0, len(ye), MB):
            b = perm[s:s + MB]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xe.index_select(0, b)), ye.index_select(0, b))
            loss.backward()
            optimizer.step()
        train_time += time.perf_counter() - start
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            for test_exp in range(5):
                idx = torch.isin(test_y, torch.tensor([2 * test_exp, 2 * test_exp + 1])).nonzero().flatten()
                xt = test_x[idx]
                for s in range(0, len(idx), EVAL_MB):
                    model(xt[s:s + EVAL_MB])
        eval_time += time.perf_counter() - start
    return train_time, eval_time


def benchmark_of(data) -> Benchmark:
    train_x, train_y, test_x, test_y = data
    train, test = CLDataset.from_tensors(train_x, train_y), CLDataset.from_tensors(test_x, test_y)
    stream = lambda ds, name: Stream(name, [Experience(i, ds.class_subset([2 * i, 2 * i + 1])) for i in range(5)])
    return Benchmark({"train": stream(train, "train"), "test": stream(test, "test")})


def clkernel_run(data, seed: int, with_metrics: bool = False) -> tuple[float, float]:
    """The same work through clkernel's Naive strategy (benchmark construction is not timed, as above)."""
    bench = benchmark_of(data)
    torch.manual_seed(seed)
    model = make_model()
    plugins = []
    if with_metrics:
        from clkernel_loggers import InteractiveLogger

        plugins = [clkernel.load("metric", "default"), InteractiveLogger(bars=True, file=open(os.devnull, "w"))]
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(),
                     train_mb_size=MB, eval_mb_size=EVAL_MB, device="cpu", plugins=plugins)
    train_time = eval_time = 0.0
    for exp in bench.train_stream:
        start = time.perf_counter()
        strategy.train(exp)
        train_time += time.perf_counter() - start
        start = time.perf_counter()
        strategy.eval(bench.test_stream)
        eval_time += time.perf_counter() - start
    strategy.close()
    return train_time, eval_time


def clkernel_metrics_run(data, seed: int) -> tuple[float, float]:
    return clkernel_run(data, seed, with_metrics=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = make_data()
    runs = {"plain": plain_run, "clkernel": clkernel_run, "+metrics": clkernel_metrics_run}
    for fn in runs.values():  # warm-up
        fn(data, 0)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for rep in range(args.repeats):  # interleaved, so drifts in machine load hit all
        order = list(runs.items())
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            times[name].append(fn(data, rep))
    med = {k: (statistics.median(t for t, _ in v), statistics.median(e for _, e in v)) for k, v in times.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    print(f"{'':10s} {'train s':>9s} {'eval s':>9s}")
    for name, (t, e) in med.items():
        print(f"{name:10s} {t:9.3f} {e:9.3f}")
    for name, target in (("clkernel", 1.02), ("+metrics", 1.05)):
        print(f"ratio {name}/plain: train {med[name][0] / med['plain'][0]:.3f}, "
              f"eval {med[name][1] / med['plain'][1]:.3f}  (target <= {target})")


if __name__ == "__main__":
    main()
