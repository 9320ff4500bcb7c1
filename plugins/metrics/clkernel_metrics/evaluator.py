"""The Evaluator: a training plugin that runs metric families and hands their values to every logger.

Per minibatch it only keeps references to the (detached) outputs, targets, task labels and loss. Every
``flush_every`` minibatches (fewer when the outputs are large), at each training iteration where a per-minibatch
family emits (every ``family.every`` iterations), and at each epoch or experience end, it concatenates them into
one :class:`Chunk` that every metric family updates its accumulators from (on the device, without
synchronising). At each boundary it collects the families' values, resolves every device value with a single
transfer (:class:`Deferred`), records them in its history and calls ``state.log_metrics``.

Under ``torch.distributed`` each rank accumulates over the minibatches it sees; at the boundaries that every rank
reaches (an evaluated experience's end, ``eval()``'s end, a training epoch's end) the families sum their counts
and sums over the ranks (:func:`sum_over_ranks`, one collective per family and boundary, never one per
minibatch) before computing a value, so that every rank gets the value one process computes on all the data.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Callable

import torch

import clkernel
from clkernel import TrainState, distributed
from clkernel.validate import positive_int

from clkernel_metrics.standalone import bincount, predictions, topk_correct

__all__ = ["Chunk", "Deferred", "Evaluator", "PluginMetric", "max_over_ranks", "resolve", "sum_over_ranks"]


def sum_over_ranks(values: list[torch.Tensor | float | int | None], *, same_shapes: bool = True
                   ) -> list[torch.Tensor | float | int | None]:
    """Each of ``values`` summed over the ranks of a ``torch.distributed`` run, all in one collective
    (``values`` itself, untouched, in one process). Every rank must call it at the same point, with as many
    values, in the same order: call it at boundaries that every rank reaches, never per evaluation minibatch (the
    ranks may see different numbers of them).

    :param values: counts and sums: tensors of any shape and dtype on any device, Python numbers, or None (a
        count this rank has not started, taken as zeros).
    :param same_shapes: True when every rank's value has the same shape and none is None (0-d sums, counts of
        a fixed size): one collective. False: the shapes may differ (``[C, 2]`` class counts where one rank saw
        more classes) or be None; the shapes go round first (a second collective) and each value is padded with
        zeros at the end of every dimension to the largest shape.
    :returns: the sums, each as its value was given (a tensor keeps its dtype and device, an int stays an int,
        a float a float); with ``same_shapes=False`` a value that is None on every rank stays None.
    :raises ValueError: for a value that is not a tensor, number or None, or None with ``same_shapes``.
    :raises RuntimeError: from ``torch.distributed`` (a rank that failed, a timeout).
    """
    if not distributed.is_distributed():
        return values
    for v in values:
        if not (v is None or isinstance(v, (torch.Tensor, int, float))):
            raise ValueError(f"sum_over_ranks: counts and sums are tensors, numbers or None, got {type(v).__name__}")
    shapes = [None if v is None else (tuple(v.shape) if isinstance(v, torch.Tensor) else ()) for v in values]
    if same_shapes:
        if any(s is None for s in shapes):
            raise ValueError("sum_over_ranks: a value is None; pass same_shapes=False for counts a rank may lack")
    else:
        shapes = _largest_shapes(shapes)
    flat = []
    for v, shape in zip(values, shapes):
        if shape is None:
            continue
        t = torch.zeros(shape, dtype=torch.float64) if v is None else torch.as_tensor(v).detach().to(
            "cpu", torch.float64)
        if tuple(t.shape) != shape:
            t = torch.nn.functional.pad(t, [p for size, to in zip(reversed(t.shape), reversed(shape))
                                            for p in (0, to - size)])
        flat.append(t.reshape(-1))
    total = distributed.all_reduce_sum(torch.cat(flat)) if flat else torch.zeros(0, dtype=torch.float64)
    out: list[torch.Tensor | float | int | None] = []
    offset = 0
    for v, shape in zip(values, shapes):
        if shape is None:
            out.append(None)
            continue
        n = math.prod(shape)
        piece = total[offset:offset + n].view(shape)
        offset += n
        if isinstance(v, torch.Tensor):
            out.append(piece.to(v.device, v.dtype))
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(int(round(piece.item())))
        elif isinstance(v, float):
            out.append(piece.item())
        else:  # None here, counts elsewhere: int64 like the counts it stands for
            out.append(piece.round().long())
    return out


_MAX_DIMS = 8


def _largest_shapes(shapes: list[tuple[int, ...] | None]) -> list[tuple[int, ...] | None]:
    """The elementwise largest shape of each value over the ranks (None where no rank has it): every rank writes
    ``[present, ndim, sizes...]`` of each value in its own row of a zero table, and the table is summed."""
    if any(s is not None and len(s) > _MAX_DIMS for s in shapes):
        raise ValueError(f"sum_over_ranks: counts of more than {_MAX_DIMS} dimensions with same_shapes=False")
    width = 2 + _MAX_DIMS  # the same on every rank, whichever values it lacks
    table = torch.zeros(distributed.world_size(), len(shapes), width, dtype=torch.float64)
    row = table[distributed.rank()]
    for i, s in enumerate(shapes):
        if s is not None:
            row[i, 0], row[i, 1] = 1, len(s)
            row[i, 2:2 + len(s)] = torch.tensor(s, dtype=torch.float64)
    table = distributed.all_reduce_sum(table)
    out: list[tuple[int, ...] | None] = []
    for i in range(len(shapes)):
        rows = table[table[:, i, 0] > 0, i]
        if len(rows) == 0:
            out.append(None)
            continue
        ndim = int(rows[:, 1].max())
        out.append(tuple(int(x) for x in rows[:, 2:2 + ndim].max(0).values))
    return out


def max_over_ranks(value: float) -> float:
    """The largest of ``value`` over the ranks of a ``torch.distributed`` run (``value`` in one process): what
    resource measurements report (the slowest rank's time, the largest process's memory). Every rank must call it
    at the same point."""
    if not distributed.is_distributed():
        return value
    row = torch.zeros(distributed.world_size(), dtype=torch.float64)
    row[distributed.rank()] = value
    return float(distributed.all_reduce_sum(row).max())


class Deferred:
    """A value that needs a device tensor: ``fn(tensor on the CPU)`` computes it.

    :param tensor: any shape and dtype; a CPU tensor reaches ``fn`` unchanged, a tensor of another device arrives
        as float64 (every value of one boundary travels in one float64 transfer).
    :param fn: computes the value; returning None drops the entry.
    :param expand: ``fn`` returns a dict of names to values that replaces this entry (whose own name is then
        only a key, by convention starting with ``#``).
    """

    __slots__ = ("tensor", "fn", "expand")

    def __init__(self, tensor: torch.Tensor, fn: Callable[[torch.Tensor], Any], expand: bool = False) -> None:
        self.tensor, self.fn, self.expand = tensor, fn, expand


def resolve(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every :class:`Deferred` computed, transferring the tensors once per device (one
    synchronisation per device); other values are kept as they are, in order."""
    deferred = [(k, v) for k, v in values.items() if isinstance(v, Deferred)]
    if not deferred:
        return values
    by_device: dict[torch.device, list[tuple[str, Deferred]]] = {}
    for key, d in deferred:
        by_device.setdefault(d.tensor.device, []).append((key, d))
    done: dict[str, Any] = {}
    for device, items in by_device.items():
        if device.type == "cpu":  # nothing to transfer
            for key, d in items:
                done[key] = d.fn(d.tensor)
        else:
            done.update(_transfer(items))
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Deferred):
            if value.expand:
                out.update(done[key] or {})
            elif done[key] is not None:
                out[key] = done[key]
        else:
            out[key] = value
    return out


def _history_fix(evaluator: Evaluator, name: str, index: int) -> Callable[[torch.Tensor], dict[str, Any]]:
    def fix(value: torch.Tensor) -> dict[str, Any]:
        step, _ = evaluator._history[name][index]
        evaluator._history[name][index] = (step, value.item())
        return {}

    return fix


def _transfer(items: list[tuple[str, Deferred]]) -> dict[str, Any]:
    """Computes the deferred values of one device with one transfer (one synchronisation) to the CPU."""
    flat = torch.cat([d.tensor.detach().reshape(-1).to(torch.float64) for _, d in items]).cpu()
    return {key: d.fn(piece.view(d.tensor.shape))
            for (key, d), piece in zip(items, flat.split([d.tensor.numel() for _, d in items]))}


_DROP = object()


def _plain(value: Any) -> Any:
    """A history value as a checkpoint holds it (numbers, strings, None and tensors; containers of them), or
    ``_DROP`` for anything else (a figure)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return _compact(value.detach())
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        return torch.as_tensor(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else type(value)(items)
    if isinstance(value, dict):
        out = {k: _plain(v) for k, v in value.items()}
        return _DROP if any(v is _DROP for v in out.values()) else out
    return _DROP


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it when it views a larger storage (``torch.save`` would write the whole storage)."""
    return t.clone() if t.untyped_storage().nbytes() > t.nbytes else t


class _one_thread:
    """Runs the metric reductions on one intra-op thread: they are small, and waking OpenMP threads for them
    costs more than it saves (much more when other processes hold the cores)."""

    __slots__ = ("threads",)

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        if self.threads > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.threads > 1:
            torch.set_num_threads(self.threads)


class Chunk:
    """Consecutive minibatches of one phase, concatenated: what metric families update from.

    :param phase: ``"train"`` or ``"eval"``.
    :param output: the model's outputs, concatenated: logits ``[N, C]`` or labels ``[N]``, on the device.
    :param target: labels ``[N]`` (int64).
    :param tasks: the task labels of each minibatch (a list of tensors, concatenated on first use).
    :param losses: in training, ``state.loss`` of each minibatch (0-d tensors, the mean over its samples);
        None in evaluation (the loss then comes from ``criterion``).
    :param sizes: the number of samples of each minibatch.
    :param num_tasks: task labels in the data (for per-task counts); ``num_labels`` the classes in the data.

    Derived tensors (predictions, correct flags, loss sums) are computed once, on first use, and shared by every
    family of the evaluator.
    """

    def __init__(self, phase: str, output: torch.Tensor, target: torch.Tensor, tasks: list[torch.Tensor],
                 losses: list[torch.Tensor] | None, sizes: list[int], criterion: Callable[..., Any],
                 num_tasks: int, num_labels: int = 0) -> None:
        self.phase, self.output, self.target, self._tasks = phase, output, target, tasks
        self._losses, self.sizes, self._criterion, self.num_tasks = losses, sizes, criterion, num_tasks
        self.num_labels = num_labels
        self.n = int(target.shape[0])

    @cached_property
    def last_minibatch(self) -> Chunk:
        """The chunk's last minibatch alone (the chunk itself when it holds one): what ``mb`` values measure."""
        if len(self.sizes) <= 1:
            return self
        k = self.sizes[-1]
        return Chunk(self.phase, self.output[-k:], self.target[-k:], self._tasks[-1:],
                     None if self._losses is None else self._losses[-1:], [k], self._criterion, self.num_tasks,
                     self.num_labels)

    @cached_property
    def task(self) -> torch.Tensor:
        """Task labels of the samples (concatenated on first use)."""
        return self._tasks[0] if len(self._tasks) == 1 else torch.cat(self._tasks)

    @cached_property
    def preds(self) -> torch.Tensor:
        """Predicted labels."""
        return predictions(self.output, self.target)

    @cached_property
    def correct(self) -> torch.Tensor:
        """Per sample, whether the prediction is right."""
        return self.preds == self.target

    @cached_property
    def correct_sum(self) -> torch.Tensor:
        """Number of right predictions (0-d int64, on the device)."""
        return torch.count_nonzero(self.correct)  # cheaper than a sum of booleans on the CPU

    @cached_property
    def loss_sum(self) -> torch.Tensor:
        """Sum of the per-sample loss: from ``state.loss`` in training, from the criterion in evaluation."""
        if self._losses is not None and all(x is not None for x in self._losses):
            losses = self._losses
            stacked = torch.stack(losses if all(x.dim() == 0 for x in losses) else [x.reshape(()) for x in losses])
            if len(set(self.sizes)) == 1:
                return stacked.sum() * self.sizes[0]
            weights = torch.tensor(self.sizes, dtype=stacked.dtype)
            if stacked.is_cuda:
                weights = weights.pin_memory()
            return (stacked * weights.to(stacked.device, non_blocking=True)).sum()
        c = self._criterion
        try:
            if type(c) is torch.nn.CrossEntropyLoss and c.weight is None and c.ignore_index < 0 and \
                    self.output.dim() == 2:  # the usual criterion: its sum at once (a module call and a product less)
                return torch.nn.functional.cross_entropy(self.output, self.target, reduction="sum",
                                                         label_smoothing=c.label_smoothing)
            loss = c(self.output, self.target)
        except (RuntimeError, IndexError, ValueError) as e:
            raise ValueError(f"loss metric: the criterion cannot compare the model's outputs of shape "
                             f"{tuple(self.output.shape)} with the targets (up to {self.num_labels} classes in the "
                             f"data): {e}") from e
        reduction = getattr(self._criterion, "reduction", "mean")
        if loss.dim() > 0 or reduction == "none":
            return loss.sum()
        return loss if reduction == "sum" else loss * self.n

    def topk_correct_sum(self, k: int) -> torch.Tensor:
        """Number of samples whose label is among the ``k`` largest outputs."""
        cache = self.__dict__.setdefault("_topk", {})
        if k not in cache:
            cache[k] = topk_correct(self.output, self.target, k).sum()
        return cache[k]

    @cached_property
    def num_classes(self) -> int:
        """Classes of the model's outputs (logits) and of the data's labels; for outputs that are labels, the
        largest one seen plus one (one synchronisation)."""
        if self.output.dim() == self.target.dim() + 1:
            return max(int(self.output.shape[-1]), self.num_labels)
        return max(int(torch.maximum(self.output.max(), self.target.max())) + 1, self.num_labels)

    @cached_property
    def class_counts(self) -> torch.Tensor:
        """``[C, 2]`` counts of wrong and right predictions per class."""
        c = self.num_classes
        return bincount(self.target * 2 + self.correct, 2 * c).view(c, 2)

    @cached_property
    def task_counts(self) -> torch.Tensor:
        """``[T, 2]`` counts of wrong and right predictions per task label."""
        return bincount(self.task * 2 + self.correct, 2 * self.num_tasks).view(self.num_tasks, 2)


class PluginMetric:
    """A family of metric values computed inside an :class:`Evaluator` (not a plugin itself).

    Subclasses set:

    * ``uses_outputs``: receive :class:`Chunk` s through :meth:`update`;
    * ``per_minibatch``: :meth:`after_training_iteration` is called after the training iterations whose
      ``state.iteration`` is a multiple of ``every`` (the evaluator flushes its buffer there first, and only
      there, so that ``every = 32`` costs one flush per 32 iterations);
    * ``needs_initial_eval``: the evaluator then asks the kernel (:func:`~clkernel.hookspecs.TrainingEvents.
      needs_initial_eval`) to evaluate the streams before the first training experience.

    Event methods return ``{name: value}`` (names of :mod:`clkernel.names`; values may be :class:`Deferred`) or
    None.
    """

    uses_outputs = False
    per_minibatch = False
    every = 1
    needs_initial_eval = False

    def update(self, chunk: Chunk) -> None:
        """Accumulate from a chunk of minibatches (only when ``uses_outputs``)."""

    def before_run(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``before_run`` event (after ``load_state_dict`` when a run resumes): ``{name: value}``
        to log, or None."""

    def before_training(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``before_training`` event: ``{name: value}`` to log, or None."""

    def before_training_exp(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``before_training_exp`` event: ``{name: value}`` to log, or None."""

    def before_training_epoch(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``before_training_epoch`` event: ``{name: value}`` to log, or None."""

    def after_training_iteration(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``after_training_iteration`` event: ``{name: value}`` to log, or None."""

    def after_training_epoch(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``after_training_epoch`` event: ``{name: value}`` to log, or None."""

    def after_training_exp(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``after_training_exp`` event: ``{name: value}`` to log, or None."""

    def after_training(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``after_training`` event: ``{name: value}`` to log, or None."""

    def before_eval(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``before_eval`` event: ``{name: value}`` to log, or None."""

    def before_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``before_eval_exp`` event: ``{name: value}`` to log, or None."""

    def after_eval_exp(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``after_eval_exp`` event: ``{name: value}`` to log, or None."""

    def after_eval(self, state: TrainState) -> dict[str, Any] | None:
        """At the kernel's ``after_eval`` event: ``{name: value}`` to log, or None."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the family (plain Python values and tensors): every accumulator that
        lives across the events between which a checkpoint may be taken (training iterations, experience ends)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def close(self) -> None:
        """Release background resources (threads); the evaluator calls it from ``after_run``."""


class Evaluator:
    """Training plugin running metric families; their values go to every logger through ``log_metrics``.

    :param metrics: :class:`PluginMetric` families (see :mod:`clkernel_metrics.families`).
    :param name: the plugin's name (unique names let several evaluators run side by side).
    :param flush_every: at most this many minibatches are buffered before the families update (fewer but larger
        tensor operations)...
    :param flush_elements: ... and at most this many output elements (bounded memory with large outputs).
    :raises TypeError: for a family that is not a :class:`PluginMetric`.
    :raises ValueError: when ``flush_every`` or ``flush_elements`` is not a positive integer.

    ``all_metrics()`` returns the whole history, ``{name: [(step, value), ...]}``, the step being
    ``state.iteration``.
    """

    def __init__(self, *metrics: PluginMetric, name: str = "evaluator", flush_every: int = 256,
                 flush_elements: int = 2**21) -> None:
        for m in metrics:
            if not isinstance(m, PluginMetric):
                raise TypeError(f"Evaluator takes PluginMetric families (AccuracyMetrics(), ...); got "
                                f"{type(m).__name__}: {m!r}")
        self.flush_every = positive_int(flush_every, "flush_every", "Evaluator")
        self.flush_elements = positive_int(flush_elements, "flush_elements", "Evaluator")
        self.name = name
        self.metrics = list(metrics)
        self._collect = any(m.uses_outputs for m in self.metrics)
        self._data = [m for m in self.metrics if m.uses_outputs]
        #: the distinct ``every`` of the per-minibatch families: an iteration that none divides costs no flush
        self._every = tuple(sorted({positive_int(m.every, "every", type(m).__name__)
                                    for m in self.metrics if m.per_minibatch}))
        self._history: dict[str, list[tuple[int, Any]]] = {}
        self._num_tasks = 1
        self._num_labels = 0
        self._unsynced: list[tuple[str, int]] = []
        self._clear()

    # ------------------------------------------------------------------ run events

    @clkernel.hookimpl
    def needs_initial_eval(self, state: TrainState) -> bool:
        """True when a family (forward transfer) needs the evaluation streams evaluated before the first training
        experience; the kernel then evaluates them (``train(..., eval_streams=...)``, as ``clkernel.run`` does).
        """
        return any(m.needs_initial_eval for m in self.metrics)

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Release the families' background resources (the RAM sampling thread)."""
        for m in self.metrics:
            m.close()

    # ------------------------------------------------------------------ history

    def all_metrics(self) -> dict[str, list[tuple[int, Any]]]:
        """Every value emitted so far: name -> list of (step, value), 0-d tensors turned into floats."""
        return {k: [(s, float(v) if isinstance(v, torch.Tensor) and v.dim() == 0 else v) for s, v in vs]
                for k, vs in self._history.items()}

    def last_metrics(self) -> dict[str, Any]:
        """The last value of every metric emitted so far."""
        return {k: v[-1][1] for k, v in self.all_metrics().items()}

    def reset_history(self) -> None:
        """Forget the history."""
        self._history, self._unsynced = {}, []

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to emit what the uninterrupted run emits, bit for bit, for a checkpoint
        (``torch.save``, loadable with ``torch.load(weights_only=True)``): the history (values that are not
        numbers, strings or tensors, such as figures, are left out), every family's state, the minibatches
        buffered since the last flush (the families have not seen them yet: flushing them now would change how
        sums are grouped, and so their last bits) and the number of tasks and classes of the experience in
        progress. Taking it changes nothing in the run."""
        history = {}
        for name, values in self.all_metrics().items():
            kept = [(step, v) for step, v in ((step, _plain(v)) for step, v in values) if v is not _DROP]
            if kept:
                history[name] = kept
        buffer = {"outputs": [_compact(t) for t in self._outputs], "targets": [_compact(t) for t in self._targets],
                  "tasks": [_compact(t) for t in self._tasks],
                  "losses": [None if t is None else _compact(t) for t in self._losses]}
        return {"history": history, "metrics": [m.state_dict() for m in self.metrics], "buffer": buffer,
                "num_tasks": self._num_tasks, "num_labels": self._num_labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the same families, in the same order).

        :raises ValueError: when ``state`` holds another number of families than this evaluator has.
        """
        if len(state["metrics"]) != len(self.metrics):
            raise ValueError(f"{self.name}: the state holds {len(state['metrics'])} metric families, this evaluator "
                             f"has {len(self.metrics)} ({', '.join(type(m).__name__ for m in self.metrics)})")
        self._history = {k: [tuple(x) for x in v] for k, v in state["history"].items()}  # type: ignore[misc]
        self._unsynced = []
        for m, s in zip(self.metrics, state["metrics"]):
            m.load_state_dict(s)
        self._clear()
        buffer = state.get("buffer")  # absent from older checkpoints
        if buffer and distributed.rank() == 0:  # rank 0's minibatches, loaded by every rank: counted at rank 0
            self._outputs, self._targets = list(buffer["outputs"]), list(buffer["targets"])
            self._tasks, self._losses = list(buffer["tasks"]), list(buffer["losses"])
            self._buffered = sum(t.numel() for t in self._outputs)
            self._place = bool(self._outputs)  # moved to the training device at the first flush
        self._num_tasks = int(state.get("num_tasks", 1))
        self._num_labels = int(state.get("num_labels", 0))

    # ------------------------------------------------------------------ internals

    def _clear(self) -> None:
        self._place = False
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._tasks: list[torch.Tensor] = []
        self._losses: list[torch.Tensor | None] = []
        self._buffered = 0  # output elements kept

    def _flush(self, state: TrainState, phase: str) -> None:
        if not self._outputs:
            return
        if self._place:  # minibatches restored from a checkpoint join those of the resumed run's device
            device = self._outputs[-1].device
            self._outputs, self._targets, self._tasks = ([t.to(device) for t in ts]
                                                         for ts in (self._outputs, self._targets, self._tasks))
            self._losses = [None if t is None else t.to(device) for t in self._losses]
            self._place = False
        outs, ys, ts = self._outputs, self._targets, self._tasks
        one = len(outs) == 1
        chunk = Chunk(phase, outs[0] if one else torch.cat(outs), ys[0] if one else torch.cat(ys),
                      ts, self._losses if phase == "train" else None,
                      [int(y.shape[0]) for y in ys], state.criterion, self._num_tasks, self._num_labels)
        self._clear()
        with _one_thread():
            for m in self._data:
                m.update(chunk)

    def _boundary(self, event: str, state: TrainState) -> None:
        values: dict[str, Any] = {}
        for m in self.metrics:
            out = getattr(m, event)(state)
            if out:
                values.update(out)
        if not values:
            return
        per_minibatch = event == "after_training_iteration"
        if not per_minibatch and self._unsynced:
            # 0-d tensors emitted per minibatch become floats in the history, in the same transfer
            for i, (name, index) in enumerate(self._unsynced):
                values[f"#history{i}"] = Deferred(self._history[name][index][1], _history_fix(self, name, index),
                                                  expand=True)
            self._unsynced = []
        with _one_thread():
            values = resolve(values)
        step = state.iteration
        for k, v in values.items():
            entries = self._history.setdefault(k, [])
            if per_minibatch and isinstance(v, torch.Tensor) and v.dim() == 0:
                self._unsynced.append((k, len(entries)))
            entries.append((step, v))
        state.log_metrics(values)

    def _append(self, state: TrainState) -> None:
        out = state.mb_output
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"metrics need state.mb_output to be a tensor of logits [N, C] or labels [N], got "
                            f"{type(out).__name__}")
        mb = state.mb
        self._buffered += out.numel()
        self._outputs.append(out.detach() if out.requires_grad else out)  # detach only what holds a graph
        self._targets.append(mb[1])  # type: ignore[index]
        self._tasks.append(mb[2])  # type: ignore[index]

    # ------------------------------------------------------------------ training events

    @clkernel.hookimpl
    def before_run(self, state: TrainState) -> None:
        self._boundary("before_run", state)

    @clkernel.hookimpl
    def before_training(self, state: TrainState) -> None:
        self._boundary("before_training", state)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._boundary("before_training_exp", state)

    def _read_dataset(self, state: TrainState) -> None:
        """Number of task labels and classes in the experience's data (CPU tensors: no device work)."""
        exp = state.experience
        self._num_tasks = max(exp.task_labels, default=0) + 1 if exp is not None else 1
        self._num_labels = max(exp.classes, default=-1) + 1 if exp is not None else 0
        if exp is not None and state.dataset is not None and len(state.dataset) == len(exp.dataset):
            return  # the experience's own data: its classes and task labels are known
        for attr in ("task_labels", "targets"):
            values = getattr(state.dataset, attr, None)
            if isinstance(values, torch.Tensor) and values.device.type == "cpu" and len(values):
                if attr == "task_labels":
                    self._num_tasks = int(values.max()) + 1
                else:
                    self._num_labels = int(values.max()) + 1

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        self._read_dataset(state)

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        self._clear()
        self._boundary("before_training_epoch", state)

    @clkernel.hookimpl
    def after_training_iteration(self, state: TrainState) -> None:
        due = False
        if self._every:
            it = state.iteration
            for every in self._every:
                if it % every == 0:
                    due = True
                    break
        if self._collect:
            self._append(state)
            loss = state.loss
            self._losses.append(loss.detach() if loss is not None else None)
            if due or len(self._outputs) >= self.flush_every or self._buffered >= self.flush_elements:
                self._flush(state, "train")
        if due:
            self._boundary("after_training_iteration", state)

    @clkernel.hookimpl
    def after_training_epoch(self, state: TrainState) -> None:
        self._flush(state, "train")
        self._boundary("after_training_epoch", state)

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self._boundary("after_training_exp", state)

    @clkernel.hookimpl
    def after_training(self, state: TrainState) -> None:
        self._boundary("after_training", state)

    # ------------------------------------------------------------------ evaluation events

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        self._boundary("before_eval", state)

    @clkernel.hookimpl
    def before_eval_exp(self, state: TrainState) -> None:
        self._clear()
        self._boundary("before_eval_exp", state)

    @clkernel.hookimpl
    def after_eval_dataset_adaptation(self, state: TrainState) -> None:
        self._read_dataset(state)

    @clkernel.hookimpl
    def after_eval_iteration(self, state: TrainState) -> None:
        if self._collect:
            self._append(state)
            if len(self._outputs) >= self.flush_every or self._buffered >= self.flush_elements:
                self._flush(state, "eval")

    @clkernel.hookimpl
    def after_eval_exp(self, state: TrainState) -> None:
        self._flush(state, "eval")
        self._boundary("after_eval_exp", state)

    @clkernel.hookimpl
    def after_eval(self, state: TrainState) -> None:
        self._boundary("after_eval", state)

    def __repr__(self) -> str:
        return f"Evaluator({', '.join(type(m).__name__ for m in self.metrics)}, name={self.name!r})"

