"""Synaptic Intelligence on Permuted MNIST, the setting of Zenke, Poole & Ganguli (2017), on real MNIST.

Paper setting (``--full``; section 5.1 and the authors' ``ganguli-lab/pathint`` notebook): 10 permuted-MNIST
experiences, MLP 784-2000-2000-10 (ReLU, no dropout), Adam (lr 1e-3, betas 0.9/0.999, not reset between
experiences), minibatch 256, 20 epochs per experience, ``c = si_lambda = 0.1``, ``xi = eps = 0.1``. Reported:
average test accuracy over the 10 experiences after the last one, about 0.97 (the paper's Fig. 4; 97.1% as Papers
with Code lists it), against fine-tuning (``c = 0``), which falls much lower.

The default, reduced setting keeps everything but the number of epochs (``--epochs``, default 1 instead of 20)
and the hidden width (``--hidden``, default 1000 instead of 2000), so that it runs on a loaded 2-core CPU. It runs
SI and, in the same script, the fine-tuning baseline (``--baseline``, the same run with no plugin).

Everything goes through the public API: the ``permuted-mnist`` benchmark, the ``simple-mlp`` model and the ``si``
plugin by name, ``clkernel.Strategy``; the test accuracy is computed here over every test sample.

    .venv/bin/python contrib/si/bench/reproduce.py                  # reduced setting, SI and the baseline
    .venv/bin/python contrib/si/bench/reproduce.py --full           # the paper's setting (hours on a CPU)
"""

from __future__ import annotations

import argparse
import datetime
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
PAPER = 0.971
PAPER_SOURCE = ("Zenke, Poole & Ganguli (2017), Fig. 4, Permuted MNIST, c=0.1 (97.1% average accuracy as listed "
                "by Papers with Code)")


def stream_accuracy(model: torch.nn.Module, stream: Any) -> tuple[float, list[float]]:
    """Mean over experiences of the test accuracy (all experiences have 10,000 samples), and per experience."""
    per_exp = []
    with clkernel.eval_mode(model), torch.no_grad():
        for exp in stream:
            correct = total = 0
            for x, y, t in iterate_minibatches(exp.dataset.eval(), 2048, shuffle=False):
                correct += int((clkernel.model_forward(model, x, t).argmax(1) == y).sum())
                total += len(y)
            per_exp.append(correct / total)
    return sum(per_exp) / len(per_exp), per_exp


def run(args: argparse.Namespace, with_si: bool) -> dict[str, Any]:
    benchmark = clkernel.load("benchmark", "permuted-mnist", n_experiences=args.experiences,
                              dataset_root=str(args.data_root), download=False, seed=args.seed)
    torch.manual_seed(args.seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=784, hidden_size=args.hidden,
                          hidden_layers=2, drop_rate=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    plugins = [clkernel.load("plugin", "si", si_lambda=args.si_lambda, eps=args.eps)] if with_si else []
    strategy = Strategy(model, optimizer, plugins=plugins, train_mb_size=256, train_epochs=args.epochs,
                        eval_mb_size=2048, device="cpu", eval_every=-1,
                        generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    curve = []
    name = "SI" if with_si else "fine-tuning"
    for exp in benchmark.train_stream:
        strategy.train(exp)
        acc, per_exp = stream_accuracy(model, benchmark.test_stream[:exp.index + 1])
        curve.append(round(acc, 4))
        print(f"{name}: after experience {exp.index}: mean accuracy over the experiences so far {acc:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return {"accuracy": acc, "per_experience": per_exp, "curve": curve, "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the paper's setting: 20 epochs, 2000 hidden units")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--experiences", type=int, default=10)
    parser.add_argument("--si-lambda", type=float, default=0.1)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the fine-tuning baseline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args()
    if args.full:
        args.epochs, args.hidden, args.experiences = 20, 2000, 10
    if not (args.data_root / "MNIST" / "raw").is_dir():
        print(f"MNIST not found under {args.data_root} (expected MNIST/raw/): pass --data-root", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = {"SI": run(args, True)}
    if args.baseline:
        results["fine-tuning"] = run(args, False)
    command = "nice -n 10 .venv/bin/python contrib/si/bench/reproduce.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    full = args.epochs == 20 and args.hidden == 2000 and args.experiences == 10
    setting = (f"Permuted MNIST, {args.experiences} experiences, MLP 784-{args.hidden}-{args.hidden}-10 (ReLU, no "
               f"dropout), Adam lr 1e-3, minibatch 256, {args.epochs} epoch(s) per experience, "
               f"si_lambda (c) {args.si_lambda:g}, eps (xi) {args.eps:g}, seed {args.seed}")
    reduced = "" if full else (
        f"Reduced from the paper's setting: {args.epochs} epoch(s) per experience instead of 20"
        + ("" if args.hidden == 2000 else f", {args.hidden} hidden units per layer instead of 2000")
        + ("" if args.experiences == 10 else f", {args.experiences} experiences instead of 10")
        + " (CPU time on a loaded 2-core machine). `--full` runs the paper's setting.")
    lines = ["# SI: accuracy on real data", "",
             f"Written by `contrib/si/bench/reproduce.py` on {datetime.date.today().isoformat()}, machine: "
             f"{platform.machine()} CPU, {args.threads} torch threads, shared with other jobs "
             f"(Python {platform.python_version()}, torch {torch.__version__}).", "",
             f"Setting: {setting}.", ""]
    if reduced:
        lines += [reduced, ""]
    lines += ["Measured: mean over the experiences of the test accuracy after training on the last one.", "",
              "| run | measured | paper | wall time |", "|---|---|---|---|",
              f"| SI (c={args.si_lambda:g}) | {results['SI']['accuracy']:.4f} | {PAPER:.3f} | "
              f"{results['SI']['seconds']:.0f} s |"]
    if "fine-tuning" in results:
        lines.append(f"| fine-tuning (c=0, no plugin) | {results['fine-tuning']['accuracy']:.4f} | much lower "
                     f"(Fig. 4) | {results['fine-tuning']['seconds']:.0f} s |")
    lines += ["", f"Paper value: {PAPER_SOURCE}.", "", f"Command: `{command}`", "",
              "Mean accuracy over the experiences seen so far, after each experience:", ""]
    for key, r in results.items():
        lines.append(f"- {key}: {', '.join(f'{a:.3f}' for a in r['curve'])}")
    lines += ["", "Accuracy on each experience after the last one:", ""]
    for key, r in results.items():
        lines.append(f"- {key}: {', '.join(f'{a:.3f}' for a in r['per_experience'])}")
    text = "\n".join(lines) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
