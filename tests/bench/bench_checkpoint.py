"""What checkpoints cost: time per checkpoint, file size, and the loop's speed between checkpoints.

Work: Split MNIST (real data from ``$CLKERNEL_DATA``, default ``../shared/data``; skipped with a message when
absent), 5 class-incremental experiences, MLP 784-512-10 (``simple-mlp``, no dropout), SGD momentum 0.9, minibatch
128, Replay(mem_size=500) + EWC(ewc_lambda=0.4) + the default metrics, one thread.

1. After two experiences (the buffer holds 500 samples, EWC two experiences' importances): the median time of
   ``Strategy.state_dict()``, of ``clkernel.save_checkpoint`` (serialise, checksum, write, fsync, rename) and of
   ``clkernel.load_checkpoint`` into a fresh strategy, and the file's size.
2. The loop's speed between checkpoints: one training experience's iterations (timed from the first to the last
   minibatch, so the experience-end checkpoint is outside the window) with a ``Checkpointer`` whose cadence never
   comes due inside it, against no checkpointer; and with a checkpoint every 100 iterations (the cost above,
   amortised). Interleaved repeats, medians, ratios to the run without checkpoints.

    CLKERNEL_DATA=../shared/data .venv/bin/python tests/bench/bench_checkpoint.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import clkernel
from clkernel import Checkpointer, Strategy, load, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CLKERNEL_DATA") or ROOT.parent / "shared" / "data")


class Span:
    """Times a training experience from its first minibatch to the end of its last one."""

    name = "span"

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.iterations = 0

    @clkernel.hookimpl
    def before_training_exp(self, state) -> None:
        self.start, self.iterations = 0.0, 0

    @clkernel.hookimpl
    def before_training_iteration(self, state) -> None:
        if not self.start:
            self.start = time.perf_counter()

    @clkernel.hookimpl
    def after_training_iteration(self, state) -> None:
        self.end = time.perf_counter()
        self.iterations += 1


def build(bench, checkpoint: Checkpointer | None = None) -> tuple[Strategy, Span]:
    torch.manual_seed(0)
    model = load("model", "simple-mlp", input_size=784, num_classes=10, drop_rate=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    span = Span()
    plugins = [load("plugin", "replay", mem_size=500, seed=0), load("plugin", "ewc", ewc_lambda=0.4),
               load("metric", "default"), span]
    return Strategy(model, optimizer, plugins=plugins, train_mb_size=128, eval_mb_size=512, device="cpu",
                    eval_every=-1, checkpoint=checkpoint), span


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not (DATA / "MNIST" / "raw").is_dir():
        print(f"skipped: no MNIST under {DATA} (set CLKERNEL_DATA to the shared data folder)")
        return
    torch.set_num_threads(1)
    bench = load("benchmark", "split-mnist", dataset_root=str(DATA), download=False, seed=0)
    train = list(bench.streams["train"])
    folder = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))

    strategy, _ = build(bench)
    strategy.train(train[:2])
    path = folder / "checkpoint.pt"
    state_s = median_time(strategy.state_dict, args.repeats)
    save_s = median_time(lambda: save_checkpoint(path, strategy), args.repeats)
    fresh = [build(bench)[0] for _ in range(args.repeats)]
    load_s = median_time(lambda: load_checkpoint(path, fresh.pop()), args.repeats)
    size = path.stat().st_size
    print(f"checkpoint after 2 experiences: {size / 2**20:.2f} MiB; state_dict {state_s * 1e3:.1f} ms, "
          f"save_checkpoint {save_s * 1e3:.1f} ms, load_checkpoint {load_s * 1e3:.1f} ms (medians of "
          f"{args.repeats})")

    runs = {"none": lambda: None, "idle": lambda: Checkpointer(folder / "idle", every=10**9),
            "every100": lambda: Checkpointer(folder / "every100", every=100, keep=2)}
    per_iteration: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, make in runs.items():  # interleaved
            strategy, span = build(bench, make())
            strategy.train(train[:2])  # the experience timed has a buffer to replay and penalties to add
            per_iteration[name].append((span.end - span.start) / max(span.iterations - 1, 1))
    base = statistics.median(per_iteration["none"])
    print(f"training iterations of experience 1 (Replay + EWC + default metrics), median of {args.repeats}:")
    for name in runs:
        value = statistics.median(per_iteration[name])
        print(f"  {name:9s} {value * 1e3:7.3f} ms per iteration, ratio {value / base:.3f}")


if __name__ == "__main__":
    sys.exit(main())
