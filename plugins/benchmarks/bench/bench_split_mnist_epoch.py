"""One epoch over split-mnist's training experiences, minibatches of 128: clkernel vs slicing tensors by hand.

Builds ``split-mnist`` from the MNIST files (default ``<repo>/../shared/data``), then times one epoch over all
its training experiences with ``clkernel.iterate_minibatches`` (shuffled, as training does), against a plain
loop that slices the same in-memory uint8 tensors by hand with the same normalisation (the same per-experience
sample indices, the same shuffling, the same conversion to normalised float32). Both run in this process,
interleaved; the ratio is of the medians. Target: ratio <= 1.2.

    .venv/bin/python plugins/benchmarks/bench/bench_split_mnist_epoch.py [--data-root PATH] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from clkernel import iterate_minibatches
from clkernel_benchmarks import split_mnist
from clkernel_benchmarks.classic import MNIST_STATS
from clkernel_benchmarks.transforms import Normalize

BATCH = 128


def kernel_epoch(benchmark, generator: torch.Generator) -> int:
    n = 0
    for exp in benchmark.train_stream:
        for x, y, t in iterate_minibatches(exp.dataset.train(), BATCH, shuffle=True, generator=generator):
            n += len(y)
    return n


def hand_epoch(x: torch.Tensor, targets: torch.Tensor, exp_indices: list[torch.Tensor], norm: Normalize,
               generator: torch.Generator) -> int:
    n = 0
    for idx in exp_indices:
        order = idx[torch.randperm(len(idx), generator=generator)]
        for start in range(0, len(order), BATCH):
            sel = order[start:start + BATCH]
            norm(x[sel])  # the minibatch, converted and normalised
            yb = targets[sel]
            n += len(yb)
    return n


def hand_epoch_index_select(x: torch.Tensor, targets: torch.Tensor, exp_indices: list[torch.Tensor],
                            norm: Normalize, generator: torch.Generator) -> int:
    """The hand loop gathering rows with index_select instead of x[sel] (informational: faster on CPU)."""
    n = 0
    for idx in exp_indices:
        order = idx[torch.randperm(len(idx), generator=generator)]
        for start in range(0, len(order), BATCH):
            sel = order[start:start + BATCH]
            norm(x.index_select(0, sel))
            yb = targets.index_select(0, sel)
            n += len(yb)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[3] / ".." / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for both loops)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    import torchvision  # noqa: F401 - timed apart: a one-off cost of any torchvision loading

    import_s = time.perf_counter() - start
    start = time.perf_counter()
    benchmark = split_mnist(dataset_root=args.data_root, download=False)
    build_s = time.perf_counter() - start

    start = time.perf_counter()
    mnist = torchvision.datasets.MNIST(args.data_root, train=True, download=False)
    x, targets = mnist.data[:, None], mnist.targets
    load_s = time.perf_counter() - start
    exp_indices = [torch.isin(targets, torch.tensor(exp.info["original_classes"])).nonzero().flatten()
                   for exp in benchmark.train_stream]
    norm = Normalize(*MNIST_STATS)

    # same work: same sample count, same batch values for the same shuffling
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert kernel_epoch(benchmark, g1) == hand_epoch(x, targets, exp_indices, norm, g2) == 60000
    xk = benchmark.train_stream[0].dataset.get_batch(torch.arange(3))[0]
    xh = norm(x[exp_indices[0][:3]])
    assert torch.equal(xk, xh), "the two loops do not produce the same minibatches"

    loops = {"kernel": lambda g: kernel_epoch(benchmark, g),
             "hand": lambda g: hand_epoch(x, targets, exp_indices, norm, g),
             "hand_index_select": lambda g: hand_epoch_index_select(x, targets, exp_indices, norm, g)}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.repeats):
        names = list(loops) if r % 2 == 0 else list(reversed(loops))  # alternate the order against drift
        for name in names:
            g = torch.Generator().manual_seed(r)
            start = time.perf_counter()
            loops[name](g)
            times[name].append(time.perf_counter() - start)
    k, h, hi = (statistics.median(times[n]) for n in loops)
    paired = statistics.median(a / b for a, b in zip(times["kernel"], times["hand"]))
    print(f"split-mnist: {len(benchmark.train_stream)} training experiences, 60000 samples, minibatches of {BATCH}, "
          f"{args.threads} thread(s), {args.repeats} repeats, torch {torch.__version__}")
    print(f"import torchvision: {import_s:.3f} s; build split-mnist from files: {build_s:.3f} s "
          f"(plain torchvision MNIST train load: {load_s:.3f} s)")
    print(f"epoch, clkernel.iterate_minibatches: median {k * 1e3:7.1f} ms  min {min(times['kernel']) * 1e3:7.1f} ms")
    print(f"epoch, slicing tensors by hand:      median {h * 1e3:7.1f} ms  min {min(times['hand']) * 1e3:7.1f} ms")
    print(f"  (hand with index_select, for information: median {hi * 1e3:.1f} ms)")
    print(f"ratio clkernel / hand: {k / h:.3f} (medians), {paired:.3f} (median of paired runs), "
          f"{min(times['kernel']) / min(times['hand']):.3f} (minima)   target <= 1.2")


if __name__ == "__main__":
    main()
