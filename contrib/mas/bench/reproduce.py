"""Memory Aware Synapses on task-incremental Split MNIST, the setting of Hsu et al. (2018), on real MNIST.

Setting (Hsu, Liu, Ramasamy & Kira, 2018, "Re-evaluating Continual Learning Scenarios: A Categorization and Case
for Strong Baselines", arXiv:1810.12488, and their ``GT-RIPL/Continual-Learning-Benchmark`` script
``split_MNIST_incremental_task.sh``): 5 experiences of 2 classes with task labels, a multi-head MLP with two
hidden layers of 400 ReLU units (one 2-unit head per task), Adam lr 1e-3, minibatch 128, 4 epochs per experience,
MAS with ``lambda_reg = 1`` (importances on minibatches of 128, summed over experiences). Reported there (Table 2,
incremental task learning): MAS 99.22 +- 0.21, Adam without regularisation 93.46 +- 2.01 (mean accuracy over
the 5 tasks after the last, 10 repeats).

Differences: the inputs are 28x28 (784 values) instead of the 32x32 padding of their loader, and this is one seed.
Nothing is reduced (the setting is small). The same script runs the Adam baseline (no plugin) for context.
``--json PATH`` writes the rows as JSON to PATH instead of RESULTS.md (what ``tests/bench/reproduction_table.py``
reads).

    .venv/bin/python contrib/mas/bench/reproduce.py
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
REFERENCE = {"MAS": 0.9922, "Adam (no plugin)": 0.9346}
SOURCE = ("Hsu et al. (2018), arXiv:1810.12488, Table 2, Split MNIST incremental task learning, MLP 400x2, "
          "Adam, 4 epochs (mean of 10 repeats)")


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


def run(args: argparse.Namespace, with_mas: bool) -> dict[str, Any]:
    benchmark = clkernel.load("benchmark", "split-mnist", n_experiences=5, dataset_root=str(args.data_root),
                              download=False, seed=args.seed, return_task_id=True,
                              class_ids_from_zero_in_each_exp=True)
    torch.manual_seed(args.seed)
    model = clkernel.load("model", "mt-simple-mlp", num_classes=2, input_size=784, hidden_size=400,
                          hidden_layers=2, drop_rate=0.0, benchmark=benchmark)
    plugins = [clkernel.load("plugin", "mas", lambda_reg=args.lambda_reg)] if with_mas else []
    strategy = Strategy(model, torch.optim.Adam(model.parameters(), lr=1e-3), plugins=plugins, train_mb_size=128,
                        train_epochs=args.epochs, eval_mb_size=2048, device="cpu", eval_every=-1,
                        generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    for exp in benchmark.train_stream:
        strategy.train(exp)
    acc, per_exp = mean_accuracy(model, benchmark.test_stream)
    return {"accuracy": acc, "per_experience": per_exp, "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lambda-reg", type=float, default=1.0)
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
    for key, with_mas in (("MAS", True), ("Adam (no plugin)", False)):
        results[key] = run(args, with_mas)
        print(f"{key}: {results[key]['accuracy']:.4f} ({results[key]['seconds']:.0f} s)", flush=True)
    if args.json:  # the rows, for tests/bench/reproduction_table.py, instead of RESULTS.md
        args.json.write_text(json.dumps([{"method": key, "per_seed": [r["accuracy"]], "seconds": r["seconds"],
                                          "published": f"{REFERENCE[key]:.4f} ({SOURCE})"}
                                         for key, r in results.items()]))
        return 0
    command = "nice -n 10 .venv/bin/python contrib/mas/bench/reproduce.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    lines = ["# MAS: accuracy on real data", "",
             f"Written by `contrib/mas/bench/reproduce.py` on {datetime.date.today().isoformat()}, machine: "
             f"{platform.machine()} CPU, {args.threads} torch thread(s), shared with other jobs "
             f"(Python {platform.python_version()}, torch {torch.__version__}).", "",
             f"Setting: task-incremental Split MNIST (5 experiences of 2 classes, task labels, class ids from 0 in "
             f"each experience), `mt-simple-mlp` 784-400-400 with a 2-unit head per task, no dropout, Adam lr "
             f"1e-3, minibatch 128, {args.epochs} epochs per experience, `mas:lambda_reg={args.lambda_reg:g}` "
             f"(importances on minibatches of 128, summed over experiences), seed {args.seed}. Measured: mean over "
             f"the 5 experiences of the test accuracy after the last one.", "",
             "| run | measured | reference | wall time |", "|---|---|---|---|"]
    for key, r in results.items():
        lines.append(f"| {key} | {r['accuracy']:.4f} | {REFERENCE[key]:.4f} | {r['seconds']:.0f} s |")
    lines += ["", f"Reference: {SOURCE}. Their inputs are padded to 32x32; one seed here.", "",
              f"Command: `{command}`", "", "Accuracy on each experience after the last one:", ""]
    for key, r in results.items():
        lines.append(f"- {key}: {', '.join(f'{a:.4f}' for a in r['per_experience'])}")
    text = "\n".join(lines) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
