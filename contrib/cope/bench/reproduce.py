"""Reproduce CoPE on online, data-incremental Split MNIST (class-incremental) in Avalanche's reference setting.

Setting (ContinualAI/continual-learning-baselines ``experiments/split_mnist/cope.py``, target in
``tests/target_results.csv``: ``cope,smnist,0.93``; the paper's balanced Split-MNIST config, ``main_MNIST.sh`` of
Mattdl/ContinualPrototypeEvolution, differs in the embedding size, 100): Split MNIST, 5 experiences of 2 classes in
order 0..9, streamed online in mini-experiences of 10 samples, one SGD step each (lr 0.01, no momentum); a
784-400-400-32 MLP without dropout whose 32-unit output is the embedding; a 2,000-sample class-balanced buffer, as
many replayed samples as incoming; prototype momentum 0.99, PPP temperature 0.1. Accuracy on the whole test stream
after the last mini-experience. Naive fine-tuning (a 784-400-400-10 MLP with cross-entropy) runs on the same stream.

``--per-experience N`` draws N training samples per experience instead of all of them (about 12,000): the full
stream is 6,000 mini-experiences. RESULTS.md says which was run.

Differences from Avalanche's run, kept on purpose: inputs normalised (mean 0.1307, std 0.3081); the prototypes move
after every step with that step's embeddings (incoming and replayed; Avalanche accumulates them over the
mini-experience, the same here: one step each).

    CLKERNEL_DATA=/work/shared/data .venv/bin/python contrib/cope/bench/reproduce.py [--seeds 0] [--per-experience N]

Writes ``contrib/cope/bench/RESULTS.md`` next to this script, or with ``--json PATH`` the rows as JSON to
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
from clkernel_cope import CoPE

REFERENCE = ("0.93 (ContinualAI/continual-learning-baselines, tests/target_results.csv `cope,smnist`, "
             "reproducing De Lange & Tuytelaars, 2021)")
METHODS = ("cope", "naive")


def online_stream(bench: clkernel.Benchmark, per_experience: int | None, seed: int) -> Stream:
    """The training experiences (``per_experience`` random samples of each, or all), in mini-experiences of 10."""
    g = torch.Generator().manual_seed(seed)
    exps = [Experience(e.index, e.dataset.subset(torch.randperm(len(e.dataset), generator=g)[:per_experience]),
                       classes=e.classes) if per_experience else e for e in bench.train_stream]
    return split_online_stream(Stream("train", exps), 10, seed=seed)


def run(method: str, seed: int, root: str, per_experience: int | None) -> float:
    """Accuracy on the whole test stream after the last mini-experience."""
    torch.manual_seed(seed)
    bench = clkernel.load("benchmark", "split-mnist", dataset_root=root, download=False, seed=seed,
                          fixed_class_order=list(range(10)))
    stream = online_stream(bench, per_experience, seed)
    outputs = 32 if method == "cope" else 10
    model = clkernel.load("model", "simple-mlp", num_classes=outputs, input_size=784, hidden_size=400,
                          hidden_layers=2, drop_rate=0.0)
    plugins = [CoPE(mem_size=2000, alpha=0.99, temperature=0.1, num_classes=10, seed=seed)] if method == "cope" else []
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01),
                                 plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=10,
                                 train_epochs=1, eval_mb_size=1000, device="cpu", eval_every=-1,
                                 generator=torch.Generator().manual_seed(seed))
    with strategy:
        strategy.train(stream)
        results = strategy.eval(bench.test_stream)
    return float(results["acc_stream/eval/test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--per-experience", type=int, default=None,
                        help="training samples drawn per experience (default: all, Avalanche's setting)")
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

    labels = {"cope": "CoPE (buffer 2000, 32-unit embeddings)", "naive": "Naive"}
    reference = {"cope": REFERENCE, "naive": "-"}
    size = "all training samples" if not args.per_experience else f"{args.per_experience} samples per experience"
    command = (f"CLKERNEL_DATA={args.data_root} .venv/bin/python contrib/cope/bench/reproduce.py --seeds "
               + " ".join(map(str, args.seeds)) + (f" --per-experience {args.per_experience}"
                                                   if args.per_experience else ""))
    if args.json:
        args.json.write_text(json.dumps([{"method": labels[m], "per_seed": [a / 100 for a in accs],
                                          "published": reference[m], "seconds": s} for m, (accs, s) in rows.items()]))
        return
    lines = [
        "# CoPE on online Split MNIST: reproduction", "",
        "Written by `bench/reproduce.py`; its docstring gives the exact setting and the differences from Avalanche's "
        "reference run.", "",
        f"- command: `{command}` ({size})",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other jobs), Python {sys.version.split()[0]}, torch {torch.__version__}",
        f"- total wall time: {wall:.0f} s", "",
        "| method | final accuracy, whole test stream (%) | reference | wall time |",
        "|---|---|---|---|",
        *(f"| {labels[m]} | {fmt(rows[m][0])} | {reference[m]} | {rows[m][1]:.0f} s |" for m in args.methods), "",
        f"Seeds {args.seeds}" + (" (mean +- standard deviation)." if len(args.seeds) > 1 else "."),
    ]
    out = Path(__file__).with_name("RESULTS.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
