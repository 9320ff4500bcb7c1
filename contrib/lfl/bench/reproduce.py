"""LFL on Permuted MNIST, the ContinualAI continual-learning-baselines setting, on real MNIST.

Setting (``ContinualAI/continual-learning-baselines``, ``experiments/permuted_mnist/lfl.py``, with Avalanche's
``LFLPlugin``): 4 permuted-MNIST experiences, an MLP with one hidden layer of 256 ReLU units and no dropout, SGD
lr 0.01 (no momentum), minibatch 128, 3 epochs per experience, ``lambda_e = 1e-4``. Reference: 0.88 test accuracy
on each experience after the last one.

The same script runs SGD without the plugin for context. ``--epochs`` reduces the epochs on a loaded machine
(RESULTS.md then says so). ``--json PATH`` writes the rows as JSON to PATH instead of RESULTS.md (what
``tests/bench/reproduction_table.py`` reads).

    .venv/bin/python contrib/lfl/bench/reproduce.py
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
REFERENCE = {"LFL": "0.88 on each experience", "SGD (no plugin)": "-"}
SOURCE = ("ContinualAI continual-learning-baselines, LFL on Permuted MNIST (experiments/permuted_mnist/lfl.py, "
          "reference 0.88 per experience)")


def mean_accuracy(model: torch.nn.Module, stream: Any) -> tuple[float, list[float]]:
    """Mean over experiences of the test accuracy, and each experience's."""
    per_exp = []
    with clkernel.eval_mode(model), torch.no_grad():
        for exp in stream:
            correct = total = 0
            for x, y, t in iterate_minibatches(exp.dataset.eval(), 2048, shuffle=False):
                correct += int((clkernel.model_forward(model, x, t).argmax(1) == y).sum())
                total += len(y)
            per_exp.append(correct / total)
    return sum(per_exp) / len(per_exp), per_exp


def run(args: argparse.Namespace, with_lfl: bool) -> dict[str, Any]:
    benchmark = clkernel.load("benchmark", "permuted-mnist", n_experiences=4, dataset_root=str(args.data_root),
                              download=False, seed=args.seed)
    torch.manual_seed(args.seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=784, hidden_size=256,
                          hidden_layers=1, drop_rate=0.0)
    plugins = [clkernel.load("plugin", "lfl", lambda_e=1e-4)] if with_lfl else []
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01), plugins=plugins, train_mb_size=128,
                        train_epochs=args.epochs, eval_mb_size=2048, device="cpu", eval_every=-1,
                        generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    for exp in benchmark.train_stream:
        strategy.train(exp)
    acc, per_exp = mean_accuracy(model, benchmark.test_stream)
    return {"accuracy": acc, "per_experience": per_exp, "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
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
    for key, with_lfl in (("LFL", True), ("SGD (no plugin)", False)):
        results[key] = run(args, with_lfl)
        print(f"{key}: {results[key]['accuracy']:.4f} ({results[key]['seconds']:.0f} s)", flush=True)
    if args.json:  # the rows, for tests/bench/reproduction_table.py, instead of RESULTS.md
        args.json.write_text(json.dumps([{"method": key, "per_seed": [r["accuracy"]], "seconds": r["seconds"],
                                          "published": REFERENCE[key] + f" ({SOURCE})" * (REFERENCE[key] != "-")}
                                         for key, r in results.items()]))
        return 0
    command = "nice -n 10 .venv/bin/python contrib/lfl/bench/reproduce.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    reduced = "" if args.epochs == 3 else (f" Reduced: {args.epochs} epoch(s) per experience instead of 3 "
                                             f"(CPU time on a loaded 2-core machine).")
    lines = ["# LFL: accuracy on real data", "",
             f"Written by `contrib/lfl/bench/reproduce.py` on {datetime.date.today().isoformat()}, machine: "
             f"{platform.machine()} CPU, {args.threads} torch thread(s), shared with other jobs "
             f"(Python {platform.python_version()}, torch {torch.__version__}).", "",
             f"Setting: Permuted MNIST (4 experiences of the 10 classes), `simple-mlp` 784-256-10, no dropout, SGD "
             f"lr 0.01 without momentum, minibatch 128, {args.epochs} epochs per experience, "
             f"`lfl:lambda_e=0.0001` (classifier frozen from the second experience), seed {args.seed}. Measured: "
             f"test accuracy on each experience after the last one, and their mean.{reduced}", "",
             "| run | accuracy on experiences 0..3 | mean | reference | wall time |", "|---|---|---|---|---|"]
    for key, r in results.items():
        each = ", ".join(f"{a:.4f}" for a in r["per_experience"])
        lines.append(f"| {key} | {each} | {r['accuracy']:.4f} | {REFERENCE[key]} | {r['seconds']:.0f} s |")
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
