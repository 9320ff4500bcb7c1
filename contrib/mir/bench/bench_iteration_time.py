"""Time per training iteration of MIR against plain Replay (clkernel-replay), and Replay against a hand-written loop.

MIR does more work per iteration by design: besides the incoming minibatch's forward pass it takes the gradient of
that minibatch's loss (one extra backward pass, the loop's own backward follows), runs the model twice on the
``subsample`` candidates (current and virtual parameters, no gradient) and once more, with gradient, on the
retrieved samples. Replay concatenates one random buffer minibatch to the incoming one. Buffer updates happen once
per experience, off the per-iteration path, for both.

Setting: split-digits (8x8 inputs), a 64-256-256-10 MLP, minibatches of 32 plus 32 replayed samples (MIR: the 32
most interfered of 50 candidates, the paper's subsample), a 500-sample reservoir buffer filled by training the
first experience, then timed training runs over the second experience (10 epochs each; the end-of-experience buffer
update is included, amortised over the run's iterations). The variants run interleaved, ``--repeats`` rounds; the
script prints the median seconds per iteration and the ratio MIR / Replay.

    .venv/bin/python contrib/mir/bench/bench_iteration_time.py [--repeats 15] [--subsample 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import clkernel
from clkernel import Strategy
from clkernel_mir import MIR

EPOCHS = 10  # epochs per timed training run, so the end-of-experience update is amortised over many iterations


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--subsample", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = clkernel.load("benchmark", "split-digits", seed=0)
    exp0, exp1 = bench.train_stream[0], bench.train_stream[1]

    strategies = {}
    for name, plugin in (("replay", clkernel.load("plugin", "replay", mem_size=500, storage_policy="reservoir",
                                                  seed=0)),
                         ("mir", MIR(mem_size=500, subsample=args.subsample, batch_size_mem=32, seed=0))):
        net = model()
        s = Strategy(net, torch.optim.SGD(net.parameters(), lr=0.01), plugins=[plugin], train_mb_size=32,
                     train_epochs=EPOCHS, device="cpu", eval_every=-1, generator=torch.Generator().manual_seed(0))
        s.train(exp0)  # fills the buffer
        strategies[name] = s

    # the plain loop: Replay's work written by hand (one random buffer minibatch concatenated to the incoming one)
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    buf_x, buf_y, _ = exp0.dataset.get_batch(torch.randperm(len(exp0.dataset))[:500])
    data_x, data_y, _ = exp1.dataset.get_batch(torch.arange(len(exp1.dataset)))
    gen = torch.Generator().manual_seed(0)

    def plain_run() -> None:
        for _ in range(EPOCHS):
            order = torch.randperm(len(data_x), generator=gen)
            for start in range(0, len(order), 32):
                i = order[start:start + 32]
                j = torch.randperm(len(buf_x), generator=gen)[:32]
                x, y = torch.cat([data_x[i], buf_x[j]]), torch.cat([data_y[i], buf_y[j]])
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()

    iterations = EPOCHS * -(-len(exp1.dataset) // 32)
    times: dict[str, list[float]] = {"plain": [], "replay": [], "mir": []}
    for _ in range(args.repeats):
        for name in times:
            t0 = time.perf_counter()
            if name == "plain":
                plain_run()
            else:
                strategies[name].train(exp1)
            times[name].append((time.perf_counter() - t0) / iterations)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>7}: {v * 1e6:8.1f} us / iteration (median of {args.repeats} runs of {iterations} iterations)")
    print(f"ratio mir / replay: {med['mir'] / med['replay']:.2f}")
    print(f"ratio replay / plain loop: {med['replay'] / med['plain']:.2f}")


if __name__ == "__main__":
    main()
