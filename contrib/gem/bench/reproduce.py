"""GEM on the GEM paper's Permuted MNIST setting (Lopez-Paz & Ranzato, 2017, "MNIST Permutations"), on real MNIST.

The paper's setting, as in the authors' ``run_experiments.sh`` / ``main.py``: 20 tasks, each MNIST under its own
fixed random pixel permutation; 1000 training samples per task (drawn at random, seeded here); a fully connected
network 784-100-100-10 (ReLU); plain SGD, learning rate 0.1, minibatches of 10, one pass (epoch) over each task;
GEM with 256 memories per task and margin ``memory_strength=0.5``. Evaluation: the whole 10,000-image test set
under each task's permutation, after every task. ACC is the mean over tasks of the final accuracies; BWT the mean
over tasks but the last of (final accuracy - accuracy right after training that task), as in the paper.

Differences from the authors' code, none of them part of the method: inputs are standardised with MNIST's mean and
standard deviation (clkernel-benchmarks' ``permuted-mnist``) instead of scaled to [0, 1]; the permutations, the
1000-sample subsets and the weight initialisation come from other random draws; the memory holds a uniform random
sample of each task's 1000 samples instead of the last 256 seen (the same thing in distribution, since the samples
arrive in random order).

Published value: GEM paper, Figure 1 (MNIST Permutations, ACC bar chart): about 0.83; ContinualAI's
continual-learning-baselines reproduce this setting with the target 0.83 (``strategies/target_results.csv``,
``gem,pmnist,0.83``). The "single" baseline (plain SGD, no memory) is run in the same setting for context.

    .venv/bin/python contrib/gem/bench/reproduce.py                     # GEM and the single baseline, 20 tasks
    .venv/bin/python contrib/gem/bench/reproduce.py --runs gem --tasks 10   # a reduced setting, if time is short

Results go to ``RESULTS.md`` (and ``results.json``) next to this script; with ``--json PATH`` this run's rows go to
PATH as JSON instead (what ``tests/bench/reproduction_table.py`` reads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import clkernel
from clkernel import Experience, Strategy, Stream, iterate_minibatches

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_ROOT = (REPO / ".." / "shared" / "data").resolve()
REFERENCE = {"gem": (0.83, "GEM paper Fig. 1, MNIST Permutations ACC (about 0.83; continual-learning-baselines "
                           "target 0.83)"),
             "single": (None, "GEM paper Fig. 1 plots it far below GEM (no number given in the text)")}


def accuracies(model: torch.nn.Module, stream: Stream) -> list[float]:
    """Accuracy on each experience of ``stream`` (every sample)."""
    model.eval()
    out = []
    with torch.no_grad():
        for exp in stream:
            correct = total = 0
            for x, y, _ in iterate_minibatches(exp.dataset.eval(), 2000, shuffle=False):
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
            out.append(correct / total)
    model.train()
    return out


def subsample(stream: Stream, n: int, generator: torch.Generator) -> Stream:
    """The stream with ``n`` random training samples per experience (same indices and permutations)."""
    return Stream(stream.name, [Experience(exp.index, exp.dataset.subset(
        torch.randperm(len(exp.dataset), generator=generator)[:n]), info=exp.info) for exp in stream])


def run(method: str, tasks: int, samples: int, seed: int, root: str) -> dict[str, Any]:
    benchmark = clkernel.load("benchmark", "permuted-mnist", n_experiences=tasks, dataset_root=root,
                              download=False, seed=seed)
    train_stream = subsample(benchmark.train_stream, samples, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=784, hidden_size=100,
                          hidden_layers=2, drop_rate=0.0)
    plugins = []
    if method == "gem":
        plugins.append(clkernel.load("plugin", "gem", patterns_per_experience=256, memory_strength=0.5, seed=seed))
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins, train_mb_size=10,
                        train_epochs=1, device="cpu", generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    matrix, projected = [], []
    for exp in train_stream:
        strategy.train(exp)
        matrix.append(accuracies(model, benchmark.test_stream))
        if method == "gem":
            projected.append(plugins[0].projections)
        print(f"{method}: task {exp.index}: mean accuracy over tasks {sum(matrix[-1]) / tasks:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    final = matrix[-1]
    acc = sum(final) / tasks
    bwt = sum(final[i] - matrix[i][i] for i in range(tasks - 1)) / (tasks - 1)
    return {"acc": acc, "bwt": bwt, "final": [round(a, 4) for a in final],
            "diagonal": [round(matrix[i][i], 4) for i in range(tasks)],
            "projected_iterations": projected, "seconds": round(time.perf_counter() - start, 1),
            "tasks": tasks, "samples": samples, "seed": seed}


def write_results(results: dict[str, Any]) -> str:
    lines = ["# GEM on Permuted MNIST (real MNIST)", "",
             "Written by `contrib/gem/bench/reproduce.py` (see its docstring for the setting and how it differs "
             "from the authors' code). ACC: mean over tasks of the final test accuracy (10,000 test images per "
             "task); BWT: mean over all tasks but the last of final minus just-trained accuracy.", "",
             "| run | setting | measured ACC | measured BWT | published | wall time | date | machine | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        ref, source = REFERENCE[r["method"]]
        published = f"{ref:.2f} ({source})" if ref is not None else source
        setting = (f"{r['tasks']} permutations, {r['samples']} samples/task, MLP 784-100-100-10, SGD lr 0.1, "
                   f"mb 10, 1 epoch" + (", 256 memories/task, memory_strength 0.5" if r["method"] == "gem" else "")
                   + f", seed {r['seed']}")
        lines.append(f"| {key} | {setting} | {r['acc']:.4f} | {r['bwt']:+.4f} | {published} | {r['seconds']:.0f} s "
                     f"| {r['date']} | {r['machine']} | `{r['command']}` |")
    lines += ["", "Final accuracy per task (task 0 first):", ""]
    lines += [f"- {key}: {', '.join(f'{a:.3f}' for a in r['final'])}" for key, r in results.items()]
    lines += ["", "Accuracy on each task right after training it:", ""]
    lines += [f"- {key}: {', '.join(f'{a:.3f}' for a in r['diagonal'])}" for key, r in results.items()]
    gem_runs = {k: r for k, r in results.items() if r["projected_iterations"]}
    if gem_runs:
        lines += ["", "Iterations (of samples / 10 per task: 100 in the paper's setting) where GEM projected the "
                  "gradient, per task:", ""]
        lines += [f"- {key}: {', '.join(map(str, r['projected_iterations']))}" for key, r in gem_runs.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="gem,single",
                        help="comma-separated among gem, single; empty: only rewrite RESULTS.md from results.json")
    parser.add_argument("--tasks", type=int, default=20, help="permutations (the paper: 20)")
    parser.add_argument("--samples", type=int, default=1000, help="training samples per task (the paper: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=str(DEFAULT_ROOT))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file instead of RESULTS.md")
    args = parser.parse_args()
    methods = [m.strip() for m in args.runs.split(",") if m.strip()]
    if any(m not in REFERENCE for m in methods):
        parser.error(f"--runs: choose among {', '.join(REFERENCE)}")
    if not (Path(args.data_root) / "MNIST" / "raw").is_dir():
        print(f"MNIST not found under {args.data_root} (expected MNIST/raw/): pass --data-root", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    rows = []
    for method in methods:
        out = run(method, args.tasks, args.samples, args.seed, args.data_root)
        key = method if (args.tasks, args.samples) == (20, 1000) else f"{method}-{args.tasks}tasks-{args.samples}"
        root = "" if args.data_root == str(DEFAULT_ROOT) else f" --data-root {shlex.quote(args.data_root)}"
        out.update(method=method, date=datetime.date.today().isoformat(),
                   machine=f"{platform.machine()} CPU, {args.threads} torch thread(s), shared 2-core machine",
                   command=f".venv/bin/python contrib/gem/bench/reproduce.py --runs {method} --tasks {args.tasks} "
                           f"--samples {args.samples} --seed {args.seed} --threads {args.threads}{root}")
        results[key] = out
        print(f"{key}: ACC {out['acc']:.4f}, BWT {out['bwt']:+.4f} in {out['seconds']:.0f} s", flush=True)
        if args.json:  # the rows, for tests/bench/reproduction_table.py, instead of results.json and RESULTS.md
            ref, source = REFERENCE[method]
            rows.append({"method": {"gem": "GEM", "single": "plain SGD (single)"}[method], "per_seed": [out["acc"]],
                         "detail": f"BWT {out['bwt']:+.4f}", "seconds": out["seconds"],
                         "published": source if ref is None else f"{ref:.2f} ({source})"})
            args.json.write_text(json.dumps(rows))
            continue
        path.write_text(json.dumps(results, indent=1) + "\n")
        (HERE / "RESULTS.md").write_text(write_results(results))
    if args.json:
        return 0
    print(write_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
