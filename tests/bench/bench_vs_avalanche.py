"""clkernel side by side with Avalanche and a plain PyTorch loop, on the same work, as whole processes.

Rows (each implementation does exactly the same work: same data, model, optimizer, minibatches, epochs, and an
evaluation of the whole test stream after each training experience, with accuracy and loss per epoch,
experience and stream):

- naive / replay / ewc: 60,000 in-memory random 1x28x28 samples (10,000 test), 10 classes in 5
  class-incremental experiences of 2, MLP 784-512-10 (Avalanche's SimpleMLP without dropout), SGD lr 0.01,
  minibatch 128, 1 epoch; Replay keeps 500 samples, EWC has lambda 0.4 (separate importances).
- gdumb: real Split MNIST (``../shared/data``, else random data of the same shape), MLP 784-400-400-10,
  GDumb with a 4,400-sample memory, 10 epochs, minibatch 16, SGD lr 0.01.

Each run is its own process (``--child``), measured by this script: training and evaluation time (printed by
the child), whole-process wall time (from spawn to exit: interpreter, imports, data, work) and peak RSS
(the child's own VmHWM), each also as CPU time (the process's user + system time, which leaves out time
slicing with other jobs; on a shared machine whose cores share caches and memory bandwidth it still grows with
their load). Runs are interleaved (plain, clkernel, Avalanche, plain, ...) and the medians of ``--repeats``
are printed with the ratios: clkernel / plain for train, eval, train + eval and whole process; Avalanche /
clkernel for train + eval.

Avalanche is installed by this script into its own virtual environment (``--avalanche-venv``, default
``/tmp/clkernel-bench/avalanche``: ``avalanche-lib==0.6.0`` with this interpreter's torch version) the first
time; ``--no-avalanche`` skips it.

    .venv/bin/python tests/bench/bench_vs_avalanche.py [--rows naive,replay,ewc,gdumb] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CLKERNEL_DATA", ROOT.parent / "shared" / "data"))
ROWS = {
    "naive": dict(hidden=(512,), epochs=1, mb=128, eval_mb=128, lr=0.01),
    "replay": dict(hidden=(512,), epochs=1, mb=128, eval_mb=128, lr=0.01, mem_size=500),
    "ewc": dict(hidden=(512,), epochs=1, mb=128, eval_mb=128, lr=0.01, ewc_lambda=0.4),
    "gdumb": dict(hidden=(400, 400), epochs=10, mb=16, eval_mb=128, lr=0.01, mem_size=4400),
}
N_EXP = 5


# ---------------------------------------------------------------------- data and model (every child)

def load_data(path: str):
    import torch

    return torch.load(path, weights_only=True)


def make_model(hidden):
    import torch

    layers, width = [torch.nn.Flatten()], 784
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def experience_indices(y, exp: int):
    import torch

    return torch.isin(y, torch.tensor([2 * exp, 2 * exp + 1])).nonzero().flatten()


# ---------------------------------------------------------------------- the plain loop

def child_plain(row: str, data, seed: int) -> tuple[float, float, float, float]:
    """Naive, Replay, EWC and GDumb by hand, with the metrics the libraries compute (accuracy and loss per
    epoch, per evaluated experience and per stream)."""
    import torch

    cfg = ROWS[row]
    train_x, train_y, test_x, test_y = data["train_x"], data["train_y"], data["test_x"], data["test_y"]
    torch.manual_seed(seed)
    model = make_model(cfg["hidden"])
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(seed)
    mem_x = mem_y = None
    seen = 0
    importances: list[tuple[dict, dict]] = []
    train_time = eval_time = train_cpu = eval_cpu = 0.0
    for exp in range(N_EXP):
        start, cpu = time.perf_counter(), time.process_time()
        idx = experience_indices(train_y, exp)
        xe, ye = train_x[idx], train_y[idx]
        if row == "gdumb":  # class-balanced memory filled greedily, then the model reset and trained on it
            if mem_x is None:  # preallocated: a sample is written in place, never concatenated
                mem_x, mem_y = xe.new_empty((cfg["mem_size"], *xe.shape[1:])), ye.new_empty(cfg["mem_size"])
                counts = [0] * 10
            for i, label in enumerate(ye.tolist()):
                if seen < cfg["mem_size"]:
                    j = seen
                    seen += 1
                elif counts[label] < cfg["mem_size"] // (sum(c > 0 for c in counts) + (counts[label] == 0)):
                    big = max(range(10), key=counts.__getitem__)  # the largest class gives up its last sample
                    j = int((mem_y == big).nonzero()[-1])
                    counts[big] -= 1
                else:
                    continue
                mem_x[j], mem_y[j] = xe[i], label
                counts[label] += 1
            torch.manual_seed(seed)
            model = make_model(cfg["hidden"])
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
            xe, ye = mem_x[:seen], mem_y[:seen]
        model.train()
        for _ in range(cfg["epochs"]):
            correct, loss_sum, n = torch.zeros((), dtype=torch.long), torch.zeros(()), 0
            perm = torch.randperm(len(ye), generator=g)
            for s in range(0, len(ye), cfg["mb"]):
                b = perm[s:s + cfg["mb"]]
                x, y = xe.index_select(0, b), ye.index_select(0, b)
                if row == "replay" and mem_x is not None:
                    r = torch.randint(len(mem_y), (len(b),), generator=g)
                    x, y = torch.cat([x, mem_x[r]]), torch.cat([y, mem_y[r]])
                optimizer.zero_grad(set_to_none=True)
                out = model(x)
                loss = criterion(out, y)
                if row == "ewc":
                    for means, fisher in importances:
                        for name, p in model.named_parameters():
                            loss = loss + cfg["ewc_lambda"] / 2 * (fisher[name] * (p - means[name]) ** 2).sum()
                loss.backward()
                optimizer.step()
                correct += (out.argmax(1) == y).sum()
                loss_sum += loss.detach() * len(y)
                n += len(y)
            float(correct) / n, float(loss_sum) / n  # the epoch's accuracy and loss
        if row == "replay":  # reservoir sampling over everything seen
            for i in range(len(ye)):
                seen += 1
                if mem_x is None or len(mem_y) < cfg["mem_size"]:
                    mem_x = xe[i:i + 1] if mem_x is None else torch.cat([mem_x, xe[i:i + 1]])
                    mem_y = ye[i:i + 1] if mem_y is None else torch.cat([mem_y, ye[i:i + 1]])
                else:
                    j = int(torch.randint(seen, (1,), generator=g))
                    if j < cfg["mem_size"]:
                        mem_x[j], mem_y[j] = xe[i], ye[i]
        if row == "ewc":  # empirical Fisher, minibatch by minibatch, as the libraries compute it
            fisher = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
            batches = 0
            for s in range(0, len(ye), cfg["mb"]):
                optimizer.zero_grad(set_to_none=True)
                criterion(model(xe[s:s + cfg["mb"]]), ye[s:s + cfg["mb"]]).backward()
                for name, p in model.named_parameters():
                    fisher[name] += p.grad.detach() ** 2
                batches += 1
            importances.append(({name: p.detach().clone() for name, p in model.named_parameters()},
                                {name: f / batches for name, f in fisher.items()}))
        train_time, train_cpu = train_time + time.perf_counter() - start, train_cpu + time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        model.eval()
        with torch.no_grad():
            total_correct, total_loss, total = torch.zeros((), dtype=torch.long), torch.zeros(()), 0
            for test_exp in range(N_EXP):
                ti = experience_indices(test_y, test_exp)
                xt, yt = test_x[ti], test_y[ti]
                correct, loss_sum = torch.zeros((), dtype=torch.long), torch.zeros(())
                for s in range(0, len(ti), cfg["eval_mb"]):
                    out = model(xt[s:s + cfg["eval_mb"]])
                    y = yt[s:s + cfg["eval_mb"]]
                    correct += (out.argmax(1) == y).sum()
                    loss_sum += criterion(out, y) * len(y)
                float(correct) / len(ti), float(loss_sum) / len(ti)  # the experience's accuracy and loss
                total_correct, total_loss, total = total_correct + correct, total_loss + loss_sum, total + len(ti)
            float(total_correct) / total, float(total_loss) / total  # the stream's
        eval_time, eval_cpu = eval_time + time.perf_counter() - start, eval_cpu + time.process_time() - cpu
    return train_time, eval_time, train_cpu, eval_cpu


# ---------------------------------------------------------------------- clkernel

def child_clkernel(row: str, data, seed: int) -> tuple[float, float, float, float]:
    import torch

    import clkernel
    from clkernel import Benchmark, CLDataset, Experience, Stream

    cfg = ROWS[row]
    torch.manual_seed(seed)
    train = CLDataset.from_tensors(data["train_x"], data["train_y"])
    test = CLDataset.from_tensors(data["test_x"], data["test_y"])
    stream = lambda ds, name: Stream(name, [Experience(i, ds.class_subset([2 * i, 2 * i + 1])) for i in range(N_EXP)])
    bench = Benchmark({"train": stream(train, "train"), "test": stream(test, "test")})
    model = make_model(cfg["hidden"])
    plugins = [clkernel.load("metric", "default")]
    if row == "replay":
        plugins.append(clkernel.load("plugin", "replay", mem_size=cfg["mem_size"]))
    elif row == "ewc":
        plugins.append(clkernel.load("plugin", "ewc", ewc_lambda=cfg["ewc_lambda"]))
    elif row == "gdumb":
        plugins.append(clkernel.load("plugin", "gdumb", mem_size=cfg["mem_size"]))

    class Timer:  # training and evaluation time, from the loop's own events
        def __init__(self) -> None:
            self.train = self.eval = self.train_cpu = self.eval_cpu = self._start = self._cpu = 0.0

        @clkernel.hookimpl(tryfirst=True)
        def before_training_exp(self, state) -> None:
            self._start, self._cpu = time.perf_counter(), time.process_time()

        @clkernel.hookimpl(trylast=True)
        def after_training_exp(self, state) -> None:
            self.train += time.perf_counter() - self._start
            self.train_cpu += time.process_time() - self._cpu

        @clkernel.hookimpl(tryfirst=True)
        def before_eval(self, state) -> None:
            self._start, self._cpu = time.perf_counter(), time.process_time()

        @clkernel.hookimpl(trylast=True)
        def after_eval(self, state) -> None:
            self.eval += time.perf_counter() - self._start
            self.eval_cpu += time.process_time() - self._cpu

    timer = Timer()
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=cfg["lr"]),
                                 torch.nn.CrossEntropyLoss(), plugins=[*plugins, timer], train_mb_size=cfg["mb"],
                                 train_epochs=cfg["epochs"], eval_mb_size=cfg["eval_mb"], device="cpu",
                                 generator=torch.Generator().manual_seed(seed))
    clkernel.run(strategy, bench, eval_streams=("test",))
    return timer.train, timer.eval, timer.train_cpu, timer.eval_cpu


# ---------------------------------------------------------------------- Avalanche

def child_avalanche(row: str, data, seed: int) -> tuple[float, float, float, float]:
    import torch
    from avalanche.benchmarks import nc_benchmark
    from avalanche.core import SupervisedPlugin
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import EWC, GDumb, Naive, Replay

    cfg = ROWS[row]
    torch.manual_seed(seed)

    class Tensors(torch.utils.data.TensorDataset):  # what Avalanche's generators take: a dataset with targets
        def __init__(self, x, y) -> None:
            super().__init__(x, y)
            self.targets = y.tolist()

    train, test = Tensors(data["train_x"], data["train_y"]), Tensors(data["test_x"], data["test_y"])
    bench = nc_benchmark(train, test, n_experiences=N_EXP, task_labels=False, seed=seed,
                         fixed_class_order=list(range(10)))
    model = make_model(cfg["hidden"])
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                                 loss_metrics(epoch=True, experience=True, stream=True), loggers=[])

    class Timer(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.train = self.eval = self.train_cpu = self.eval_cpu = self._start = self._cpu = 0.0

        def before_training_exp(self, strategy, **kwargs) -> None:
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def after_training_exp(self, strategy, **kwargs) -> None:
            self.train += time.perf_counter() - self._start
            self.train_cpu += time.process_time() - self._cpu

        def before_eval(self, strategy, **kwargs) -> None:
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def after_eval(self, strategy, **kwargs) -> None:
            self.eval += time.perf_counter() - self._start
            self.eval_cpu += time.process_time() - self._cpu

    timer = Timer()
    common = dict(train_mb_size=cfg["mb"], train_epochs=cfg["epochs"], eval_mb_size=cfg["eval_mb"], device="cpu",
                  evaluator=evaluator, plugins=[timer])
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    criterion = torch.nn.CrossEntropyLoss()
    if row == "naive":
        strategy = Naive(model, optimizer, criterion, **common)
    elif row == "replay":
        strategy = Replay(model, optimizer, criterion, mem_size=cfg["mem_size"], **common)
    elif row == "ewc":
        strategy = EWC(model, optimizer, criterion, ewc_lambda=cfg["ewc_lambda"], **common)
    else:
        strategy = GDumb(model, optimizer, criterion, mem_size=cfg["mem_size"], **common)
    for exp in bench.train_stream:
        strategy.train(exp, num_workers=0)
        strategy.eval(bench.test_stream, num_workers=0)
    return timer.train, timer.eval, timer.train_cpu, timer.eval_cpu


# ---------------------------------------------------------------------- the parent

def prepare_data(folder: Path) -> dict[str, Path]:
    """Write each row's data once (``torch.save``) so that every process loads exactly the same tensors."""
    import torch

    g = torch.Generator().manual_seed(0)
    random_data = {"train_x": torch.rand(60_000, 1, 28, 28, generator=g),
                   "train_y": torch.randint(0, 10, (60_000,), generator=g),
                   "test_x": torch.rand(10_000, 1, 28, 28, generator=g),
                   "test_y": torch.randint(0, 10, (10_000,), generator=g)}
    torch.save(random_data, folder / "random.pt")
    paths = {row: folder / "random.pt" for row in ("naive", "replay", "ewc")}
    raw = DATA / "MNIST" / "raw"
    if (raw / "train-images-idx3-ubyte").is_file():
        def images(name: str) -> torch.Tensor:
            data = (raw / name).read_bytes()[16:]
            x = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, 1, 28, 28).float() / 255
            return (x - 0.1307) / 0.3081

        def labels(name: str) -> torch.Tensor:
            return torch.frombuffer(bytearray((raw / name).read_bytes()[8:]), dtype=torch.uint8).long()

        torch.save({"train_x": images("train-images-idx3-ubyte"), "train_y": labels("train-labels-idx1-ubyte"),
                    "test_x": images("t10k-images-idx3-ubyte"), "test_y": labels("t10k-labels-idx1-ubyte")},
                   folder / "mnist.pt")
        paths["gdumb"] = folder / "mnist.pt"
    else:
        print(f"note: no MNIST in {raw}; the gdumb row uses random data of the same shape")
        paths["gdumb"] = folder / "random.pt"
    return paths


def ensure_avalanche(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import avalanche"], capture_output=True).returncode == 0:
        return python
    import torch

    version = torch.__version__.split("+")[0]
    print(f"installing avalanche-lib 0.6.0 and torch {version} into {venv} (once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={version}", "avalanche-lib==0.6.0"],
                   check=True)
    return python


def measure(python: str, impl: str, row: str, data: Path, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([python, __file__, "--child", impl, row, str(data), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{impl} {row} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime}


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not the rusage of a waited child: on Linux a child's high-water
    mark starts at its parent's at fork time, so every child would report at least this script's own size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="naive,replay,ewc,gdumb")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--avalanche-venv", default="/tmp/clkernel-bench/avalanche")
    parser.add_argument("--no-avalanche", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "ROW", "DATA", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, row, data, seed = args.child
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        run = {"plain": child_plain, "clkernel": child_clkernel, "avalanche": child_avalanche}[impl]
        train, evaluation, train_cpu, eval_cpu = run(row, load_data(data), int(seed))
        print(json.dumps({"train": train, "eval": evaluation, "train_cpu": train_cpu, "eval_cpu": eval_cpu,
                          "rss_mb": _peak_rss_mb()}))
        return
    impls = {"plain": sys.executable, "clkernel": sys.executable}
    if not args.no_avalanche:
        impls["avalanche"] = str(ensure_avalanche(Path(args.avalanche_venv)))
    rows = args.rows.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(Path(tmp))
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for row in rows:
                for impl, python in impls.items():
                    r = measure(python, impl, row, data[row], seed=repeat)
                    results.setdefault((row, impl), []).append(r)
                    print(f"  {row:6} {impl:9} repeat {repeat}: train {r['train']:.2f} s, eval {r['eval']:.2f} s, "
                          f"process {r['wall']:.1f} s; CPU: train {r['train_cpu']:.2f} s, eval {r['eval_cpu']:.2f} s, "
                          f"process {r['cpu']:.1f} s; peak RSS {r['rss_mb']:.0f} MB", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    print(f"\nmedians of {args.repeats} interleaved runs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    for clock, (t, e, w) in {"wall-clock time": ("train", "eval", "wall"),
                             "CPU time (user + system)":
                             ("train_cpu", "eval_cpu", "cpu")}.items():
        print(f"\n{clock}")
        print("| row | clkernel / plain: train | eval | train + eval | whole process | Avalanche / clkernel: "
              "train + eval | process s: clkernel / plain / Avalanche | peak RSS MB: clkernel / plain / Avalanche |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            c, p, a = med[row, "clkernel"], med[row, "plain"], med.get((row, "avalanche"))
            both = lambda m: m[t] + m[e]
            avl = f"{both(a) / both(c):.2f}" if a else "-"
            print(f"| {row} | {c[t] / p[t]:.3f} | {c[e] / p[e]:.3f} | {both(c) / both(p):.3f} | "
                  f"{c[w] / p[w]:.3f} | {avl} | {c[w]:.1f} / {p[w]:.1f} / "
                  f"{a[w] if a else float('nan'):.1f} | {c['rss_mb']:.0f} / {p['rss_mb']:.0f} / "
                  f"{a['rss_mb'] if a else float('nan'):.0f} |")


if __name__ == "__main__":
    main()
