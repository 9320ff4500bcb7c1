"""BiC on Split MNIST (class-incremental, five experiences of two classes) with a 500-sample memory.

No published Split MNIST figure for BiC was found: the paper (Wu et al., 2019) reports CIFAR-100, ImageNet-1000 and
Celeb-10000; PyCIL and FACIL run CIFAR-100 / ImageNet; Mammoth's ``bic.yaml`` has seq-cifar100 only; Avalanche's
continual-learning-baselines has no BiC experiment. The run therefore uses the Split MNIST setting of Mammoth's
best arguments for rehearsal methods on seq-mnist (the one contrib/der reproduces): Mammoth's MNIST MLP
(784-100-100-10, ReLU), raw [0, 1] pixels, classes (0, 1), (2, 3), ... in order, SGD without momentum at lr 0.03,
minibatches of 10 plus 10 replayed, one epoch per experience, a 500-sample memory. Experience Replay with the same
memory (class-balanced, 500 samples, all replayed) and Naive fine-tuning run alongside, as the references measured
in the same conditions; the Naive figure published for this setting is 19.66 % (Buzzega et al., 2020, Table 2).

BiC's own settings are the paper's: 10 % of the memory held out for stage 2 (50 samples, class-balanced; 450
exemplars), T = 2, lambda = n / (n + m); stage 2 as Avalanche's ``BiCPlugin``: 200 epochs of SGD (lr 0.1,
momentum 0.9, divided by 10 at epochs 50, 100, 150). Exemplars are class-balanced random samples (the paper uses
herding; ``--policy herding`` runs that).

    CLKERNEL_DATA=/work/shared/data .venv/bin/python contrib/bic/bench/reproduce.py [--seeds 0 1 2]

Writes ``contrib/bic/bench/RESULTS.md`` next to this script, or with ``--json PATH`` the rows as JSON to
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
from clkernel_bic import BiC

MEMORY = 500
PUBLISHED = {"bic": "none published for Split MNIST (see below)", "replay": "- (measured reference)",
             "naive": "19.66 (SGD; Buzzega et al., 2020, Table 2)"}


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Undo split-mnist's normalisation: pixels back in [0, 1], as Mammoth feeds them."""
    return x * 0.3081 + 0.1307


def run(method: str, seed: int, root: str, policy: str) -> tuple[float, float]:
    """Final accuracy of ``method`` (``bic``, ``replay`` or ``naive``): (mean over the five experiences, whole
    test stream)."""
    torch.manual_seed(seed)
    bench = clkernel.load("benchmark", "split-mnist", dataset_root=root, download=False, seed=seed,
                          fixed_class_order=list(range(10)), train_transform=to_unit_range,
                          eval_transform=to_unit_range)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=784, hidden_size=100, hidden_layers=2,
                          drop_rate=0.0)
    plugins = [clkernel.load("metric", "accuracy")]
    if method == "bic":
        plugins.insert(0, BiC(mem_size=MEMORY, val_fraction=0.1, batch_size_mem=10, storage_policy=policy,
                              seed=seed))
    elif method == "replay":
        plugins.insert(0, clkernel.load("plugin", "replay", mem_size=MEMORY, batch_size_mem=10,
                                        storage_policy="class_balanced", seed=seed))
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.03), plugins=plugins,
                                 train_mb_size=10, train_epochs=1, eval_mb_size=1000, device="cpu",
                                 generator=torch.Generator().manual_seed(seed))
    results = clkernel.run(strategy, bench)
    per_exp = [results[clkernel.metric_name("acc", "exp", "eval", "test", exp=e)] for e in range(5)]
    return statistics.mean(per_exp), results["acc_stream/eval/test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policy", default="class_balanced", help="BiC's exemplar storage policy")
    parser.add_argument("--data-root", default=os.environ.get("CLKERNEL_DATA", "/work/shared/data"))
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file instead of RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, start = {}, time.perf_counter()
    for method in ("bic", "replay", "naive"):
        t0 = time.perf_counter()
        accs = [run(method, seed, args.data_root, args.policy) for seed in args.seeds]
        rows[method] = (accs, time.perf_counter() - t0)
        means = [100 * a for a, _ in accs]
        print(f"{method}: mean accuracy over experiences {statistics.mean(means):.2f} "
              f"(seeds {args.seeds}: {', '.join(f'{m:.2f}' for m in means)}), {rows[method][1]:.0f} s", flush=True)
    wall = time.perf_counter() - start

    def fmt(accs: list[tuple[float, float]], k: int) -> str:
        values = [100 * a[k] for a in accs]
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread}"

    command = f"CLKERNEL_DATA={args.data_root} .venv/bin/python contrib/bic/bench/reproduce.py --seeds " + \
        " ".join(map(str, args.seeds)) + ("" if args.policy == "class_balanced" else f" --policy {args.policy}")
    labels = {"bic": f"BiC (memory 500: 450 exemplars, {args.policy}, + 50 held out; T 2)",
              "replay": "Experience Replay (memory 500, class-balanced)", "naive": "Naive"}
    if args.json:
        args.json.write_text(json.dumps([{"method": labels[m], "per_seed": [a for a, _ in accs],
                                          "published": PUBLISHED[m], "seconds": s} for m, (accs, s) in rows.items()]))
        return
    lines = [
        "# BiC on Split MNIST", "",
        "Written by `bench/reproduce.py`; its docstring gives the exact setting.", "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other jobs), Python {sys.version.split()[0]}, torch {torch.__version__}",
        f"- total wall time: {wall:.0f} s", "",
        "| method | final accuracy, mean over the 5 experiences (%) | whole test stream (%) | published (%) | "
        "wall time |",
        "|---|---|---|---|---|",
        *(f"| {labels[m]} | {fmt(accs, 0)} | {fmt(accs, 1)} | {PUBLISHED[m]} | {seconds:.0f} s |"
          for m, (accs, seconds) in rows.items()), "",
        (f"Means +- standard deviation over seeds {args.seeds}." if len(args.seeds) > 1 else
         f"One run per method, seed {args.seeds[0]} (the script's default runs seeds 0, 1 and 2; on this loaded "
         f"machine only one was run)."), "",
        "No published BiC accuracy on Split MNIST was found (the paper: CIFAR-100, ImageNet-1000, Celeb-10000; "
        "PyCIL, FACIL and Mammoth's configurations: CIFAR-100 / ImageNet; Avalanche's continual-learning-baselines: "
        "no BiC). The comparison is therefore with Experience Replay and Naive measured in the same run and setting.",
    ]
    out = Path(__file__).with_name("RESULTS.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
