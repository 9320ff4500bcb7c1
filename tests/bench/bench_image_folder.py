"""Images from disk: clkernel (Naive, and Replay) against a plain DataLoader loop with the same workers.

Work: a generated folder of PNG files (default 4,000 RGB 32x32 images, 10 classes, ``train/`` 80 % and ``test/``
20 %), read through clkernel-benchmarks' ``image-folder`` (torchvision ``ImageFolder``, per-image ``ToImage``,
``ToDtype`` and ``Normalize``), 2 class-incremental experiences of 5 classes, a small CNN, SGD, minibatches of
64, 3 epochs per experience, on the CPU.

- Naive: ``Strategy(loader_options={"num_workers": W, "persistent_workers": True})`` against a plain loop with
  one ``DataLoader(ImageFolder subset, shuffle=True, num_workers=W, persistent_workers=True)`` per experience.
- Replay: clkernel-replay's ``Replay(mem_size=500, batch_size_mem=64)``, whose buffer draws are read ahead by
  W workers (``CLDataset.get_batches``, the loop's ``loader_options`` passed on by
  :func:`clkernel.data.set_batch_reader_options`) against a plain loop with two DataLoaders of W workers each:
  the experience's, and one drawing 64 samples of a 500-sample buffer (random samples of the first experience)
  per minibatch.

Runs are interleaved (plain, clkernel, plain replay, clkernel replay), each repeated; prints the median training throughput (images per second, replayed images included) and the ratios
clkernel / plain. Target: at least 0.90 for both.

    .venv/bin/python tests/bench/bench_image_folder.py [--images 4000] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import clkernel

MB, MEM_SIZE, STATS = 64, 500, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def make_folder(root: Path, n_images: int, n_classes: int = 10, size: int = 32) -> None:
    """``root/{train,test}/class_k/i.png``: smooth random images (a class-dependent colour plus noise)."""
    rng = np.random.default_rng(0)
    for i in range(n_images):
        c = i % n_classes
        part = "test" if (i // n_classes) % 5 == 4 else "train"
        folder = root / part / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([25 * c, 255 - 25 * c, 128], dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


def transform():
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*map(list, STATS))])


def step(model, optimizer, criterion, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    criterion(model(x), y).backward()
    optimizer.step()


def plain(root: Path, classes: list[list[int]], workers: int, epochs: int, replay: bool) -> tuple[float, int]:
    """The hand-written loop; returns (seconds, images trained on)."""
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    data = ImageFolder(str(root / "train"), transform=transform())
    targets = torch.tensor(data.targets)
    model, criterion = make_model(), torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    options = {"num_workers": workers, "persistent_workers": workers > 0}
    buffer: torch.Tensor | None = None
    seen, start = 0, time.perf_counter()
    for exp_classes in classes:
        idx = torch.isin(targets, torch.tensor(exp_classes)).nonzero().flatten()
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx.tolist()), batch_size=MB,
                                             shuffle=True, **options)
        memory = None
        if replay and buffer is not None:
            draws = epochs * len(loader) * MB
            memory = iter(torch.utils.data.DataLoader(
                torch.utils.data.Subset(data, buffer.tolist()), batch_size=MB,
                sampler=torch.utils.data.RandomSampler(range(len(buffer)), num_samples=draws), **options))
        for _ in range(epochs):
            for x, y in loader:
                if memory is not None:
                    bx, by = next(memory)
                    x, y = torch.cat([x, bx]), torch.cat([y, by])
                step(model, optimizer, criterion, x, y)
                seen += len(y)
        del loader, memory
        buffer = idx[torch.randperm(len(idx))[:MEM_SIZE]]
    return time.perf_counter() - start, seen


def with_clkernel(root: Path, workers: int, epochs: int, replay: bool) -> tuple[float, int]:
    """clkernel's loop on the image-folder benchmark; returns (seconds, images trained on)."""
    torch.manual_seed(0)
    bm = clkernel.load("benchmark", "image-folder", dataset_root=str(root), n_experiences=2,
                       fixed_class_order=list(range(10)), mean=list(STATS[0]), std=list(STATS[1]))
    model = make_model()
    plugins = [clkernel.load("plugin", "replay", mem_size=MEM_SIZE, batch_size_mem=MB, seed=0)] if replay else []
    seen = [0]

    class Count:
        @clkernel.hookimpl
        def after_training_iteration(self, state):
            seen[0] += len(state.mb[1])

    options = {"num_workers": workers, "persistent_workers": workers > 0}
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01), plugins=[*plugins, Count()],
                                 train_mb_size=MB, train_epochs=epochs, eval_every=-1, device="cpu",
                                 loader_options=options)
    start = time.perf_counter()
    with strategy:
        strategy.train(bm.train_stream)
    elapsed = time.perf_counter() - start
    return elapsed, seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the model's share; the workers decode on the other cores
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root, args.images)
        classes = [list(range(5)), list(range(5, 10))]
        runs = {"plain": lambda: plain(root, classes, args.workers, args.epochs, False),
                "clkernel": lambda: with_clkernel(root, args.workers, args.epochs, False),
                "plain replay": lambda: plain(root, classes, args.workers, args.epochs, True),
                "clkernel replay": lambda: with_clkernel(root, args.workers, args.epochs, True)}
        rates: dict[str, list[float]] = {name: [] for name in runs}
        counts: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds, images = run()
                rates[name].append(images / seconds)
                counts[name] = images
    print(f"{args.images} PNG files 32x32, {args.workers} workers per DataLoader, {args.epochs} epochs, "
          f"minibatch {MB}, median of {args.repeats}")
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name in runs:
        print(f"  {name:16s} {median[name]:8.0f} images/s  ({counts[name]} images per run; "
              f"{', '.join(f'{r:.0f}' for r in rates[name])})")
    print(f"ratio clkernel / plain:               {median['clkernel'] / median['plain']:.3f}")
    print(f"ratio clkernel replay / plain replay: {median['clkernel replay'] / median['plain replay']:.3f}")


if __name__ == "__main__":
    main()
