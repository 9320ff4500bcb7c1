"""The distributed path's throughput: clkernel's loop under DDP against a plain PyTorch DDP loop, same work.

Launch with ``torchrun``; on one GPU this runs the NCCL path with one rank (the loop trains through DDP whenever a
process group is initialised), on CPUs gloo::

    torchrun --standalone --nproc_per_node=1 tests/bench/bench_ddp.py            # one GPU (NCCL), or one CPU rank
    torchrun --standalone --nproc_per_node=2 tests/bench/bench_ddp.py --quick    # two CPU ranks, tiny sizes

Workload: class-incremental training on synthetic CIFAR-10-shaped data (``--samples`` 3x32x32 images, 5
experiences of 2 classes, in memory on the device), a small CNN (the loop, not the model, is what is measured;
``tests/bench/bench_gpu.py`` runs SlimResNet18), minibatch ``--mb-size`` per rank, one epoch per experience,
evaluation of the test stream after each. Each
repeat runs clkernel then the plain loop (interleaved); rank 0 prints the medians of images/s (training) and the
ratio plain / clkernel (1.00 = as fast; the target is within 1.05).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream

__all__: list[str] = []


def make_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(64 * 16, 10))


def make_benchmark(samples: int, device: torch.device) -> Benchmark:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(samples // 10)
    x = torch.randn(len(y), 3, 32, 32, generator=g) + y[:, None, None, None] / 10
    data = CLDataset.from_tensors(x.to(device), y.to(device))
    test = CLDataset.from_tensors(x[: samples // 5].to(device), y[: samples // 5].to(device))
    train = [Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(5)]
    evals = [Experience(i, test.class_subset([2 * i, 2 * i + 1])) for i in range(5)]
    return Benchmark({"train": Stream("train", train), "test": Stream("test", evals)}, name="synthetic-cifar")


def run_clkernel(bench: Benchmark, device: torch.device, mb: int) -> float:
    torch.manual_seed(0)
    model = make_model()
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                 train_mb_size=mb, eval_mb_size=256, device=device)
    start = time.perf_counter()
    clkernel.run(strategy, bench)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_plain(bench: Benchmark, device: torch.device, mb: int) -> float:
    """The same work by hand: DDP, a DistributedSampler per experience, evaluation of each rank's share with
    counts summed over the ranks."""
    torch.manual_seed(0)
    model = make_model().to(device)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    rank, world = dist.get_rank(), dist.get_world_size()
    start = time.perf_counter()
    for exp in bench.train_stream:
        x_all, y_all = exp.dataset.get_batch(torch.arange(len(exp.dataset)))[:2]
        sampler = torch.utils.data.DistributedSampler(range(len(y_all)), num_replicas=world, rank=rank, seed=0)
        order = torch.tensor(list(sampler), device=x_all.device)
        ddp.train()
        for i in range(0, len(order), mb):
            idx = order[i:i + mb]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(ddp(x_all[idx]), y_all[idx])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for test in bench.test_stream:
                x, y = test.dataset.get_batch(torch.arange(rank, len(test.dataset), world))[:2]
                counts = torch.zeros(2, device=device)
                for i in range(0, len(y), 256):
                    counts[0] += (model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()
                counts[1] += len(y)
                dist.all_reduce(counts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--mb-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 samples, 1 repeat: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 2_000, 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    bench = make_benchmark(args.samples, device)
    images = args.samples  # one epoch over every training sample, in all ranks together
    times: dict[str, list[float]] = {"clkernel": [], "plain": []}
    run_plain(make_benchmark(200, device), device, args.mb_size)  # warm-up (kernels, allocator)
    for _ in range(args.repeats):
        times["clkernel"].append(run_clkernel(bench, device, args.mb_size))
        times["plain"].append(run_plain(bench, device, args.mb_size))
    if dist.get_rank() == 0:
        ours, plain = (statistics.median(times[k]) for k in ("clkernel", "plain"))
        print(f"{dist.get_world_size()} rank(s), {dist.get_backend()}, {device}: {images} images x 1 epoch + eval, "
              f"median of {args.repeats}")
        print(f"  clkernel  {ours:7.2f} s  {images / ours:9.0f} images/s (train + eval)")
        print(f"  plain DDP {plain:7.2f} s  {images / plain:9.0f} images/s")
        print(f"  clkernel / plain time: {ours / plain:.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
