"""Buffer update cost grows with the new data, not with the history.

A 2,000-sample class-balanced buffer is updated over 100 experiences; the claim is that the last update takes no
more than 2x the first. Two streams over an in-memory MNIST-sized tensor (60,000 x 1 x 28 x 28, random bytes:
the buffer never reads pixels): ``data-incremental`` (600 new samples of the 10 classes per experience) and
``class-incremental`` (600 samples of 2 new classes per experience: 200 classes in the end, so the groups
multiply too). Each update is timed over several repeats of the whole stream (median per position), in wall
time and in the CPU time of the process's thread (``time.thread_time``), which a busy shared machine disturbs less.

For scale, a plain hand-written PyTorch class-balanced reservoir (index and weight tensors, one ``topk`` per
class) does the same work in the same process; the ratio of the two is printed.

Fresh sources: a ``ReservoirSamplingBuffer(5)`` is updated with 2,000 datasets of 3 samples, each over its own new
tensor (data that arrives as it streams, not views of one big tensor). A buffer view must only hold the sources
its samples use, so the claims are: the median of the last 100 updates takes no more than 2x the median of the
first 100, and the number of live source tensors (counted with weak references, after each update) never exceeds
the buffer's size.

    .venv/bin/python plugins/replay/bench/bench_buffer_update.py [--repeats 5] [--fresh-updates 2000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import weakref

import torch

from clkernel import CLDataset, Experience
from clkernel_replay import ClassBalancedBuffer, ReservoirSamplingBuffer

MEM, EXPERIENCES, PER_EXP = 2000, 100, 600
FRESH_MEM, FRESH_SIZE, WINDOW = 5, 3, 100


def streams() -> dict[str, tuple[CLDataset, list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (EXPERIENCES * PER_EXP, 1, 28, 28), dtype=torch.uint8, generator=g)
    order = torch.randperm(len(x), generator=g)
    mixed = CLDataset.from_tensors(x, torch.randint(0, 10, (len(x),), generator=g))
    per_class = CLDataset.from_tensors(x, torch.arange(len(x)) // (PER_EXP // 2))  # 2 new classes per experience
    return {
        "data-incremental": (mixed, [order[e * PER_EXP:(e + 1) * PER_EXP] for e in range(EXPERIENCES)]),
        "class-incremental": (per_class, [torch.arange(e * PER_EXP, (e + 1) * PER_EXP) for e in range(EXPERIENCES)]),
    }


def time_policy(data: CLDataset, parts: list[torch.Tensor], clock=time.perf_counter) -> list[float]:
    buf = ClassBalancedBuffer(MEM, seed=0)
    times = []
    for e, idx in enumerate(parts):
        exp = Experience(e, data.subset(idx))
        start = clock()
        buf.update(exp)
        times.append(clock() - start)
        assert len(buf) <= MEM
    return times


def time_plain(data: CLDataset, parts: list[torch.Tensor]) -> list[float]:
    """A plain class-balanced reservoir: global indices and weights, topk per class."""
    g = torch.Generator().manual_seed(0)
    targets = data.targets
    keep_idx = torch.zeros(0, dtype=torch.long)
    keep_w = torch.zeros(0)
    times = []
    for idx in parts:
        start = time.perf_counter()
        cand_idx = torch.cat([keep_idx, idx])
        cand_w = torch.cat([keep_w, torch.rand(len(idx), generator=g)])
        cand_y = targets[cand_idx]
        classes = cand_y.unique()
        base, extra = divmod(MEM, len(classes))
        kept = []
        for i, c in enumerate(classes.tolist()):
            members = (cand_y == c).nonzero().flatten()
            k = min(len(members), base + (i < extra))
            kept.append(members[torch.topk(cand_w[members], k).indices])
        sel = torch.cat(kept)
        keep_idx, keep_w = cand_idx[sel], cand_w[sel]
        times.append(time.perf_counter() - start)
    return times


def fresh_sources(updates: int) -> tuple[list[float], list[int], int]:
    """A ``ReservoirSamplingBuffer(5)`` updated with ``updates`` datasets of 3 samples over fresh tensors: the wall
    time of every update, the live source tensors after every update, and those still live at the end after
    ``gc.collect()``."""
    g = torch.Generator().manual_seed(0)
    buf = ReservoirSamplingBuffer(FRESH_MEM, seed=0)
    live: weakref.WeakSet[torch.Tensor] = weakref.WeakSet()
    times, alive = [], []
    for _ in range(updates):
        x = torch.randn(FRESH_SIZE, 4, generator=g)
        live.add(x)
        data = CLDataset.from_tensors(x, torch.arange(FRESH_SIZE))
        del x  # from here on only ``data`` (and then the buffer) holds the tensor
        start = time.perf_counter()
        buf.update(data)
        times.append(time.perf_counter() - start)
        del data
        alive.append(len(live))
    gc.collect()
    return times, alive, len(live)


def report_fresh_sources(updates: int) -> bool:
    times, alive, at_end = fresh_sources(updates)
    first, last = statistics.median(times[:WINDOW]), statistics.median(times[-WINDOW:])
    ratio = last / first
    print(f"fresh sources: ReservoirSamplingBuffer({FRESH_MEM}), {updates} updates of {FRESH_SIZE} new samples "
          f"(wall, median of windows of {WINDOW}): first {first * 1e3:.3f} ms, last {last * 1e3:.3f} ms, "
          f"last/first {ratio:.2f} ({'OK' if ratio <= 2.0 else 'OVER 2x'})")
    for at in (10, updates // 2, updates):
        if at <= updates:
            print(f"{'':15s}update {at:5d}: {times[at - 1] * 1e3:.3f} ms, {alive[at - 1]} live source tensors")
    ok = max(alive) <= FRESH_MEM
    print(f"{'':15s}live source tensors: at most {max(alive)} after an update, {at_end} at the end after "
          f"gc.collect() ({'OK' if ok else 'ABOVE'} the buffer's size {FRESH_MEM})")
    return ratio <= 2.0 and ok


def median_per_position(runs: list[list[float]]) -> list[float]:
    return [statistics.median(r[i] for r in runs) for i in range(len(runs[0]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fresh-updates", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fresh_ok = report_fresh_sources(args.fresh_updates)
    print(f"class-balanced buffer of {MEM} samples, {EXPERIENCES} experiences of {PER_EXP} samples, "
          f"median of {args.repeats} repeats per update")
    ok = {"wall": True, "cpu": True}
    for name, (data, parts) in streams().items():
        time_policy(data, parts[:3])  # warm-up
        for clock_name, clock in (("wall", time.perf_counter), ("cpu", time.thread_time)):
            ours = median_per_position([time_policy(data, parts, clock) for _ in range(args.repeats)])
            first, last = ours[0], ours[-1]
            ratio = last / first
            ok[clock_name] &= ratio <= 2.0
            print(f"{name:18s} {clock_name:4s} first update {first * 1e3:6.3f} ms, last {last * 1e3:6.3f} ms, "
                  f"last/first {ratio:4.2f} ({'OK' if ratio <= 2.0 else 'OVER 2x'}); first 10 mean "
                  f"{statistics.mean(ours[:10]) * 1e3:.3f} ms, last 10 mean {statistics.mean(ours[-10:]) * 1e3:.3f} ms")
        ours = median_per_position([time_policy(data, parts) for _ in range(args.repeats)])
        plain = median_per_position([time_plain(data, parts) for _ in range(args.repeats)])
        print(f"{'':18s} plain PyTorch reservoir (wall): first {plain[0] * 1e3:.3f} ms, last {plain[-1] * 1e3:.3f} ms;"
              f" clkernel-replay / plain over all updates: {sum(ours) / sum(plain):.2f}")
    for clock_name, holds in ok.items():
        print(f"claim (last update <= 2x first), {clock_name} time:", "holds" if holds else "DOES NOT HOLD")
    print("claim (fresh sources: last <= 2x first, live sources <= buffer size):",
          "holds" if fresh_ok else "DOES NOT HOLD")


if __name__ == "__main__":
    main()
