"""RWalk on task-incremental Split MNIST, the ContinualAI continual-learning-baselines setting, on real MNIST.

Setting (``ContinualAI/continual-learning-baselines``, ``experiments/split_mnist/rwalk.py``, which reproduces
Chaudhry et al., 2018, with Avalanche's ``RWalkPlugin``): 5 experiences of 2 classes (class order 0..9) with
task labels, a multi-head MLP with two hidden layers of 256 ReLU units and no dropout, Adam lr 1e-3, minibatch 64,
10 epochs per experience, ``ewc_lambda=0.1``, ``alpha=0.9``, ``delta_t=10``. Reference: 0.99, the mean over the
5 experiences of the test accuracy after the last one.

The same script runs Adam without the plugin for context. ``--epochs`` reduces the epochs on a loaded machine
(RESULTS.md then says so). ``--json PATH`` writes the rows as JSON to PATH instead of RESULTS.md (what
``tests/bench/reproduction_table.py`` reads).

    .venv/bin/python contrib/rwalk/bench/reproduce.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import clkernel
from clkernel import Strategy, iterate_minibatches

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = Path(os.environ.get("CLKERNEL_DATA", HERE.parents[2] / ".." / "shared" / "data"))
REFERENCE = {"RWalk": "0.99", "Adam (no plugin)": "-"}
SOURCE = ("ContinualAI continual-learning-baselines, RWalk on Split MNIST (experiments/split_mnist/rwalk.py, "
          "reference 0.99)")


def mean_accuracy(model: torch.nn.Module, stream: Any) -> tuple[float, list[float]]:
    """Mean over experiences of the test accuracy (each sample scored on its own task's head), and each."""
    per_exp = []
    with clkernel.eval_mode(model), torch.no_grad():
        for exp in stream:
            correct = total = 0
            for x, y, t in iterate_minibatches(exp.dataset.eval(), 2048, shuffle=False):
                correct += int((clkernel.model_forward(model, x, t).argmax(1) == y).sum())
                total += len(y)
            per_exp.append(correct / total)
    return sum(per_exp) / len(per_exp), per_exp


def run(args: argparse.Namespace, with_rwalk: bool) -> dict[str, Any]:
    benchmark = clkernel.load("benchmark", "split-mnist", n_experiences=5, dataset_root=str(args.data_root),
                              download=False, seed=args.seed, return_task_id=True,
                              fixed_class_order=list(range(10)))
    torch.manual_seed(args.seed)
    model = clkernel.load("model", "mt-simple-mlp", num_classes=2, input_size=784, hidden_size=256,
                          hidden_layers=2, drop_rate=0.0, benchmark=benchmark)
    plugins = [clkernel.load("plugin", "rwalk", ewc_lambda=0.1, alpha=0.9, delta_t=10)] if with_rwalk else []
    strategy = Strategy(model, torch.optim.Adam(model.parameters(), lr=1e-3), plugins=plugins, train_mb_size=64,
                        train_epochs=args.epochs, eval_mb_size=2048, device="cpu", eval_every=-1,
                        generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    for exp in benchmark.train_stream:
        strategy.train(exp)
    acc, per_exp = mean_accuracy(model, benchmark.test_stream)
    return {"accuracy": acc, "per_experience": per_exp, "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file instead of RESULTS.md")
    args = parser.parse_args()
    if not (args.data_root / "MNIST" / "raw").is_dir():
        print(f"MNIST not found under {args.data_root} (expected MNIST/raw/): pass --data-root", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = {}
    for key, with_rwalk in (("RWalk", True), ("Adam (no plugin)", False)):
        results[key] = run(args, with_rwalk)
        print(f"{key}: {results[key]['accuracy']:.4f} ({results[key]['seconds']:.0f} s)", flush=True)
    if args.json:  # the rows, for tests/bench/reproduction_table.py, instead of RESULTS.md
        args.json.write_text(json.dumps([{"method": key, "per_seed": [r["accuracy"]], "seconds": r["seconds"],
                                          "published": REFERENCE[key] + f" ({SOURCE})" * (REFERENCE[key] != "-")}
                                         for key, r in results.items()]))
        return 0
    command = "nice -n 10 .venv/bin/python contrib/rwalk/bench/reproduce.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    reduced = "" if args.epochs == 10 else (f" Reduced: {args.epochs} epoch(s) per experience instead of 10 "
                                             f"(CPU time on a loaded 2-core machine).")
    lines = ["# RWalk: accuracy on real data", "",
             f"Written by `contrib/rwalk/bench/reproduce.py` on {datetime.date.today().isoformat()}, machine: "
             f"{platform.machine()} CPU, {args.threads} torch thread(s), shared with other jobs "
             f"(Python {platform.python_version()}, torch {torch.__version__}).", "",
             f"Setting: task-incremental Split MNIST (5 experiences of 2 classes, class order 0..9, task labels), "
             f"`mt-simple-mlp` 784-256-256 with a head per task, no dropout, Adam lr 1e-3, minibatch 64, "
             f"{args.epochs} epochs per experience, `rwalk:ewc_lambda=0.1,alpha=0.9,delta_t=10`, seed {args.seed}. "
             f"Measured: mean over the 5 experiences of the test accuracy after the last one.{reduced}", "",
             "| run | measured | reference | wall time |", "|---|---|---|---|"]
    for key, r in results.items():
        lines.append(f"| {key} | {r['accuracy']:.4f} | {REFERENCE[key]} | {r['seconds']:.0f} s |")
    lines += ["", f"Reference: {SOURCE}. One seed here.", "",
              f"Command: `{command}`", "", "Accuracy on each experience after the last one:", ""]
    for key, r in results.items():
        lines.append(f"- {key}: {', '.join(f'{a:.4f}' for a in r['per_experience'])}")
    text = "\n".join(lines) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
