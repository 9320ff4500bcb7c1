"""Reproduce ER-MIR on online Split MNIST (class-incremental) in Avalanche's reference setting.

Setting (ContinualAI/continual-learning-baselines, ``experiments/split_mnist/mir.py``, target in
``tests/target_results.csv``: ``mir,smnist,0.87``): Split MNIST, 5 experiences of 2 classes, 1,000 training
samples drawn per experience, streamed online in mini-experiences of 10 samples (one SGD step each, the buffer
updated after each); SGD lr 0.05 without momentum; a 784-400-10 MLP with dropout 0.5 (Avalanche's SimpleMLP,
``hidden_layers=1``); a 500-sample class-balanced buffer (Avalanche's MIRPlugin policy); 50 candidates, 10
retrieved per step. The accuracy is over the whole test stream after the last experience. Naive fine-tuning and
experience replay with random retrieval (clkernel-replay's ``replay``, the same buffer and 10 samples per step) run
alongside on the same stream.

Differences from Avalanche's code, kept on purpose: classes in order 0..9 (Avalanche shuffles them with seed 0);
inputs normalised (mean 0.1307, std 0.3081; Avalanche's run passes no transform); candidates are drawn from the
whole buffer (Avalanche leaves out the classes of the last minibatch of the previous mini-experience); the
virtual step uses each parameter's optimizer learning rate (the same here: one group).

    CLKERNEL_DATA=/work/shared/data .venv/bin/python contrib/mir/bench/reproduce.py [--seeds 0 1 2]

Writes ``contrib/mir/bench/RESULTS.md`` next to this script, or with ``--json PATH`` the rows as JSON to
PATH instead (what ``tests/bench/reproduction_table.py`` reads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import clkernel
from clkernel import Experience, Stream
from clkernel_benchmarks import split_online_stream
from clkernel_mir import MIR

REFERENCE = ("0.87 (ContinualAI/continual-learning-baselines, tests/target_results.csv `mir,smnist`, reproducing "
             "Aljundi et al., 2019, NeurIPS)")
METHODS = ("mir", "replay", "naive")


def online_stream(bench: clkernel.Benchmark, per_experience: int, seed: int) -> Stream:
    """``per_experience`` random training samples of each experience, cut into mini-experiences of 10."""
    g = torch.Generator().manual_seed(seed)
    reduced = [Experience(e.index, e.dataset.subset(torch.randperm(len(e.dataset), generator=g)[:per_experience]),
                          classes=e.classes) for e in bench.train_stream]
    return split_online_stream(Stream("train", reduced), 10, seed=seed)


def run(method: str, seed: int, root: str, per_experience: int) -> float:
    """Accuracy on the whole test stream after the last experience."""
    torch.manual_seed(seed)
    bench = clkernel.load("benchmark", "split-mnist", dataset_root=root, download=False, seed=seed,
                          fixed_class_order=list(range(10)))
    stream = online_stream(bench, per_experience, seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=784, hidden_size=400, hidden_layers=1,
                          drop_rate=0.5)
    plugins: list = []
    if method == "mir":
        plugins.append(MIR(mem_size=500, subsample=50, batch_size_mem=10, storage_policy="class_balanced",
                           seed=seed))
    elif method == "replay":
        plugins.append(clkernel.load("plugin", "replay", mem_size=500, batch_size_mem=10,
                                     storage_policy="class_balanced", seed=seed))
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                                 plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=10,
                                 train_epochs=1, eval_mb_size=1000, device="cpu", eval_every=-1,
                                 generator=torch.Generator().manual_seed(seed))
    with strategy:
        strategy.train(stream)
        results = strategy.eval(bench.test_stream)
    return float(results["acc_stream/eval/test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--per-experience", type=int, default=1000,
                        help="training samples per experience (Avalanche's setting: 1000)")
    parser.add_argument("--data-root", default=os.environ.get("CLKERNEL_DATA", "/work/shared/data"))
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file instead of RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, start = {}, time.perf_counter()
    for method in args.methods:
        t0 = time.perf_counter()
        accs = [100 * run(method, seed, args.data_root, args.per_experience) for seed in args.seeds]
        rows[method] = (accs, time.perf_counter() - t0)
        print(f"{method}: {statistics.mean(accs):.2f} (seeds {args.seeds}: {', '.join(f'{a:.2f}' for a in accs)}), "
              f"{rows[method][1]:.0f} s", flush=True)
    wall = time.perf_counter() - start

    def fmt(accs: list[float]) -> str:
        return f"{statistics.mean(accs):.2f}" + (f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else "")

    labels = {"mir": "ER-MIR (buffer 500, 50 candidates, 10 retrieved)", "replay": "ER, random retrieval (same buffer)",
              "naive": "Naive"}
    reference = {"mir": REFERENCE, "replay": "0.92 for Avalanche's online replay on its full-size stream "
                 "(`online_replay,smnist`, same file; not this reduced stream)", "naive": "-"}
    command = (f"CLKERNEL_DATA={args.data_root} .venv/bin/python contrib/mir/bench/reproduce.py --seeds "
               + " ".join(map(str, args.seeds)) + f" --per-experience {args.per_experience}")
    if args.json:
        args.json.write_text(json.dumps([{"method": labels[m], "per_seed": [a / 100 for a in accs],
                                          "published": reference[m], "seconds": s} for m, (accs, s) in rows.items()]))
        return
    lines = [
        "# ER-MIR on online Split MNIST: reproduction", "",
        "Written by `bench/reproduce.py`; its docstring gives the exact setting and the differences from Avalanche's "
        "reference run.", "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other jobs), Python {sys.version.split()[0]}, torch {torch.__version__}",
        f"- total wall time: {wall:.0f} s", "",
        "| method | final accuracy, whole test stream (%) | reference | wall time |",
        "|---|---|---|---|",
        *(f"| {labels[m]} | {fmt(rows[m][0])} | {reference[m]} | {rows[m][1]:.0f} s |" for m in args.methods), "",
        f"Means +- standard deviation over seeds {args.seeds}.",
    ]
    out = Path(__file__).with_name("RESULTS.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
