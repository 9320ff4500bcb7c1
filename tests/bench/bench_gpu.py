"""clkernel against a plain PyTorch loop on one GPU: Naive, Replay and EWC on a Split CIFAR-10-shaped workload.

The workload: 50,000 random 3x32x32 training images (10,000 test) of 10 classes, split class-incrementally into 5
experiences of 2 classes; SlimResNet18 (clkernel-models; GEM's reduced ResNet-18, nf=20); SGD lr 0.01, minibatch
128 (evaluation 512), 1 epoch; Replay keeps 500 samples (experience-balanced, 128 replayed per minibatch), EWC has
lambda 0.4 (separate importances). The data sits in CPU memory; each minibatch is gathered and copied to the
device, by both. The test stream is evaluated once, after the last experience. No metric plugin: both compute
only the final accuracy, so the ratio is the loop's own cost.

Each variant runs both implementations in this process, interleaved (plain, clkernel, plain, ...), ``--repeats``
times; the medians are printed: training images per second (stream images, replayed ones not counted) and the
ratio clkernel / plain of training and of evaluation time (below 1: clkernel is faster). Variants, each with the
same change on both sides: ``base``; ``--amp`` (bfloat16 autocast: the ``amp`` plugin / ``torch.autocast`` by
hand); ``--channels-last`` (the ``channels-last`` plugin / ``model.to(memory_format=...)`` and each input);
``--compile`` (the ``compile`` plugin / ``model.compile()``, both in place; a compiled variant's first repeat
includes compilation, which the median leaves out from 3 repeats up).

Sized for about 5 minutes on one H200 with the four variants and ``--repeats 3`` (an estimate: not yet run on
a GPU; ``--json`` keeps the medians, the progress lines each run's figures). ``--device cpu --quick`` runs everything on
tiny sizes (40 images, nf=8) to check that it works (``tests/test_bench_gpu.py`` runs it).

    .venv/bin/python tests/bench/bench_gpu.py [--amp] [--channels-last] [--compile] [--repeats 3] [--json out.json]
    .venv/bin/python tests/bench/bench_gpu.py --device cpu --quick --amp --channels-last
    .venv/bin/python tests/bench/bench_gpu.py --device cpu --images 2000 --methods naive --channels-last --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream

METHODS = ("naive", "replay", "ewc")
N_EXP = 5
MEM_SIZE, EWC_LAMBDA, LR = 500, 0.4, 0.01


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        # nf=8: on torch 2.14.1's CPU build, channels-last SlimResNet18 with nf <= 6 corrupts the heap (oneDNN)
        return {"train": 40, "test": 16, "mb": 8, "eval_mb": 16, "nf": 8, "mem": 8}
    return {"train": 50_000, "test": 10_000, "mb": 128, "eval_mb": 512, "nf": 20, "mem": MEM_SIZE}


def make_data(cfg: dict[str, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"train_x": torch.randn(cfg["train"], 3, 32, 32, generator=g),
            "train_y": torch.randint(0, 10, (cfg["train"],), generator=g),
            "test_x": torch.randn(cfg["test"], 3, 32, 32, generator=g),
            "test_y": torch.randint(0, 10, (cfg["test"],), generator=g)}


def make_model(cfg: dict[str, int], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return clkernel.load("model", "slim-resnet18", num_classes=10, in_channels=3, nf=cfg["nf"])


def classes(exp: int) -> list[int]:
    return [2 * exp, 2 * exp + 1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- the plain loop

def plain(method: str, variant: str, data: dict[str, torch.Tensor], cfg: dict[str, int], device: torch.device,
          seed: int) -> tuple[float, float, float]:
    """Naive, Replay (experience-balanced buffer) and EWC by hand; returns (train s, eval s, final accuracy)."""
    model = make_model(cfg, seed).to(device)
    cl = variant == "channels-last"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if variant == "compile":
        model.compile()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if variant == "amp" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    criterion = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    train_x, train_y = data["train_x"], data["train_y"]

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        if autocast is None:
            return model(x)
        with autocast():
            return model(x).float()

    memory: list[torch.Tensor] = []  # per experience, the indices it keeps in the buffer
    importances: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    train_time = 0.0
    for exp in range(N_EXP):
        sync(device)
        start = time.perf_counter()
        idx = torch.isin(train_y, torch.tensor(classes(exp))).nonzero().flatten()
        mem_idx = torch.cat(memory) if memory else None
        model.train()
        perm = idx[torch.randperm(len(idx), generator=g)]
        for s in range(0, len(perm), cfg["mb"]):
            b = perm[s:s + cfg["mb"]]
            if mem_idx is not None and method == "replay":
                b = torch.cat([b, mem_idx[torch.randint(len(mem_idx), (len(b),), generator=g)]])
            x, y = train_x.index_select(0, b), train_y.index_select(0, b).to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(forward(x), y)
            if method == "ewc":
                for means, fisher in importances:
                    for p, m, f in zip(model.parameters(), means, fisher):
                        loss = loss + EWC_LAMBDA / 2 * (f * (p - m) ** 2).sum()
            loss.backward()
            optimizer.step()
        if method == "replay":  # experience-balanced: every experience seen keeps mem // n of its samples
            memory.append(idx[torch.randperm(len(idx), generator=g)])
            memory = [m[:cfg["mem"] // len(memory)] for m in memory]
        if method == "ewc":  # empirical Fisher, minibatch by minibatch
            fisher = [torch.zeros_like(p) for p in model.parameters()]
            batches = 0
            for s in range(0, len(idx), cfg["mb"]):
                b = idx[s:s + cfg["mb"]]
                optimizer.zero_grad(set_to_none=True)
                criterion(forward(train_x.index_select(0, b)),
                          train_y.index_select(0, b).to(device, non_blocking=True)).backward()
                for f, p in zip(fisher, model.parameters()):
                    f += p.grad.detach() ** 2
                batches += 1
            importances.append(([p.detach().clone() for p in model.parameters()], [f / batches for f in fisher]))
        sync(device)
        train_time += time.perf_counter() - start
    start = time.perf_counter()
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for s in range(0, len(data["test_y"]), cfg["eval_mb"]):
            y = data["test_y"][s:s + cfg["eval_mb"]].to(device, non_blocking=True)
            correct += (forward(data["test_x"][s:s + cfg["eval_mb"]]).argmax(1) == y).sum()
    accuracy = float(correct) / len(data["test_y"])
    return train_time, time.perf_counter() - start, accuracy


# ---------------------------------------------------------------------- clkernel

class _Timer:
    """Training and evaluation time from the loop's own events, with the device synchronised at each edge."""

    name = "timer"

    def __init__(self, device: torch.device) -> None:
        self.device, self.train, self.eval, self._start = device, 0.0, 0.0, 0.0

    def _begin(self) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def _end(self) -> float:
        sync(self.device)
        return time.perf_counter() - self._start

    @clkernel.hookimpl(tryfirst=True)
    def before_training_exp(self, state: Any) -> None:
        self._begin()

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: Any) -> None:
        self.train += self._end()

    @clkernel.hookimpl(tryfirst=True)
    def before_eval(self, state: Any) -> None:
        self._begin()

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: Any) -> None:
        self.eval += self._end()


class _Accuracy:
    """The final accuracy, counted as the plain loop counts it (on the device, read once)."""

    name = "final-accuracy"

    def __init__(self) -> None:
        self.correct: Any = 0

    @clkernel.hookimpl
    def after_eval_forward(self, state: Any) -> None:
        self.correct = self.correct + (state.mb_output.argmax(1) == state.mb_y).sum()


def with_clkernel(method: str, variant: str, data: dict[str, torch.Tensor], cfg: dict[str, int],
                  device: torch.device, seed: int) -> tuple[float, float, float]:
    train = CLDataset.from_tensors(data["train_x"], data["train_y"])
    test = CLDataset.from_tensors(data["test_x"], data["test_y"])
    bench = Benchmark({"train": Stream("train", [Experience(i, train.class_subset(classes(i))) for i in range(N_EXP)]),
                       "test": Stream("test", [Experience(0, test)])})
    model = make_model(cfg, seed)
    plugins: list[Any] = []
    if method == "replay":
        plugins.append(clkernel.load("plugin", "replay", mem_size=cfg["mem"]))
    elif method == "ewc":
        plugins.append(clkernel.load("plugin", "ewc", ewc_lambda=EWC_LAMBDA))
    if variant == "amp":
        plugins.append(clkernel.load("plugin", "amp", dtype="bfloat16"))
    elif variant in ("channels-last", "compile"):
        plugins.append(clkernel.load("plugin", variant))
    timer, accuracy = _Timer(device), _Accuracy()
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=LR), torch.nn.CrossEntropyLoss(),
                                 plugins=[*plugins, timer, accuracy], train_mb_size=cfg["mb"],
                                 eval_mb_size=cfg["eval_mb"], train_epochs=1, device=device,
                                 generator=torch.Generator().manual_seed(seed))
    strategy.train(bench.train_stream)
    strategy.eval(bench.test_stream)
    strategy.close()
    return timer.train, timer.eval, float(accuracy.correct) / len(data["test_y"])


# ---------------------------------------------------------------------- the parent

def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that everything runs")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--json", help="also write the medians to this file")
    parser.add_argument("--images", type=int, help="training images instead of 50,000 (test: a fifth)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads on the CPU (default 1: a shared machine's cores are busy)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu (with --quick to check that it runs)")
    repeats = args.repeats or (1 if args.quick else 3)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown[0]!r}; methods: {', '.join(METHODS)}")
    variants = ["base"] + [v for v in ("amp", "channels-last", "compile") if getattr(args, v.replace("-", "_"))]
    cfg = sizes(args.quick)
    if args.images:
        cfg.update(train=args.images, test=max(args.images // 5, 1))
    data = make_data(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; {cfg['train']} images 3x32x32, SlimResNet18 nf={cfg['nf']}, "
          f"mb {cfg['mb']}; {repeats} repeat(s)", flush=True)
    runs: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    impls: dict[str, Callable[..., tuple[float, float, float]]] = {"plain": plain, "clkernel": with_clkernel}
    started = time.perf_counter()
    for variant in variants:
        for repeat in range(repeats):
            for method in methods:
                for impl, run in impls.items():
                    r = run(method, variant, data, cfg, device, seed=repeat)
                    runs.setdefault((variant, method, impl), []).append(r)
                    print(f"  [{time.perf_counter() - started:6.1f} s] {variant:13} {method:6} {impl:8} repeat "
                          f"{repeat}: train {r[0]:.2f} s, eval {r[1]:.2f} s, accuracy {r[2]:.3f}", flush=True)
    print(f"\nmedians of {repeats}; images/s: training images of the stream per second of training")
    print("| variant | method | plain images/s | clkernel images/s | clkernel / plain: train time | eval time |")
    print("|---|---|---|---|---|---|")
    table = []
    for variant in variants:
        for method in methods:
            p, c = ([statistics.median(r[i] for r in runs[variant, method, impl]) for i in range(2)]
                    for impl in impls)
            row = {"variant": variant, "method": method, "plain_images_per_s": cfg["train"] / p[0],
                   "clkernel_images_per_s": cfg["train"] / c[0], "train_ratio": c[0] / p[0],
                   "eval_ratio": c[1] / p[1]}
            table.append(row)
            print(f"| {variant} | {method} | {row['plain_images_per_s']:.0f} | {row['clkernel_images_per_s']:.0f} | "
                  f"{row['train_ratio']:.3f} | {row['eval_ratio']:.3f} |")
    result = {"device": name, "torch": torch.__version__, "sizes": cfg, "repeats": repeats, "rows": table}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
