"""The reproduction table: every configuration on the MNIST family that the first-party and contrib packages reproduce,
run by one script into one page, ``docs/results.md``.

Each configuration is its package's own script (``plugins/ewc/bench/bench_literature_accuracy.py``,
``contrib/NAME/bench/reproduce.py``) run as a subprocess from the repository root with the command line of its
``RESULTS.md`` row (the data root given as ``--data-root``), plus ``--json FILE``, with which the script writes its
rows (method, accuracy per seed, published value and source, seconds) to FILE instead of its RESULTS.md. The table
gives, for every row: method, benchmark, configuration, the command (exactly what ran, less ``--json FILE``), the
measured value (mean over seeds, +- their standard deviation when several), the published value with its source, and
the wall time; then the date, the machine and the total wall time.

``--quick`` runs every command at one epoch (where the script has the option), one seed, the fewest tasks and
samples its options allow, on a tiny copy of MNIST (the first 1,000 training and 500 test images, made in a
temporary folder from the real files); the configurations of one script that differ only in ``--runs`` run as one
command, and every command runs in this process, one after the other (the script as ``__main__`` with its command
line: no interpreter start or torch import per command; so no ``--jobs``). A smoke test of the commands,
not the reproduction: the page says QUICK on every value. The full table took 40 minutes with ``--jobs 2`` on a
2-core CPU (2026-12-01: 2,392 s; the configurations' own times add up to 80 minutes).

    .venv/bin/python tests/bench/reproduction_table.py --jobs 2              # the full table -> docs/results.md
    .venv/bin/python tests/bench/reproduction_table.py --quick --output /tmp/results.md
    .venv/bin/python tests/bench/reproduction_table.py --only der gem --output /tmp/results.md

Real data: ``--data-root``, default ``$CLKERNEL_DATA`` or ``<repo>/../shared/data`` (MNIST in torchvision's layout).
Exit status: 0 when every configuration ran, 1 when one failed (its row says so and its output's tail is printed), 2
for bad options or missing data.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import runpy
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attrs import frozen

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path(os.environ.get("CLKERNEL_DATA") or REPO / ".." / "shared" / "data")
QUICK_SAMPLES = {"train": 1000, "t10k": 500}  # the tiny MNIST of --quick: the first images of each split

__all__ = ["CONFIGURATIONS", "Configuration", "main", "tiny_mnist"]


@frozen
class Configuration:
    """One command of one package's reproduction script, and what its rows measure."""

    name: str
    script: str  # relative to the repository root
    full: tuple[str, ...]  # the arguments of its RESULTS.md row (the data root is added)
    quick: tuple[str, ...]  # the same at one epoch, one seed, the fewest tasks and samples the script allows
    benchmark: str
    configuration: str
    metric: str

    @property
    def package(self) -> str:
        """The package's folder name: ``ewc`` for plugins/ewc, ``gem`` for contrib/gem."""
        return Path(self.script).parts[1]


EWC = "plugins/ewc/bench/bench_literature_accuracy.py"
PMNIST_EWC = "10 exp., MLP 784-512-10 no dropout, SGD lr 0.001, 10 epochs, mb 256, seed 0"
SMNIST_REPLAY = "class-IL, 5 exp., MLP 784-512-10 dropout 0.5, SGD lr 0.01 mom. 0.9, 1 epoch, mb 32, seed 0"
STREAM = "accuracy on the whole test stream after the last experience"
MEAN5 = "final accuracy, mean over the 5 experiences"
MAMMOTH = "class-IL, classes in order, MLP 784-100-100-10, [0, 1] pixels, SGD lr {lr} no momentum, mb 10 + 10, 1 epoch"
VDV = "class-IL, classes in order, MLP 784-400-400-10, [0, 1] pixels, Adam lr 0.001, mb 128, 20 epochs, 2000 exemplars"


def _contrib(name: str) -> str:
    return f"contrib/{name}/bench/reproduce.py"


CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration("ewc-pmnist", EWC, ("--runs", "ewc-pmnist", "--threads", "1"),
                  ("--runs", "ewc-pmnist", "--threads", "1", "--epochs", "1"), "Permuted MNIST",
                  f"{PMNIST_EWC}; ewc_lambda 1, separate", STREAM),
    Configuration("naive-pmnist", EWC, ("--runs", "naive-pmnist", "--threads", "1"),
                  ("--runs", "naive-pmnist", "--threads", "1", "--epochs", "1"), "Permuted MNIST", PMNIST_EWC, STREAM),
    Configuration("ewc10000-pmnist", EWC, ("--runs", "ewc10000-pmnist", "--threads", "1"),
                  ("--runs", "ewc10000-pmnist", "--threads", "1", "--epochs", "1"), "Permuted MNIST",
                  f"{PMNIST_EWC}; ewc_lambda 10000, separate", STREAM),
    Configuration("replay-smnist", EWC, ("--runs", "replay-smnist", "--threads", "1"),
                  ("--runs", "replay-smnist", "--threads", "1", "--epochs", "1"), "Split MNIST",
                  f"{SMNIST_REPLAY}; mem_size 500", STREAM),
    Configuration("naive-smnist", EWC, ("--runs", "naive-smnist", "--threads", "1"),
                  ("--runs", "naive-smnist", "--threads", "1", "--epochs", "1"), "Split MNIST", SMNIST_REPLAY,
                  STREAM),
    Configuration("agem", _contrib("agem"), ("--runs", "agem", "--tasks", "3", "--samples", "55000", "--seed", "0",
                                             "--threads", "1"),
                  ("--runs", "agem", "--tasks", "2", "--samples", "100", "--seed", "0", "--threads", "1"),
                  "Permuted MNIST", "3 tasks (REDUCED from the paper's 17) x 55,000 samples, MLP 784-256-256-10, SGD "
                  "lr 0.1, mb 10, 1 epoch, 250 memories/task, seed 0", "A_T: final accuracy, mean over the tasks"),
    Configuration("agem-single", _contrib("agem"), ("--runs", "single", "--tasks", "3", "--samples", "55000", "--seed",
                                                    "0", "--threads", "1"),
                  ("--runs", "single", "--tasks", "2", "--samples", "100", "--seed", "0", "--threads", "1"),
                  "Permuted MNIST", "as A-GEM's, without memory", "A_T: final accuracy, mean over the tasks"),
    Configuration("gem", _contrib("gem"), ("--runs", "gem", "--tasks", "20", "--samples", "1000", "--seed", "0",
                                           "--threads", "1"),
                  ("--runs", "gem", "--tasks", "2", "--samples", "100", "--seed", "0", "--threads", "1"),
                  "Permuted MNIST", "20 tasks x 1,000 samples, MLP 784-100-100-10, SGD lr 0.1, mb 10, 1 epoch, 256 "
                  "memories/task, memory_strength 0.5, seed 0", "ACC: final accuracy, mean over the tasks"),
    Configuration("gem-single", _contrib("gem"), ("--runs", "single", "--tasks", "20", "--samples", "1000", "--seed",
                                                  "0", "--threads", "1"),
                  ("--runs", "single", "--tasks", "2", "--samples", "100", "--seed", "0", "--threads", "1"),
                  "Permuted MNIST", "as GEM's, without memory", "ACC: final accuracy, mean over the tasks"),
    Configuration("si", _contrib("si"), ("--hidden", "500", "--threads", "1"),
                  ("--hidden", "500", "--threads", "1", "--epochs", "1", "--experiences", "2"), "Permuted MNIST",
                  "10 exp., MLP 784-500-500-10, Adam lr 1e-3, mb 256, 1 epoch (REDUCED from the paper's 2000 units, "
                  "20 epochs), c 0.1, xi 0.1, seed 0", "final accuracy, mean over the experiences"),
    Configuration("si-c2", _contrib("si"), ("--hidden", "500", "--threads", "1", "--si-lambda", "2", "--no-baseline"),
                  ("--hidden", "500", "--threads", "1", "--si-lambda", "2", "--no-baseline", "--epochs", "1",
                   "--experiences", "2"), "Permuted MNIST", "as above, c 2 (for the 20x shorter path)",
                  "final accuracy, mean over the experiences"),
    Configuration("lfl", _contrib("lfl"), (), ("--epochs", "1"), "Permuted MNIST",
                  "4 exp., MLP 784-256-10, SGD lr 0.01, mb 128, 3 epochs, lambda_e 1e-4, seed 0",
                  "final accuracy, mean over the experiences"),
    Configuration("der", _contrib("der"), ("--seeds", "0", "1", "2"), ("--seeds", "0"), "Split MNIST",
                  MAMMOTH.format(lr=0.03) + "; buffer 500, alpha 1, beta 0.5", MEAN5),
    Configuration("er-ace", _contrib("er-ace"), ("--seeds", "0", "1"), ("--seeds", "0"), "Split MNIST",
                  MAMMOTH.format(lr=0.1) + "; buffer 500", MEAN5),
    Configuration("rar", _contrib("rar"), ("--repeats", "5", "--seeds", "0"), ("--repeats", "5", "--seeds", "0"),
                  "Split MNIST", MAMMOTH.format(lr=0.1) + "; buffer 500 (REDUCED from the paper's CIFAR setting)",
                  MEAN5),
    Configuration("bic", _contrib("bic"), ("--seeds", "0"), ("--seeds", "0"), "Split MNIST",
                  MAMMOTH.format(lr=0.03) + "; memory 500", MEAN5),
    Configuration("lucir", _contrib("lucir"), ("--seeds", "0"), ("--seeds", "0"), "Split MNIST",
                  MAMMOTH.format(lr=0.03) + ", cosine classifier; memory 500", MEAN5),
    Configuration("icarl", _contrib("icarl"), ("--seeds", "0", "1", "2", "--epochs", "20", "--temperature", "2.0"),
                  ("--seeds", "0", "--epochs", "1", "--temperature", "2.0"), "Split MNIST", VDV, MEAN5),
    Configuration("il2m", _contrib("il2m"), ("--seeds", "0", "--epochs", "20"), ("--seeds", "0", "--epochs", "1"),
                  "Split MNIST", VDV, MEAN5),
    Configuration("wa", _contrib("wa"), ("--seeds", "0", "--epochs", "20"), ("--seeds", "0", "--epochs", "1"),
                  "Split MNIST", VDV, MEAN5),
    Configuration("gss", _contrib("gss"), ("--seeds", "0", "1", "2", "--per-experience", "1000"),
                  ("--seeds", "0", "--per-experience", "20"), "Split MNIST (online)",
                  "class-IL, 1,000 samples/exp. in minibatches of 10, 3 steps each, MLP 784-100-100-10, SGD lr 0.05; "
                  "buffer 300", MEAN5),
    Configuration("mir", _contrib("mir"), ("--seeds", "0", "1", "2", "--per-experience", "1000"),
                  ("--seeds", "0", "--per-experience", "20"), "Split MNIST (online)",
                  "class-IL, 1,000 samples/exp. in mini-experiences of 10, MLP 784-400-10 dropout 0.5, SGD lr 0.05; "
                  "buffer 500, 50 candidates", STREAM),
    Configuration("cope", _contrib("cope"), ("--seeds", "0"), ("--seeds", "0", "--per-experience", "20"),
                  "Split MNIST (online)", "class-IL, all samples in mini-experiences of 10, MLP 784-400-400-32, SGD "
                  "lr 0.01; buffer 2000", STREAM),
    Configuration("mas", _contrib("mas"), (), ("--epochs", "1"), "Split MNIST (task-IL)",
                  "5 exp. with task labels, multi-head MLP 784-400-400, Adam lr 1e-3, mb 128, 4 epochs; lambda_reg 1, "
                  "seed 0", "final accuracy, mean over the 5 experiences"),
    Configuration("rwalk", _contrib("rwalk"), (), ("--epochs", "1"), "Split MNIST (task-IL)",
                  "5 exp. with task labels, multi-head MLP 784-256-256, Adam lr 1e-3, mb 64, 10 epochs; ewc_lambda "
                  "0.1, alpha 0.9, delta_t 10, seed 0", "final accuracy, mean over the 5 experiences"),
)


# Seconds each configuration took in the full run of 2026-12-01 (all its rows, baselines included; --jobs 2 on
# the 2-core machine): the full run starts the longest first, so that with --jobs the last to start is a short one.
EXPECTED_SECONDS = {
    "icarl": 1230, "wa": 480, "il2m": 361, "ewc10000-pmnist": 337, "ewc-pmnist": 321, "naive-pmnist": 268,
    "agem": 178, "si": 173, "rwalk": 160, "rar": 135, "der": 133, "si-c2": 125, "gem": 125, "cope": 101, "lfl": 96,
    "lucir": 90, "er-ace": 81, "gss": 80, "mas": 75, "mir": 48, "bic": 40, "gem-single": 37, "agem-single": 33,
    "replay-smnist": 19, "naive-smnist": 14,
}


def tiny_mnist(source: Path, target: Path) -> Path:
    """A copy of MNIST under ``target`` (torchvision's layout, uncompressed IDX files) holding only the first
    ``QUICK_SAMPLES`` images of each split; returns ``target``. ``source`` holds ``MNIST/raw/`` as torchvision's."""
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in QUICK_SAMPLES.items():
        for kind, header, size in (("images-idx3", 16, 28 * 28), ("labels-idx1", 8, 1)):
            name = f"{split}-{kind}-ubyte"
            data = (source / "MNIST" / "raw" / name).read_bytes()
            # IDX: a 4-byte magic number, then the big-endian 4-byte sizes of each dimension, then the values.
            (raw / name).write_bytes(data[:4] + n.to_bytes(4, "big") + data[8:header] + data[header:header + n * size])
    return target


def command(config: Configuration, quick: bool, data_root: str) -> list[str]:
    """The command line of ``config``, run from the repository root (``--json FILE`` is added to run it)."""
    python = Path(sys.executable)
    shown = os.path.relpath(python, REPO) if python.is_relative_to(REPO) else str(python)
    return [shown, config.script, *(config.quick if quick else config.full), "--data-root", data_root]


def merge_runs(commands: list[list[str]]) -> list[list[str]]:
    """``commands`` where those that differ only in the value of ``--runs`` become one, whose ``--runs`` lists
    theirs in order (the script then writes their rows in that order)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    keys = []
    for argv in commands:
        at = argv.index("--runs") + 1 if "--runs" in argv else None
        key = tuple(argv) if at is None else (*argv[:at], "", *argv[at + 1:])
        keys.append((key, at))
        if at is not None:
            groups.setdefault(key, []).append(argv[at])
    return [list(key) if at is None else [*key[:at], ",".join(groups[key]), *key[at + 1:]] for key, at in keys]


def run(argv: list[str], out: Path, here: bool = False) -> dict[str, Any]:
    """Run ``argv`` with ``--json out`` and return its rows, exit status, seconds and output: as a subprocess, or
    with ``here`` in this process (the script run as ``__main__`` with that command line, from the repository
    root), which spares an interpreter start and torch's import per command."""
    start = time.perf_counter()
    if here:
        code, output = _run_here([argv[1], *argv[2:], "--json", str(out)])
    else:
        proc = subprocess.run([*argv, "--json", str(out)], cwd=REPO, capture_output=True, text=True)
        code, output = proc.returncode, proc.stdout + proc.stderr
    seconds = time.perf_counter() - start
    rows = json.loads(out.read_text()) if code == 0 and out.exists() else []
    return {"rows": rows, "returncode": code, "seconds": seconds, "output": output}


def _run_here(argv: list[str]) -> tuple[int, str]:
    saved, cwd, output = sys.argv, os.getcwd(), io.StringIO()
    code = 0
    try:
        sys.argv = argv
        os.chdir(REPO)
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except Exception:  # noqa: BLE001 - reported as the command's failure, with its traceback
        code = 1
        output.write(traceback.format_exc())
    finally:
        sys.argv = saved
        os.chdir(cwd)
    return code, output.getvalue()


def machine() -> str:
    """CPU model, cores, Python and torch versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    return (f"{cpu}, {os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def measured(row: dict[str, Any], quick: bool) -> str:
    """``row``'s value as a percentage: the mean over seeds, +- their standard deviation when several."""
    values = [100 * v for v in row["per_seed"]]
    text = f"{statistics.mean(values):.2f}"
    if len(values) > 1:
        text += f" +- {statistics.stdev(values):.2f} ({len(values)} seeds)"
    if row.get("detail"):
        text += f"; {row['detail']}"
    return f"QUICK {text}" if quick else text


def render(results: list[tuple[Configuration, list[str], dict[str, Any]]], quick: bool, wall: float) -> str:
    """The Markdown page."""
    lines = ["# Reproduction table: the MNIST family", ""]
    if quick:
        lines += ["**QUICK run: every command at one epoch, one seed, the fewest tasks and samples, on the first 1,000 "
                  "training and 500 test images of MNIST. A smoke test of the commands, NOT the reproduction: the "
                  "values say nothing of the methods.**", ""]
    lines += [
        f"Written by `tests/bench/reproduction_table.py{' --quick' if quick else ''}` on "
        f"{datetime.date.today().isoformat()}; machine: {machine()}; total wall time {wall:.0f} s.", "",
        "Each command ran from the repository root, as a subprocess, with `--json FILE` added (with it the script "
        "writes its rows there instead of its RESULTS.md; the values do not depend on it). Measured: accuracy in "
        "percent as the metric column says, the mean over the seeds of the command +- their standard deviation "
        "when several. Published: the value and its source, or why there is none; each package's "
        "`bench/RESULTS.md` and its script's docstring give the setting in full and how it differs from the "
        "source's. Wall time: the script's own timing of that method (all seeds), on a machine other jobs kept "
        "busy.", "",
        f"| method | benchmark | configuration{' (of the full run)' if quick else ''} | metric | measured (%) | "
        "published (source) | wall time | command |",
        "|---|---|---|---|---|---|---|---|"]
    for config, argv, result in results:
        cmd = f"`{shlex.join(argv)}`"
        if result["returncode"] != 0 or not result["rows"]:
            lines.append(f"| {config.name} | {config.benchmark} | {config.configuration} | {config.metric} | "
                         f"FAILED (exit status {result['returncode']}) | - | {result['seconds']:.0f} s | {cmd} |")
            continue
        for row in result["rows"]:
            lines.append(f"| {row['method']} | {config.benchmark} | {config.configuration} | {config.metric} | "
                         f"{measured(row, quick)} | {row['published']} | {row['seconds']:.0f} s | {cmd} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="every command at one epoch, one seed, on a tiny MNIST: a smoke test, not the table")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="configurations to run, by name or package (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="configurations run in parallel (default 1)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results.md", help="the Markdown page")
    parser.add_argument("--json", type=Path, help="also write every row, machine-readable, to this file")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT,
                        help="the folder holding MNIST/raw/ (default: $CLKERNEL_DATA or <repo>/../shared/data)")
    args = parser.parse_args(argv)
    names = {c.name for c in CONFIGURATIONS} | {c.package for c in CONFIGURATIONS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown or args.jobs < 1 or (args.quick and args.jobs > 1):
        what = (f"--only: unknown {', '.join(unknown)} (names: {', '.join(c.name for c in CONFIGURATIONS)})"
                if unknown else f"--jobs must be at least 1, got {args.jobs}" if args.jobs < 1 else
                "--jobs does not go with --quick, whose commands run one after the other in this process")
        print(f"reproduction_table: {what}", file=sys.stderr)
        return 2
    if not (args.data_root / "MNIST" / "raw").is_dir():
        print(f"reproduction_table: MNIST not found under {args.data_root} (expected MNIST/raw/): pass --data-root",
              file=sys.stderr)
        return 2
    chosen = [c for c in CONFIGURATIONS if not args.only or {c.name, c.package} & set(args.only)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reproduction-table-") as tmp:
        root = tiny_mnist(args.data_root, Path(tmp) / "data") if args.quick else args.data_root.resolve()
        shown_root = os.path.relpath(root, REPO) if root == DEFAULT_ROOT.resolve() else str(root)
        commands = [command(c, args.quick, shown_root) for c in chosen]
        if args.quick:
            commands = merge_runs(commands)
        # Configurations with the same command run once, and its rows go to them in order, one each.
        distinct = list(dict.fromkeys(map(tuple, commands)))

        def one(i: int) -> dict[str, Any]:
            result = run(list(distinct[i]), Path(tmp) / f"{i}.json", here=args.quick)
            names = ", ".join(c.name for c, cmd in zip(chosen, commands) if tuple(cmd) == distinct[i])
            status = "ok" if result["returncode"] == 0 else f"FAILED, exit status {result['returncode']}"
            print(f"{names}: {status} in {result['seconds']:.0f} s", flush=True)
            return result

        def expected(i: int) -> int:
            return sum(EXPECTED_SECONDS.get(c.name, 0) for c, cmd in zip(chosen, commands) if tuple(cmd) == distinct[i])

        order = sorted(range(len(distinct)), key=expected, reverse=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            by_command = dict(zip([distinct[i] for i in order], pool.map(one, order)))
    wall = time.perf_counter() - start
    results = []
    for config, cmd in zip(chosen, commands):
        result = by_command[tuple(cmd)]
        sharing = [c for c, other in zip(chosen, commands) if other == cmd]
        if len(sharing) > 1:
            rows = result["rows"]
            result = {**result, "rows": rows[sharing.index(config):][:1] if len(rows) == len(sharing) else []}
        results.append(result)
    failed = [(c, r) for c, r in zip(chosen, results) if r["returncode"] != 0 or not r["rows"]]
    for config, result in failed:
        print(f"--- {config.name} failed; the end of its output:\n{result['output'][-3000:]}", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(list(zip(chosen, commands, results)), args.quick, wall))
    if args.json:
        args.json.write_text(json.dumps([
            {"configuration": c.name, "package": c.package, "benchmark": c.benchmark, "setting": c.configuration,
             "metric": c.metric, "command": shlex.join(cmd), "returncode": r["returncode"], "seconds": r["seconds"],
             "quick": args.quick, "rows": r["rows"]} for c, cmd, r in zip(chosen, commands, results)], indent=1))
    print(f"wrote {args.output} ({len(chosen)} configurations, {wall:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
