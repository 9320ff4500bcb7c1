"""Metric families for the :class:`~clkernel_metrics.Evaluator`: which values, at which granularities.

Granularities (the names follow :mod:`clkernel.names`, built with :func:`clkernel.metric_name`):

* ``mb`` (train): the last minibatch; ``running_epoch`` (train): the epoch so far, emitted every ``every``
  training iterations; ``epoch`` (train): the whole epoch;
* ``exp`` (eval; for resource metrics also train): one experience; ``stream`` (eval; resource metrics also
  train): the whole ``eval()`` (or ``train()``) call; ``exp_mean``: the mean of the ``exp`` values of a stream.

Scalars reach the loggers as Python floats, except ``mb`` and ``running_epoch`` values: 0-d float64 tensors on
the training device, so that emitting them never synchronises (a logger that writes one turns it into a
number).

Under ``torch.distributed`` the ``epoch``, ``exp``, ``stream`` and ``exp_mean`` values, the class counts, the
confusion matrices and the accuracy matrix's accuracies are summed over the ranks as counts and sums (never
averages of averages) at the boundary that emits them, so every rank gets what one process computes on the whole
data. The ``mb`` and ``running_epoch`` values stay the rank's own (reducing them would take a collective every
``every`` iterations); resource values are the largest over the ranks (the slowest rank's time, the largest
process's memory).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Iterable

import torch

from clkernel import TrainState, distributed
from clkernel.log import get_logger
from clkernel.names import metric_name
from clkernel.validate import positive_int, positive_number

from clkernel_metrics.evaluator import Chunk, Deferred, PluginMetric, max_over_ranks, sum_over_ranks
from clkernel_metrics.standalone import (
    AccuracyMatrix, CPUUsage, DiskUsage, MaxGPUMemory, MaxRAM, Mean, WallTime, add_padded,
    backward_transfer_per_experience, bincount, class_accuracies, forgetting_per_experience,
    forward_transfer_per_experience,
)

__all__ = [
    "INITIAL_ACCURACY", "AccuracyMatrixMetrics", "AccuracyMetrics", "ClassAccuracyMetrics", "ConfusionMatrixMetrics",
    "LossMetrics", "ResourceMetrics", "TopKAccuracyMetrics", "cpu_usage_metrics", "disk_usage_metrics",
    "gpu_usage_metrics", "ram_usage_metrics", "timing_metrics",
]

#: The quantity of the accuracies before any training, ``b`` (``accuracy_initial_stream/eval/STREAM``).
INITIAL_ACCURACY = "accuracy_initial"

log = get_logger("clkernel.metrics")


def _require_some(what: str, **flags: bool) -> None:
    if not any(flags.values()):
        raise ValueError(f"{what}: choose at least one of {', '.join(flags)}")


def _exp_index(state: TrainState) -> int:
    return state.experience.index if state.experience is not None else 0


def _origin(state: TrainState) -> tuple[int, bool]:
    """``(origin experience index, whether this experience ends its origin)`` of ``state.experience``.

    A mini-experience of an online stream (``clkernel_benchmarks.OnlineExperience``, read through its public
    ``origin_index`` and ``is_last_subexp``) belongs to the experience of the original stream it was cut from, and
    ends it when it is its last mini-experience; any other experience is its own origin and ends it.
    """
    exp = state.experience
    if exp is None:
        return 0, True
    origin = getattr(exp, "origin_index", None)
    last = getattr(exp, "is_last_subexp", None)
    return (exp.index if origin is None else int(origin)), (True if last is None else bool(last))


# ---------------------------------------------------------------------------------------------- means


class _MeanFamily(PluginMetric):
    """A sample-weighted mean (accuracy, loss, top-k) at the minibatch, epoch and experience/stream levels.

    :param minibatch: ``QUANTITY_mb/train/STREAM``, the last training minibatch, every ``every`` iterations.
    :param running_epoch: ``QUANTITY_running_epoch/train/STREAM``, the training epoch so far (pooled over its
        samples), every ``every`` iterations (``state.iteration`` a multiple of ``every``).
    :param epoch: ``QUANTITY_epoch/train/STREAM``, at each epoch's end.
    :param experience: ``QUANTITY_exp/eval/STREAM/expNNN``, per evaluated experience.
    :param stream: ``QUANTITY_stream/eval/STREAM`` (pooled over every sample of the evaluated stream) and
        ``QUANTITY_exp_mean/eval/STREAM`` (the mean over its experiences).
    :param every: the period, in training iterations, of the ``mb`` and ``running_epoch`` values.
    :raises ValueError: when no granularity is chosen, or ``every`` is not a positive integer.
    """

    uses_outputs = True
    quantity = ""

    def __init__(self, *, minibatch: bool = False, running_epoch: bool = False, epoch: bool = True,
                 experience: bool = True, stream: bool = True, every: int = 1) -> None:
        _require_some(self.quantity, minibatch=minibatch, running_epoch=running_epoch, epoch=epoch,
                      experience=experience, stream=stream)
        positive_int(every, "every", self.quantity)
        self.minibatch, self.running_epoch, self.epoch = minibatch, running_epoch, epoch
        self.experience, self.stream, self.every = experience, stream, every
        self.per_minibatch = minibatch or running_epoch
        self._epoch, self._exp = Mean(), Mean()
        self._last: tuple[torch.Tensor, int] | None = None
        self._exps: list[tuple[torch.Tensor, int]] = []

    def numerator(self, chunk: Chunk) -> torch.Tensor:
        """The sum of the quantity over the chunk's samples."""
        raise NotImplementedError

    def update(self, chunk: Chunk) -> None:
        if chunk.phase == "train":
            if self.minibatch:
                last = chunk.last_minibatch
                self._last = (self.numerator(last), last.n)
            if self.epoch or self.running_epoch:
                self._epoch.add(self.numerator(chunk), chunk.n)
        else:
            self._exp.add(self.numerator(chunk), chunk.n)  # the stream's values come from the experiences

    def _name(self, granularity: str, phase: str, state: TrainState, exp: int | None = None) -> str:
        return _metric_name(self.quantity, granularity, phase, state.stream_name, exp)

    def before_training_epoch(self, state: TrainState) -> None:
        self._epoch.reset()
        self._last = None

    def after_training_iteration(self, state: TrainState) -> dict[str, Any] | None:
        if state.iteration % self.every:
            return None
        out = {}
        if self.minibatch and self._last is not None:
            total, n = self._last
            out[self._name("mb", "train", state)] = _as_tensor(total).to(torch.float64) / n  # 0-d: no sync
        if self.running_epoch and self._epoch.count:
            out[self._name("running_epoch", "train", state)] = self._epoch.result_tensor()
        return out or None

    def after_training_epoch(self, state: TrainState) -> dict[str, Any] | None:
        if not self.epoch:
            return None
        _sum_mean(self._epoch)
        if self._epoch.count == 0:
            return None
        n = self._epoch.count
        return {self._name("epoch", "train", state): _ratio(self._epoch.total, n)}

    def before_eval(self, state: TrainState) -> None:
        self._exps = []
        self._tasks: set[int] = set()

    def state_dict(self) -> dict[str, Any]:
        """The training epoch's sums so far (``epoch``: a :class:`Mean`'s state) and the last minibatch's (``last``:
        ``[total, n]`` or None), as accumulated, so that a run resumed mid-epoch emits the same running and epoch
        values. (Evaluation sums are not kept: a checkpoint is never taken inside an evaluation.)"""
        return {"epoch": self._epoch.state_dict(), "last": None if self._last is None else list(self._last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch.load_state_dict(state["epoch"])
        if distributed.rank() != 0:  # rank 0's sums, loaded by every rank: counted once, at rank 0
            self._epoch.reset()
        last = state["last"]
        self._last = None if last is None else (last[0], int(last[1]))

    def before_eval_exp(self, state: TrainState) -> None:
        self._exp.reset()

    def after_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        _sum_mean(self._exp)
        if self._exp.count == 0:
            return None
        n = self._exp.count
        entry: list[Any] = [0.0, n]  # the total, as a number once resolved (with this boundary's values)
        self._exps.append(entry)
        if state.experience is not None:
            self._tasks.update(state.experience.task_labels)
        experience = self.experience

        def value(t: torch.Tensor) -> float | None:
            entry[0] = t.item()
            return entry[0] / n if experience else None

        name = self._name("exp", "eval", state, _exp_index(state)) if experience else f"#{id(self)}"
        return {name: Deferred(_as_tensor(self._exp.total), value)}

    def after_eval(self, state: TrainState) -> dict[str, Any] | None:
        if not self.stream or not self._exps:
            return None
        # the experiences' totals were resolved at their ends: numbers, no tensor work left
        totals, counts = [t for t, _ in self._exps], [n for _, n in self._exps]
        return {self._name("stream", "eval", state): sum(totals) / sum(counts),  # every sample weighs the same
                self._name("exp_mean", "eval", state):  # every experience does
                sum(t / n for t, n in zip(totals, counts)) / len(counts)}


def _sum_mean(mean: Mean) -> None:
    """``mean``'s sum and count summed over the ranks (nothing in one process)."""
    mean.total, mean.count = sum_over_ranks([mean.total, mean.count])  # type: ignore[assignment]


@lru_cache(maxsize=4096)
def _metric_name(quantity: str, granularity: str, phase: str, stream: str, exp: int | None) -> str:
    """:func:`clkernel.metric_name`, remembered (the same names come back at every boundary)."""
    return metric_name(quantity, granularity, phase, stream, exp=exp)


def _as_tensor(x: torch.Tensor | float) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x))


def _ratio(total: torch.Tensor | float, n: int) -> Deferred:
    return Deferred(_as_tensor(total), lambda t: t.item() / n)


class AccuracyMetrics(_MeanFamily):
    """Top-1 accuracy (``acc_*``). With ``per_task``, a stream with several task labels also gets
    ``acc_stream/eval/STREAM/taskNNN`` for each task."""

    quantity = "acc"

    def __init__(self, *, per_task: bool = True, **granularities: Any) -> None:
        super().__init__(**granularities)
        self.per_task = per_task
        self._task_counts: torch.Tensor | None = None
        self._exp_task: int | None = 0
        self._exp_tasks: list[int | None] = []

    def numerator(self, chunk: Chunk) -> torch.Tensor:
        if chunk.phase == "eval" and self.per_task and self.stream and self._exp_task is None:
            counts = chunk.task_counts  # an experience with several task labels: counted sample by sample
            self._task_counts = counts if self._task_counts is None else add_padded(self._task_counts, counts)
        return chunk.correct_sum

    def before_eval(self, state: TrainState) -> None:
        super().before_eval(state)
        self._task_counts = None
        self._exp_tasks: list[int | None] = []

    def before_eval_exp(self, state: TrainState) -> None:
        super().before_eval_exp(state)
        labels = state.experience.task_labels if state.experience is not None else [0]
        self._exp_task = labels[0] if len(labels) == 1 else None

    def after_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        out = super().after_eval_exp(state)
        if self._exp.count:  # summed over the ranks now
            self._exp_tasks.append(self._exp_task)
        return out

    def after_eval(self, state: TrainState) -> dict[str, Any] | None:
        out = super().after_eval(state)
        if not (out and self.per_task and len(self._tasks) > 1):
            return out
        self._task_counts, = sum_over_ranks([self._task_counts], same_shapes=False)  # type: ignore[assignment]
        # experiences with one task label count as a whole for it; the others were counted per sample
        right: dict[int, float] = {}
        seen: dict[int, float] = {}
        for t, (r, n) in zip(self._exp_tasks, self._exps):
            if t is not None:
                right[t], seen[t] = right.get(t, 0.0) + r, seen.get(t, 0.0) + n
        stream = state.stream_name

        def per_task(values: torch.Tensor) -> dict[str, float]:
            counts = values.reshape(-1).tolist()
            for t in range(len(counts) // 2):
                wrong, r = counts[2 * t], counts[2 * t + 1]
                right[t], seen[t] = right.get(t, 0.0) + r, seen.get(t, 0.0) + wrong + r
            return {metric_name("acc", "stream", "eval", stream, task=t): right[t] / seen[t]
                    for t in sorted(seen) if seen[t] > 0}

        out["#per_task"] = Deferred(self._task_counts if self._task_counts is not None else torch.zeros(0), per_task,
                                    expand=True)
        return out


class LossMetrics(_MeanFamily):
    """Mean loss per sample (``loss_*``): ``state.loss`` in training (with every plugin's loss terms), the
    criterion on the model's outputs in evaluation."""

    quantity = "loss"

    def numerator(self, chunk: Chunk) -> torch.Tensor:
        return chunk.loss_sum


class TopKAccuracyMetrics(_MeanFamily):
    """Top-k accuracy (``topK_acc_*``, e.g. ``top5_acc_exp/eval/test/exp000``): the fraction of samples whose
    label is among the ``k`` largest logits (outputs must be logits ``[N, C]`` with ``C >= k``).

    :raises ValueError: when ``k`` is not a positive integer.
    """

    def __init__(self, k: int = 5, **granularities: Any) -> None:
        self.k = positive_int(k, "k", "top-k accuracy")
        self.quantity = f"top{k}_acc"
        super().__init__(**granularities)

    def numerator(self, chunk: Chunk) -> torch.Tensor:
        return chunk.topk_correct_sum(self.k)


# ---------------------------------------------------------------------------------------------- per class


class ClassAccuracyMetrics(PluginMetric):
    """Accuracy of each class (``class_acc_*/.../classNNN``), for the classes present."""

    uses_outputs = True

    def __init__(self, *, epoch: bool = False, experience: bool = True, stream: bool = True) -> None:
        _require_some("class accuracy", epoch=epoch, experience=experience, stream=stream)
        self.epoch, self.experience, self.stream = epoch, experience, stream
        self._counts: dict[str, torch.Tensor | None] = {"epoch": None, "exp": None, "stream": None}

    def update(self, chunk: Chunk) -> None:
        counts = chunk.class_counts
        for key in (("epoch",) if chunk.phase == "train" else ("exp", "stream")):
            old = self._counts[key]
            self._counts[key] = counts if old is None else add_padded(old, counts)

    def _emit(self, key: str, phase: str, state: TrainState, exp: int | None = None) -> dict[str, Any] | None:
        counts, = sum_over_ranks([self._counts[key]], same_shapes=False)
        if counts is None:
            return None
        stream = state.stream_name

        def expand(c: torch.Tensor) -> dict[str, float]:
            return {metric_name("class_acc", key, phase, stream, exp=exp, cls=k): v
                    for k, v in class_accuracies(c).items()}

        return {f"#class_acc_{key}": Deferred(counts, expand, expand=True)}

    def before_training_epoch(self, state: TrainState) -> None:
        self._counts["epoch"] = None

    def after_training_epoch(self, state: TrainState) -> dict[str, Any] | None:
        return self._emit("epoch", "train", state) if self.epoch else None

    def state_dict(self) -> dict[str, Any]:
        """The ``[C, 2]`` counts of the training epoch so far (and of the evaluation periods), or None."""
        return {"counts": dict(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._counts = {"epoch": None, "exp": None, "stream": None, **state["counts"]}
        if distributed.rank() != 0:  # rank 0's counts, loaded by every rank: counted once, at rank 0
            self._counts["epoch"] = None

    def before_eval(self, state: TrainState) -> None:
        self._counts["stream"] = None

    def before_eval_exp(self, state: TrainState) -> None:
        self._counts["exp"] = None

    def after_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        return self._emit("exp", "eval", state, _exp_index(state)) if self.experience else None

    def after_eval(self, state: TrainState) -> dict[str, Any] | None:
        return self._emit("stream", "eval", state) if self.stream else None


class ConfusionMatrixMetrics(PluginMetric):
    """Confusion matrix in evaluation (``confusion_matrix_stream/eval/STREAM``): a 2-D int64 tensor whose
    ``[i, j]`` counts samples of class i predicted as j; ``num_classes`` fixes its size (else the model's
    number of outputs, or more when labels exceed it). ``experience=True`` adds
    ``confusion_matrix_exp/eval/STREAM/expNNN`` per experience.

    :raises ValueError: when ``num_classes`` is not None nor a positive integer, or neither granularity is chosen.
    """

    uses_outputs = True

    def __init__(self, num_classes: int | None = None, *, experience: bool = False, stream: bool = True) -> None:
        _require_some("confusion matrix", experience=experience, stream=stream)
        if num_classes is not None:
            positive_int(num_classes, "num_classes", "confusion matrix")
        self.num_classes, self.experience, self.stream = num_classes, experience, stream
        self._exp: torch.Tensor | None = None
        self._stream: torch.Tensor | None = None

    def update(self, chunk: Chunk) -> None:
        if chunk.phase != "eval":
            return
        size = max(self.num_classes or 0, chunk.num_classes)
        counts = bincount(chunk.target * size + chunk.preds, size * size).view(size, size)
        self._exp = counts if self._exp is None else add_padded(self._exp, counts)
        if self.stream:
            self._stream = counts if self._stream is None else add_padded(self._stream, counts)

    def before_eval(self, state: TrainState) -> None:
        self._stream = None

    def before_eval_exp(self, state: TrainState) -> None:
        self._exp = None

    def after_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        if not self.experience:
            return None
        counts, = sum_over_ranks([self._exp], same_shapes=False)
        if counts is None:
            return None
        name = metric_name("confusion_matrix", "exp", "eval", state.stream_name, exp=_exp_index(state))
        return {name: Deferred(counts, lambda t: t.long())}

    def after_eval(self, state: TrainState) -> dict[str, Any] | None:
        if not self.stream:
            return None
        counts, = sum_over_ranks([self._stream], same_shapes=False)
        if counts is None:
            return None
        return {metric_name("confusion_matrix", "stream", "eval", state.stream_name):
                Deferred(counts, lambda t: t.long())}


# ---------------------------------------------------------------------------------------------- accuracy matrix


class AccuracyMatrixMetrics(PluginMetric):
    """The accuracy matrix and what derives from it: forgetting, backward and forward transfer.

    At the end of every ``eval()`` call that follows a training experience ``i`` (not a periodic evaluation in
    the middle of one), the accuracy on each evaluated experience ``j`` becomes ``R[i, j]`` of that stream; an
    ``eval()`` before any training records ``b[j]``. Emits, per stream (``experience`` / ``stream`` choose the
    per-experience values and their means), at the end of those ``eval()`` calls:

    * ``accuracy_matrix_stream/eval/STREAM``: ``R`` as a 2-D float64 CPU tensor ``[trained experiences,
      evaluated experiences]``, accuracies in ``[0, 1]``, NaN where unknown (``matrix``);
    * ``accuracy_initial_stream/eval/STREAM``: ``b`` as a 1-D float64 CPU tensor ``[evaluated experiences]``, NaN
      where unknown, emitted by an ``eval()`` before any training (``matrix`` or ``fwt``);
    * ``forgetting_exp/.../expJJJ`` and ``forgetting_stream``: Chaudhry et al. (2018), "Riemannian Walk for
      Incremental Learning" (``forgetting``);
    * ``bwt_exp`` and ``bwt_stream``: Lopez-Paz & Ranzato (2017), "Gradient Episodic Memory for Continual
      Learning" (``bwt``);
    * ``fwt_exp/.../expIII`` = ``R[i-1, i] - b[i]`` and ``fwt_stream``, same paper (``fwt``; needs the
      evaluation before training, hence ``needs_initial_eval``).

    Experience j of the evaluated stream is assumed to be the one trained as training experience j (as in every
    benchmark whose train and test streams are split the same way).

    Online streams (``clkernel_benchmarks.online_benchmark``): rows and columns are *origin* experiences, the
    experiences of the original stream, never mini-experiences. ``R[i, j]`` is recorded at the ``eval()`` that
    follows the last mini-experience of origin experience ``i`` (``is_last_subexp``); an ``eval()`` after any
    other mini-experience makes no row (nor ``b``) and emits nothing, like a periodic evaluation inside an
    experience. An evaluated stream that is itself split into mini-experiences is pooled by origin experience:
    ``R[i, j]`` is the accuracy over every sample of origin experience ``j``. Forgetting and BWT are then the
    textbook ones over origin experiences: with ``k`` the last origin experience trained to its end,
    ``f_j = max_{l<k} R[l, j] - R[k, j]`` and ``BWT = mean_{j<k} R[k, j] - R[j, j]``, over ``j < k`` only (the
    experience being trained is not forgotten).

    :raises ValueError: when no value is chosen, or forgetting / BWT / FWT with neither ``experience`` nor
        ``stream``.
    """

    uses_outputs = True

    def __init__(self, *, matrix: bool = True, forgetting: bool = False, bwt: bool = False, fwt: bool = False,
                 experience: bool = True, stream: bool = True) -> None:
        _require_some("accuracy matrix metrics", matrix=matrix, forgetting=forgetting, bwt=bwt, fwt=fwt)
        if (forgetting or bwt or fwt):
            _require_some("forgetting/bwt/fwt", experience=experience, stream=stream)
        self.matrix, self.forgetting, self.bwt, self.fwt = matrix, forgetting, bwt, fwt
        self.experience, self.stream = experience, stream
        self.needs_initial_eval = fwt
        self.matrices: dict[str, AccuracyMatrix] = {}
        self._trained: int | None = None  # the last origin experience trained to its end
        self._complete = True  # False after a mini-experience that is not the last of its origin experience
        self._in_experience = False
        self._current = Mean()
        self._pending: list[list[Any]] = []  # [origin experience, number right, samples] per evaluated experience
        self._warned = False

    def update(self, chunk: Chunk) -> None:
        if chunk.phase == "eval":
            self._current.add(chunk.correct_sum, chunk.n)

    def before_training_exp(self, state: TrainState) -> None:
        self._in_experience = True

    def after_training_exp(self, state: TrainState) -> None:
        self._in_experience = False
        origin, self._complete = _origin(state)
        if self._complete:
            self._trained = origin

    def before_eval(self, state: TrainState) -> None:
        self._pending = []

    def before_eval_exp(self, state: TrainState) -> None:
        self._current.reset()

    def after_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        _sum_mean(self._current)
        if not self._current.count:
            return None
        entry: list[Any] = [_origin(state)[0], 0.0, self._current.count]  # the number right, once resolved
        self._pending.append(entry)

        def record(t: torch.Tensor) -> dict[str, Any]:
            entry[1] = t.item()
            return {}

        return {f"#{id(self)}": Deferred(_as_tensor(self._current.total), record, expand=True)}

    def after_eval(self, state: TrainState) -> dict[str, Any] | None:
        if self._in_experience or not self._complete or not self._pending:
            return None  # inside a training experience, or inside an origin experience of an online stream
        pending, trained, stream = self._pending, self._trained, state.stream_name
        self._pending = []
        # the experiences' numbers right were resolved at their ends: numbers, no tensor work left
        acc = self.matrices.setdefault(stream, AccuracyMatrix())
        right: dict[int, float] = {}
        seen: dict[int, int] = {}
        for j, v, n in pending:  # mini-experiences pool into their origin
            right[j], seen[j] = right.get(j, 0.0) + v, seen.get(j, 0) + n
        for j in right:
            acc.update(trained, j, right[j] / seen[j])
        if trained is None:  # the evaluation before training: b
            wanted = self.matrix or self.fwt
            return {metric_name(INITIAL_ACCURACY, "stream", "eval", stream): acc.initial()} if wanted else None
        return self._values(stream)

    def _values(self, stream: str) -> dict[str, Any]:
        acc = self.matrices[stream]
        matrix = acc.result()
        out: dict[str, Any] = {}
        if self.matrix:
            out[metric_name("accuracy_matrix", "stream", "eval", stream)] = matrix
        for quantity, wanted, per in (
                ("forgetting", self.forgetting, lambda: forgetting_per_experience(matrix)),
                ("bwt", self.bwt, lambda: backward_transfer_per_experience(matrix)),
                ("fwt", self.fwt, lambda: forward_transfer_per_experience(matrix, acc.initial()))):
            if not wanted:
                continue
            values = per()
            if quantity == "fwt" and len(acc.initial()) == 0 and not self._warned:
                self._warned = True
                log.warning("fwt_needs_initial_eval", stream=stream,
                            hint="forward transfer needs an evaluation before the first training experience: "
                                 "pass the streams to strategy.train(..., eval_streams=...) (clkernel.run does), "
                                 "and the kernel evaluates them first (needs_initial_eval)")
            if self.experience:
                out.update({metric_name(quantity, "exp", "eval", stream, exp=j): v for j, v in values.items()})
            if self.stream and values:
                out[metric_name(quantity, "stream", "eval", stream)] = sum(values.values()) / len(values)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The matrices, the last origin experience trained to its end, whether the last one trained ended its
        origin, whether a training experience is in progress (a checkpoint inside one: a periodic evaluation
        after resuming must not record a row), and whether the FWT warning was given."""
        return {"matrices": {k: m.state_dict() for k, m in self.matrices.items()},
                "trained": -1 if self._trained is None else self._trained, "complete": self._complete,
                "in_experience": self._in_experience, "warned": self._warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.matrices = {}
        for k, s in state["matrices"].items():
            self.matrices[k] = AccuracyMatrix()
            self.matrices[k].load_state_dict(s)
        self._trained = None if state["trained"] < 0 else int(state["trained"])
        self._complete = bool(state.get("complete", True))  # absent from older checkpoints
        self._in_experience = bool(state.get("in_experience", False))
        self._warned = bool(state.get("warned", False))


# ---------------------------------------------------------------------------------------------- resources


class ResourceMetrics(PluginMetric):
    """Resource measurements over periods: epochs (train), experiences and streams (train and eval).

    ``make(state)`` builds the standalone meter (``reset / update / result``) for one period; it returns None when
    the measurement does not apply (GPU memory without CUDA).
    """

    def __init__(self, quantity: str, make: Callable[[TrainState], Any], *, epoch: bool = True,
                 experience: bool = True, stream: bool = True) -> None:
        _require_some(quantity, epoch=epoch, experience=experience, stream=stream)
        self.quantity, self.make = quantity, make
        self.epoch, self.experience, self.stream = epoch, experience, stream
        self._meters: dict[tuple[str, str], Any] = {}
        self._resumed: dict[tuple[str, str], dict[str, Any]] = {}  # meter states loaded, not yet restored

    def _start(self, granularity: str, phase: str, state: TrainState, wanted: bool) -> None:
        if not wanted:
            return
        key = (granularity, phase)
        self._resumed.pop(key, None)  # a new period: what was saved of the last one no longer matters
        if key not in self._meters:
            self._meters[key] = self.make(state)
        if self._meters[key] is not None:
            self._meters[key].reset()

    def before_run(self, state: TrainState) -> None:
        """A resumed run starts: the periods in progress at the checkpoint continue (their meters are built now,
        counting what was measured before the checkpoint)."""
        for key, saved in list(self._resumed.items()):
            meter = self._meters.get(key) or self.make(state)
            self._meters[key] = meter
            if meter is not None:
                meter.load_state_dict(saved)
        self._resumed = {}

    def state_dict(self) -> dict[str, Any]:
        """Each meter's state (``"granularity/phase"`` -> what its ``state_dict()`` gives), so that periods in
        progress at a checkpoint (the training call, experience and epoch) count on after resuming."""
        saved = {f"{g}/{p}": m.state_dict() for (g, p), m in self._meters.items()
                 if m is not None and hasattr(m, "state_dict")}
        saved.update({f"{g}/{p}": s for (g, p), s in self._resumed.items()})
        return {"meters": saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumed = {tuple(k.split("/", 1)): dict(v) for k, v in state["meters"].items()}  # type: ignore[misc]

    def _end(self, granularity: str, phase: str, state: TrainState, wanted: bool) -> dict[str, Any] | None:
        meter = self._meters.get((granularity, phase)) if wanted else None
        if meter is None:
            return None
        meter.update()
        exp = _exp_index(state) if granularity == "exp" else None
        return {metric_name(self.quantity, granularity, phase, state.stream_name, exp=exp):
                max_over_ranks(meter.result())}

    def before_training(self, state: TrainState) -> None:
        self._start("stream", "train", state, self.stream)

    def before_training_exp(self, state: TrainState) -> None:
        self._start("exp", "train", state, self.experience)

    def before_training_epoch(self, state: TrainState) -> None:
        self._start("epoch", "train", state, self.epoch)

    def after_training_epoch(self, state: TrainState) -> dict[str, Any] | None:
        return self._end("epoch", "train", state, self.epoch)

    def after_training_exp(self, state: TrainState) -> dict[str, Any] | None:
        return self._end("exp", "train", state, self.experience)

    def after_training(self, state: TrainState) -> dict[str, Any] | None:
        return self._end("stream", "train", state, self.stream)

    def before_eval(self, state: TrainState) -> None:
        self._start("stream", "eval", state, self.stream)

    def before_eval_exp(self, state: TrainState) -> None:
        self._start("exp", "eval", state, self.experience)

    def after_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        return self._end("exp", "eval", state, self.experience)

    def after_eval(self, state: TrainState) -> dict[str, Any] | None:
        return self._end("stream", "eval", state, self.stream)

    def close(self) -> None:
        for meter in self._meters.values():
            if meter is not None and hasattr(meter, "close"):
                meter.close()


def timing_metrics(*, epoch: bool = True, experience: bool = True, stream: bool = True) -> ResourceMetrics:
    """Wall-clock seconds (``time_*``); on CUDA each reading waits for the queued work."""
    return ResourceMetrics("time", lambda s: WallTime(s.device), epoch=epoch, experience=experience, stream=stream)


def cpu_usage_metrics(*, epoch: bool = True, experience: bool = True, stream: bool = True) -> ResourceMetrics:
    """Average CPU usage of the process in percent of one core (``cpu_usage_*``)."""
    return ResourceMetrics("cpu_usage", lambda s: CPUUsage(s.device), epoch=epoch, experience=experience,
                           stream=stream)


def ram_usage_metrics(every: float = 0.5, *, epoch: bool = True, experience: bool = True,
                      stream: bool = True) -> ResourceMetrics:
    """Peak resident memory of the process in MiB (``max_ram_*``), sampled every ``every`` seconds.

    :raises ValueError: when ``every`` is not a positive number.
    """
    every = positive_number(every, "every", "max RAM")
    return ResourceMetrics("max_ram", lambda s: MaxRAM(every), epoch=epoch, experience=experience, stream=stream)


def gpu_usage_metrics(*, epoch: bool = True, experience: bool = True, stream: bool = True) -> ResourceMetrics:
    """Peak GPU memory allocated by tensors, in MiB (``max_gpu_*``); nothing when the device is not CUDA."""
    warned: list[bool] = []

    def make(state: TrainState) -> MaxGPUMemory | None:
        if state.device.type != "cuda":
            if not warned:
                warned.append(True)
                log.warning("gpu_metric_without_cuda", device=str(state.device),
                            hint="max GPU memory is only measured when the strategy runs on CUDA")
            return None
        return MaxGPUMemory(state.device)

    return ResourceMetrics("max_gpu", make, epoch=epoch, experience=experience, stream=stream)


def disk_usage_metrics(paths: Iterable[Any], *, epoch: bool = False, experience: bool = True,
                       stream: bool = True) -> ResourceMetrics:
    """Total size in MiB of the files under ``paths`` (``disk_usage_*``), measured at each period's end."""
    paths = list(paths)
    DiskUsage(paths)  # validates now
    return ResourceMetrics("disk_usage", lambda s: DiskUsage(paths), epoch=epoch, experience=experience,
                           stream=stream)

