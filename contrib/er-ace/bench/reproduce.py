"""Reproduce ER-ACE on Split MNIST (class-incremental, online: one epoch) with a 500-sample buffer.

The paper (Caccia et al., 2022) reports ER-ACE on Split CIFAR-10/100 and MiniImageNet, not on MNIST; its settings
need a ResNet-18 and far more CPU than this machine has. This script runs the Split MNIST setting of Mammoth for
experience replay (``utils/best_args.py``, ``seq-mnist`` / ``er`` / buffer 500: SGD without momentum, lr 0.1,
minibatch 10, buffer minibatch 10, one epoch; Mammoth's MNIST MLP 784-100-100-10; classes (0, 1), (2, 3), ... in
order; raw [0, 1] pixels), with ER-ACE, plain ER (clkernel-replay's ``replay``, reservoir policy) and Naive in
the same run. There is no published ER-ACE value for Split MNIST: the reference is ER measured here, against the
paper's claim that ER-ACE improves on ER (shown there on Split CIFAR-10/100 and MiniImageNet).

    CLKERNEL_DATA=/work/shared/data .venv/bin/python contrib/er-ace/bench/reproduce.py [--seeds 0 1]

Writes ``contrib/er-ace/bench/RESULTS.md`` next to this script, or with ``--json PATH`` the rows as JSON to
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
from clkernel_er_ace import ERACE

LABELS = {"er-ace": "ER-ACE (buffer 500)", "er": "ER (replay, reservoir, buffer 500)", "naive": "Naive"}
PUBLISHED = {"er-ace": "none published for Split MNIST (the paper: ER-ACE above ER on Split CIFAR-10/100 and "
                       "MiniImageNet; Caccia et al., 2022, ICLR)", "er": "- (measured reference)", "naive": "-"}


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Undo split-mnist's normalisation: pixels back in [0, 1], as Mammoth feeds them."""
    return x * 0.3081 + 0.1307


def run(method: str, seed: int, root: str) -> tuple[float, float]:
    """Final accuracy of ``method`` (``er-ace``, ``er`` or ``naive``): (mean over the five experiences, whole test stream)."""
    torch.manual_seed(seed)
    bench = clkernel.load("benchmark", "split-mnist", dataset_root=root, download=False, seed=seed,
                          fixed_class_order=list(range(10)), train_transform=to_unit_range,
                          eval_transform=to_unit_range)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=784, hidden_size=100, hidden_layers=2,
                          drop_rate=0.0)
    plugins = [clkernel.load("metric", "accuracy")]
    if method == "er-ace":
        plugins.insert(0, ERACE(mem_size=500, batch_size_mem=10, seed=seed))
    elif method == "er":
        plugins.insert(0, clkernel.load("plugin", "replay", mem_size=500, batch_size_mem=10,
                                        storage_policy="reservoir", seed=seed))
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins,
                                 train_mb_size=10, train_epochs=1, eval_mb_size=1000, device="cpu",
                                 generator=torch.Generator().manual_seed(seed))
    results = clkernel.run(strategy, bench)
    per_exp = [results[clkernel.metric_name("acc", "exp", "eval", "test", exp=e)] for e in range(5)]
    return statistics.mean(per_exp), results["acc_stream/eval/test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-root", default=os.environ.get("CLKERNEL_DATA", "/work/shared/data"))
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file instead of RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, start = {}, time.perf_counter()
    for method in ("er-ace", "er", "naive"):
        t0 = time.perf_counter()
        accs = [run(method, seed, args.data_root) for seed in args.seeds]
        rows[method] = (accs, time.perf_counter() - t0)
        means = [100 * a for a, _ in accs]
        print(f"{method}: mean accuracy over experiences {statistics.mean(means):.2f} "
              f"(seeds {args.seeds}: {', '.join(f'{m:.2f}' for m in means)}), {rows[method][1]:.0f} s", flush=True)
    wall = time.perf_counter() - start

    def fmt(accs: list[tuple[float, float]], k: int) -> str:
        values = [100 * a[k] for a in accs]
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread}"

    command = f"CLKERNEL_DATA={args.data_root} .venv/bin/python contrib/er-ace/bench/reproduce.py --seeds " + \
        " ".join(map(str, args.seeds))
    if args.json:
        args.json.write_text(json.dumps([{"method": LABELS[m], "per_seed": [a for a, _ in accs],
                                          "published": PUBLISHED[m], "seconds": s} for m, (accs, s) in rows.items()]))
        return
    lines = [
        "# ER-ACE on Split MNIST: reproduction", "",
        "Written by `bench/reproduce.py`; see its docstring for the exact setting.", "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other jobs), Python {sys.version.split()[0]}, torch {torch.__version__}",
        f"- total wall time: {wall:.0f} s", "",
        "| method | final accuracy, mean over the 5 experiences (%) | whole test stream (%) | wall time |",
        "|---|---|---|---|",
        *(f"| {label} | {fmt(rows[key][0], 0)} | {fmt(rows[key][0], 1)} | {rows[key][1]:.0f} s |"
          for key, label in LABELS.items()),
        "",
        f"Means +- standard deviation over seeds {args.seeds}. Published: no ER-ACE value on Split MNIST exists; "
        "the paper reports ER-ACE above ER on Split CIFAR-10/100 and MiniImageNet (Caccia et al., 2022, ICLR).",
    ]
    out = Path(__file__).with_name("RESULTS.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
