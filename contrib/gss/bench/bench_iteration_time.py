"""Time per training iteration of GSS-greedy replay against plain Replay (clkernel-replay, reservoir buffer).

The two plugins replay the same way (one random buffer minibatch concatenated to the incoming one); they differ in
the buffer update after each experience. Replay's reservoir update merges random keys; GSS-greedy computes
per-sample loss gradients (one ``torch.func`` pass per 10 incoming samples, over them and ``mem_strength`` buffer
minibatches of 10) and draws replacements. That cost lands on the training path in proportion to how often the
buffer is updated, so two settings are timed:

- ``online``: the second experience of split-digits streamed in mini-experiences of 10 samples, one step each, the
  buffer updated after every step (GSS's own setting): the scoring is paid at every iteration;
- ``offline``: the whole second experience, 10 epochs of minibatches of 32, the buffer updated once at its end: the
  scoring is amortised over the experience's iterations.

A 64-256-256-10 MLP, a 300-sample buffer filled by the first experience, 10 (online) or 32 (offline) replayed
samples per step. Both variants run interleaved, ``--repeats`` rounds; the script prints median seconds per
iteration and the ratio GSS / Replay for each setting.

    .venv/bin/python contrib/gss/bench/bench_iteration_time.py [--repeats 11]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import clkernel
from clkernel import Strategy
from clkernel_benchmarks import split_online_stream
from clkernel_gss import GSSGreedy


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = clkernel.load("benchmark", "split-digits", seed=0)
    exp0, exp1 = bench.train_stream[0], bench.train_stream[1]
    online = split_online_stream([exp1], 10, seed=0)
    settings = {"online": (online, 10, 1, len(online)), "offline": ([exp1], 32, 10, 10 * -(-len(exp1.dataset) // 32))}

    strategies = {}
    for setting, (_, mb, epochs, _) in settings.items():
        for name in ("replay", "gss"):
            plugin = (clkernel.load("plugin", "replay", mem_size=300, batch_size_mem=mb, storage_policy="reservoir",
                                    seed=0) if name == "replay" else GSSGreedy(mem_size=300, batch_size_mem=mb, seed=0))
            net = model()
            s = Strategy(net, torch.optim.SGD(net.parameters(), lr=0.01), plugins=[plugin], train_mb_size=mb,
                         train_epochs=epochs, device="cpu", eval_every=-1, generator=torch.Generator().manual_seed(0))
            s.train(exp0)  # fills the buffer
            strategies[setting, name] = s

    times: dict[tuple[str, str], list[float]] = {key: [] for key in strategies}
    for _ in range(args.repeats):
        for (setting, name), s in strategies.items():
            stream, _, _, iterations = settings[setting]
            t0 = time.perf_counter()
            s.train(stream)
            times[setting, name].append((time.perf_counter() - t0) / iterations)
    med = {k: statistics.median(v) for k, v in times.items()}
    for (setting, name), v in med.items():
        print(f"{setting:>7} {name:>6}: {v * 1e6:9.1f} us / iteration (median of {args.repeats} runs of "
              f"{settings[setting][3]} iterations)")
    for setting in settings:
        print(f"ratio gss / replay, {setting}: {med[setting, 'gss'] / med[setting, 'replay']:.2f}")


if __name__ == "__main__":
    main()
