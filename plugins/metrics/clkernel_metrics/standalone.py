"""Metrics usable on their own, outside the training loop: ``update(...)``, ``result()``, ``reset()``.

Accumulators stay on the device of the tensors they are given; only ``result()`` synchronises. The
:class:`~clkernel_metrics.Evaluator` drives the same classes inside the loop.

Accuracy-matrix metrics follow Lopez-Paz & Ranzato (2017, GEM) and Chaudhry et al. (2018, RWalk): ``R[i, j]``
is the accuracy on experience ``j`` after training experience ``i``; ``b[j]`` the accuracy on ``j`` of the
model before any training.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable

import torch

from clkernel.validate import positive_int, positive_number

__all__ = [
    "MB", "Accuracy", "AccuracyMatrix", "BackwardTransfer", "CPUUsage", "ClassAccuracy", "ConfusionMatrix",
    "DiskUsage", "Forgetting", "ForwardTransfer", "Loss", "MaxGPUMemory", "MaxRAM", "Mean", "TopKAccuracy",
    "WallTime", "add_padded", "backward_transfer", "backward_transfer_per_experience", "bincount",
    "class_accuracies", "current_rss_mb", "forgetting", "forgetting_per_experience", "forward_transfer",
    "forward_transfer_per_experience", "predictions", "topk_correct",
]

#: Bytes in one MiB: memory and disk values are in MiB.
MB = float(2**20)


def predictions(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Predicted labels: the argmax of the last dimension of logits ``[N, C]``, or ``output`` itself when it
    already holds labels ``[N]``."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"metrics need the model output as a tensor of logits [N, C] or labels [N], got "
                        f"{type(output).__name__}")
    if output.dim() == target.dim() + 1:
        return output.argmax(-1)
    if output.dim() == target.dim():
        return output
    raise ValueError(f"cannot compare model output of shape {tuple(output.shape)} with targets of shape "
                     f"{tuple(target.shape)}: expected logits [N, C] or labels [N]")


def bincount(index: torch.Tensor, size: int) -> torch.Tensor:
    """``torch.bincount`` with a fixed size, without the device synchronisation that bincount does on CUDA."""
    counts = torch.zeros(size, dtype=torch.long, device=index.device)
    return counts.scatter_add_(0, index.reshape(-1).long(), torch.ones_like(index.reshape(-1), dtype=torch.long))


# ---------------------------------------------------------------------------------------------- means


class Mean:
    """A sample-weighted mean: ``add(total, n)`` adds a sum over ``n`` samples; ``result()`` = sums / samples."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self.total: torch.Tensor | float = 0.0
        self.count = 0

    def add(self, total: torch.Tensor | float, n: int) -> None:
        """Add ``total``, the sum of the quantity over ``n`` samples (a 0-d tensor stays on its device)."""
        self.total = total if self.count == 0 else self.total + total
        self.count += int(n)

    def result_tensor(self) -> torch.Tensor | None:
        """The mean as a 0-d float64 tensor on the accumulator's device (no synchronisation); None if empty."""
        if self.count == 0:
            return None
        total = self.total if isinstance(self.total, torch.Tensor) else torch.tensor(self.total)
        return total.to(torch.float64) / self.count

    def result(self) -> float:
        """The mean, or NaN when nothing was added."""
        if self.count == 0:
            return math.nan
        return float(self.total) / self.count

    def state_dict(self) -> dict[str, Any]:
        """``{"total": float or tensor (on its device, as accumulated), "count": int}``: what resumes the sums
        bit for bit."""
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.total, self.count = state["total"], int(state["count"])


class Accuracy(Mean):
    """Top-1 accuracy: correct predictions over samples, pooled over every update (sample-weighted)."""

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``output`` logits ``[N, C]`` (or labels ``[N]``) and ``target`` labels ``[N]``."""
        self.add((predictions(output, target) == target).sum(), target.numel())


class TopKAccuracy(Mean):
    """Top-k accuracy: the fraction of samples whose label is among the ``k`` largest outputs."""

    def __init__(self, k: int = 5) -> None:
        self.k = positive_int(k, "k", "top-k accuracy")
        super().__init__()

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of logits ``[N, C]`` and labels ``[N]``."""
        self.add(topk_correct(output, target, self.k).sum(), target.numel())


def topk_correct(output: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Per sample, whether ``target`` is among the ``k`` largest logits."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise ValueError(f"top-{k} accuracy needs logits [N, C], got "
                         f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}")
    if k > output.shape[-1]:
        raise ValueError(f"top-k accuracy: k={k} exceeds the model's {output.shape[-1]} outputs")
    return (output.topk(k, dim=-1).indices == target.unsqueeze(-1)).any(-1)


class Loss(Mean):
    """Mean loss per sample over every update."""

    def update(self, loss: torch.Tensor | float, n: int = 1) -> None:
        """Add ``loss``, the mean loss of ``n`` samples (or a 1-D tensor of per-sample losses, then ``n`` is
        ignored)."""
        if isinstance(loss, torch.Tensor) and loss.dim() > 0:
            self.add(loss.detach().sum(), loss.numel())
        else:
            self.add(loss.detach() * n if isinstance(loss, torch.Tensor) else float(loss) * n, n)


# ---------------------------------------------------------------------------------------------- per class


class ClassAccuracy:
    """Accuracy of each class: correct predictions of the class over its samples."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self.counts: torch.Tensor | None = None  # [C, 2]: wrong, right

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of logits ``[N, C]`` (or labels ``[N]``) and labels ``[N]``."""
        preds = predictions(output, target)
        size = _num_classes(self.num_classes, output, target)
        self.add_counts(bincount(target * 2 + (preds == target), 2 * size).view(size, 2))

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add ``[C, 2]`` counts of wrong and right predictions per class."""
        self.counts = counts if self.counts is None else add_padded(self.counts, counts)

    def result(self) -> dict[int, float]:
        """Class id -> accuracy, for the classes that had samples."""
        if self.counts is None:
            return {}
        return class_accuracies(self.counts.cpu())


def class_accuracies(counts: torch.Tensor) -> dict[int, float]:
    """Class id -> accuracy from ``[C, 2]`` wrong/right counts, for classes with samples."""
    out = {}
    for c, (wrong, right) in enumerate(counts.tolist()):
        if wrong + right > 0:
            out[c] = right / (wrong + right)
    return out


class ConfusionMatrix:
    """Counts of (true class, predicted class): ``result()[i, j]`` samples of class i predicted as j."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self.matrix: torch.Tensor | None = None

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of logits ``[N, C]`` (or labels ``[N]``) and labels ``[N]``."""
        preds = predictions(output, target)
        size = _num_classes(self.num_classes, output, target)
        self.add_counts(bincount(target * size + preds, size * size).view(size, size))

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add a ``[C, C]`` count matrix."""
        self.matrix = counts if self.matrix is None else add_padded(self.matrix, counts)

    def result(self) -> torch.Tensor:
        """The ``[C, C]`` count matrix (int64, on the CPU); empty when nothing was added."""
        return torch.zeros(0, 0, dtype=torch.long) if self.matrix is None else self.matrix.cpu()


def _num_classes(given: int | None, output: torch.Tensor, target: torch.Tensor) -> int:
    if output.dim() == target.dim() + 1:
        return max(given or 0, output.shape[-1])
    if given:
        return given
    return int(torch.maximum(output.max(), target.max())) + 1  # labels only: one synchronisation


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` for count tensors of the same number of dimensions but possibly different sizes: the smaller
    one is padded with zeros (a class or task seen in one chunk only)."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]
    out = a.new_zeros(shape)
    out[tuple(slice(0, s) for s in a.shape)] += a
    out[tuple(slice(0, s) for s in b.shape)] += b
    return out


# ---------------------------------------------------------------------------------------------- accuracy matrix


class AccuracyMatrix:
    """The accuracy matrix ``R[i, j]``: accuracy on experience j after training experience i.

    ``update(trained, evaluated, accuracy)`` records one entry; ``trained=None`` records the accuracy of the
    model before any training (the vector ``b`` that forward transfer needs).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every entry."""
        self._entries: dict[tuple[int, int], float] = {}
        self._initial: dict[int, float] = {}

    def update(self, trained: int | None, evaluated: int, accuracy: float) -> None:
        """Record the accuracy on experience ``evaluated`` after training experience ``trained``."""
        if trained is None:
            self._initial[int(evaluated)] = float(accuracy)
        else:
            self._entries[int(trained), int(evaluated)] = float(accuracy)

    def result(self) -> torch.Tensor:
        """``R`` as a float64 tensor ``[rows, cols]``, NaN where nothing was recorded."""
        if not self._entries:
            return torch.zeros(0, 0, dtype=torch.float64)
        rows = 1 + max(i for i, _ in self._entries)
        cols = 1 + max(max(j for _, j in self._entries), max(self._initial, default=-1))
        matrix = torch.full((rows, cols), math.nan, dtype=torch.float64)
        for (i, j), v in self._entries.items():
            matrix[i, j] = v
        return matrix

    def initial(self) -> torch.Tensor:
        """``b``: the accuracies before any training, NaN where unknown."""
        if not self._initial:
            return torch.zeros(0, dtype=torch.float64)
        b = torch.full((1 + max(self._initial),), math.nan, dtype=torch.float64)
        for j, v in self._initial.items():
            b[j] = v
        return b

    def state_dict(self) -> dict[str, Any]:
        """The entries as plain lists (``torch.save`` with ``weights_only`` loads them)."""
        return {"entries": [[i, j, v] for (i, j), v in self._entries.items()],
                "initial": [[j, v] for j, v in self._initial.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._entries = {(int(i), int(j)): float(v) for i, j, v in state["entries"]}
        self._initial = {int(j): float(v) for j, v in state["initial"]}


def _finite(x: float) -> bool:
    return not math.isnan(x)


def _last_row(matrix: torch.Tensor) -> int | None:
    known = (~matrix.isnan()).any(dim=1).nonzero().flatten()
    return int(known[-1]) if len(known) else None


def forgetting_per_experience(matrix: torch.Tensor, k: int | None = None) -> dict[int, float]:
    """Chaudhry et al. (2018): ``f_j = max_{l<k} R[l, j] - R[k, j]`` for each experience ``j < k``.

    ``k`` defaults to the last row with any entry.
    """
    k = _last_row(matrix) if k is None else k
    out: dict[int, float] = {}
    if k is None:
        return out
    for j in range(min(k, matrix.shape[1])):
        current = float(matrix[k, j])
        previous = [float(v) for v in matrix[:k, j] if _finite(float(v))]
        if _finite(current) and previous:
            out[j] = max(previous) - current
    return out


def backward_transfer_per_experience(matrix: torch.Tensor, k: int | None = None) -> dict[int, float]:
    """Lopez-Paz & Ranzato (2017): ``R[k, j] - R[j, j]`` for each experience ``j < k``."""
    k = _last_row(matrix) if k is None else k
    out: dict[int, float] = {}
    if k is None:
        return out
    for j in range(min(k, matrix.shape[1])):
        now, then = float(matrix[k, j]), float(matrix[j, j])
        if _finite(now) and _finite(then):
            out[j] = now - then
    return out


def forward_transfer_per_experience(matrix: torch.Tensor, initial: torch.Tensor) -> dict[int, float]:
    """Lopez-Paz & Ranzato (2017): ``R[i-1, i] - b[i]`` for each experience ``i >= 1`` where both are known."""
    out: dict[int, float] = {}
    for i in range(1, min(matrix.shape[0] + 1, matrix.shape[1], len(initial))):
        before, base = float(matrix[i - 1, i]), float(initial[i])
        if _finite(before) and _finite(base):
            out[i] = before - base
    return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def forgetting(matrix: torch.Tensor, k: int | None = None) -> float:
    """Average forgetting after training experience ``k`` (Chaudhry et al., 2018); NaN when undefined."""
    return _mean(forgetting_per_experience(matrix, k).values())


def backward_transfer(matrix: torch.Tensor, k: int | None = None) -> float:
    """BWT after training experience ``k`` (Lopez-Paz & Ranzato, 2017); NaN when undefined."""
    return _mean(backward_transfer_per_experience(matrix, k).values())


def forward_transfer(matrix: torch.Tensor, initial: torch.Tensor) -> float:
    """FWT (Lopez-Paz & Ranzato, 2017): the mean of ``R[i-1, i] - b[i]`` over ``i >= 1``; NaN when undefined."""
    return _mean(forward_transfer_per_experience(matrix, initial).values())


class _MatrixMetric:
    def __init__(self) -> None:
        self.matrix = AccuracyMatrix()

    def update(self, trained: int | None, evaluated: int, accuracy: float) -> None:
        """Record the accuracy on experience ``evaluated`` after training ``trained`` (None: before training)."""
        self.matrix.update(trained, evaluated, accuracy)

    def reset(self) -> None:
        """Forget every entry."""
        self.matrix.reset()

    def result(self) -> float:
        """The mean of :meth:`per_experience`; NaN when it is empty."""
        return _mean(self.per_experience().values())

    def per_experience(self) -> dict[int, float]:
        raise NotImplementedError


class Forgetting(_MatrixMetric):
    """Average forgetting (Chaudhry et al., 2018) after the last trained experience; ``per_experience()``
    gives ``f_j`` for each experience."""

    def per_experience(self) -> dict[int, float]:
        """``f_j`` for each experience ``j`` before the last trained one."""
        return forgetting_per_experience(self.matrix.result())


class BackwardTransfer(_MatrixMetric):
    """Backward transfer, BWT (Lopez-Paz & Ranzato, 2017), after the last trained experience."""

    def per_experience(self) -> dict[int, float]:
        """``R[k, j] - R[j, j]`` for each experience ``j`` before the last trained one ``k``."""
        return backward_transfer_per_experience(self.matrix.result())


class ForwardTransfer(_MatrixMetric):
    """Forward transfer, FWT (Lopez-Paz & Ranzato, 2017); needs the accuracies before training
    (``update(None, j, acc)``)."""

    def per_experience(self) -> dict[int, float]:
        """``R[i-1, i] - b[i]`` for each experience ``i >= 1`` where both are known."""
        return forward_transfer_per_experience(self.matrix.result(), self.matrix.initial())


# ---------------------------------------------------------------------------------------------- resources


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class WallTime:
    """Elapsed wall-clock seconds from ``reset()`` to the last ``update()`` (or to now, when never updated).

    With a CUDA ``device``, each reading first waits for the device's queued work.
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def _now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def reset(self) -> None:
        """Start measuring now."""
        self._start, self._end = self._now(), None

    def update(self) -> None:
        """Mark now as the end of the measured period."""
        self._end = self._now()

    def result(self) -> float:
        """Seconds elapsed."""
        end = self._end if self._end is not None else self._now()
        return end - self._start

    def state_dict(self) -> dict[str, Any]:
        """``{"elapsed": seconds so far, "running": no update() yet}``; a meter that loads it continues the
        period from there (the time between the two, a checkpoint's downtime, is not counted)."""
        running = self._end is None
        end = self._now() if running else self._end
        return {"elapsed": _minus(end, self._start), "running": running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the period of :meth:`state_dict`: ``elapsed`` already counted, measuring on from now."""
        now = self._now()
        self._start = _minus(now, state["elapsed"])
        self._end = None if state["running"] else now


def _minus(a: Any, b: Any) -> Any:
    """``a - b`` for numbers or for tuples / lists of numbers (element-wise)."""
    if isinstance(a, (tuple, list)):
        return tuple(x - y for x, y in zip(a, b))
    return a - b


class CPUUsage(WallTime):
    """Average CPU usage of the process, in percent of one core (above 100 with several threads busy), from
    ``reset()`` to the last ``update()`` (or now)."""

    def _now(self) -> tuple[float, float]:  # type: ignore[override]
        _sync(self.device)
        return time.perf_counter(), time.process_time()

    def result(self) -> float:
        """CPU seconds of the process over wall-clock seconds, in percent (0.0 for an empty period)."""
        end = self._end if self._end is not None else self._now()
        wall = end[0] - self._start[0]
        return 100.0 * (end[1] - self._start[1]) / wall if wall > 0 else 0.0


def current_rss_mb() -> float:
    """The resident memory of this process in MiB (``/proc`` on Linux; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


class _RSSSampler:
    """One daemon thread that samples the resident memory for every active :class:`MaxRAM`."""

    def __init__(self) -> None:
        self.watchers: weakref.WeakSet[MaxRAM] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, watcher: MaxRAM) -> None:
        with self.lock:
            self.watchers.add(watcher)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="clkernel-max-ram", daemon=True)
                self.thread.start()

    def discard(self, watcher: MaxRAM) -> None:
        with self.lock:
            self.watchers.discard(watcher)

    def _run(self) -> None:
        while True:
            with self.lock:
                watchers = list(self.watchers)
                if not watchers:
                    self.thread = None
                    return
            every = min(w.every for w in watchers)
            del watchers
            time.sleep(every)
            rss = current_rss_mb()
            with self.lock:
                for w in list(self.watchers):
                    w._observe(rss)


_SAMPLER = _RSSSampler()


class MaxRAM:
    """The largest resident memory (MiB) of the process since ``reset()``, sampled every ``every`` seconds by a
    background thread and at each ``update()`` / ``result()``. ``close()`` stops the sampling."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = positive_number(every, "every", "max RAM")
        self._max = 0.0
        self.reset()

    def _observe(self, rss: float) -> None:
        if rss > self._max:
            self._max = rss

    def reset(self) -> None:
        """Start a new period, and sampling."""
        self._max = current_rss_mb()
        _SAMPLER.add(self)

    def update(self) -> None:
        """Sample now."""
        self._observe(current_rss_mb())

    def result(self) -> float:
        """The peak resident memory in MiB since the last reset."""
        self.update()
        return self._max

    def state_dict(self) -> dict[str, Any]:
        """``{"max": MiB}``, the peak so far."""
        return {"max": float(self._max)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the period: the peak is at least the one recorded."""
        self._observe(float(state["max"]))

    def close(self) -> None:
        """Stop the background sampling."""
        _SAMPLER.discard(self)


_GPU_WATCHERS: weakref.WeakSet[MaxGPUMemory] = weakref.WeakSet()


class MaxGPUMemory:
    """The largest GPU memory (MiB) allocated by tensors on a CUDA ``device`` since ``reset()``.

    Several instances may measure nested periods: resetting CUDA's peak counter first folds it into the others.
    """

    def __init__(self, device: str | torch.device = "cuda") -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"max GPU memory needs a CUDA device, got {self.device}")
        if not torch.cuda.is_available():
            raise RuntimeError("max GPU memory: CUDA is not available")
        self._max = 0
        _GPU_WATCHERS.add(self)
        self.reset()

    def _fold(self) -> None:
        peak = torch.cuda.max_memory_allocated(self.device)
        for w in list(_GPU_WATCHERS):
            if w.device == self.device:
                w._max = max(w._max, peak)

    def reset(self) -> None:
        """Start a new period."""
        self._fold()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._max = torch.cuda.memory_allocated(self.device)

    def update(self) -> None:
        """Fold the device's peak so far into this period."""
        self._max = max(self._max, torch.cuda.max_memory_allocated(self.device))

    def result(self) -> float:
        """The peak allocated GPU memory in MiB since the last reset."""
        self.update()
        return self._max / MB

    def state_dict(self) -> dict[str, Any]:
        """``{"max": bytes}``, the peak so far."""
        self.update()
        return {"max": int(self._max)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the period: the peak is at least the one recorded."""
        self._max = max(self._max, int(state["max"]))


class DiskUsage:
    """The total size (MiB) of the files under the given folders (or files), measured at ``update()``.

    A path that does not exist (yet) counts as 0.
    """

    def __init__(self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("disk usage needs at least one path")
        self._value: float | None = None

    def reset(self) -> None:
        """Forget the last measurement."""
        self._value = None

    def update(self) -> None:
        """Measure now."""
        total = 0
        for path in self.paths:
            if path.is_file():
                total += path.stat().st_size
            elif path.is_dir():
                for root, _, files in os.walk(path):
                    for name in files:
                        try:
                            total += os.lstat(os.path.join(root, name)).st_size
                        except OSError:  # removed while walking
                            pass
        self._value = total / MB

    def result(self) -> float:
        """The size in MiB at the last update (measured now if never updated)."""
        if self._value is None:
            self.update()
        return self._value  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        """``{"value": MiB at the last update, or None}``."""
        return {"value": self._value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._value = None if state["value"] is None else float(state["value"])
