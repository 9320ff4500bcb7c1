"""Metric names: ``QUANTITY_GRANULARITY/PHASE/STREAM[/expNNN][/taskNNN][/classNNN]``, built and parsed here.

Every metric value handed to :meth:`clkernel.TrainState.log_metrics` is named by this scheme, so that any
logger can group values by phase, stream, experience, task and class without knowing which metric made them.

* ``QUANTITY``: what is measured (``acc``, ``loss``, ``top5_acc``, ``class_acc``, ``accuracy_matrix``,
  ``forgetting``, ``bwt``, ``fwt``, ``time``...). Quantities may contain ``_``.
* ``GRANULARITY``: over what it is measured, one of :data:`GRANULARITIES`: ``mb`` (the last training
  minibatch), ``running_epoch`` (the training epoch so far), ``epoch``, ``exp`` (one evaluation experience),
  ``exp_mean`` (the mean over the evaluated experiences), ``stream`` (every sample of the evaluated stream).
* ``PHASE``: ``train`` or ``eval``; ``STREAM``: the stream's name (``state.stream_name``).
* Optional trailing parts, in this order, a key and a number of at least three digits: the experience
  (``exp002``), the task label (``task001``), the class (``class007``).

Examples: ``acc_epoch/train/train``, ``acc_exp/eval/test/exp002``, ``acc_stream/eval/test``,
``class_acc_stream/eval/test/class003``, ``accuracy_matrix_stream/eval/test``.
"""

from __future__ import annotations

from functools import lru_cache

from attrs import frozen

__all__ = ["GRANULARITIES", "PHASES", "MetricName", "metric_name", "parse_metric_name"]

#: Granularity suffixes, longest first so that parsing picks ``exp_mean`` over ``exp``.
GRANULARITIES: tuple[str, ...] = ("running_epoch", "exp_mean", "stream", "epoch", "exp", "mb")
#: The phases: training and evaluation.
PHASES: tuple[str, ...] = ("train", "eval")
_KEYS = ("exp", "task", "class")


@frozen
class MetricName:
    """The parts of one metric name; ``str(name)`` gives the name back.

    :param quantity: what is measured (``acc``, ``loss``, ``forgetting``...).
    :param granularity: one of :data:`GRANULARITIES`.
    :param phase: ``train`` or ``eval``.
    :param stream: the stream's name.
    :param exp: the experience number (``expNNN``), or None.
    :param task: the task label (``taskNNN``), or None.
    :param cls: the class id (``classNNN``), or None.
    """

    quantity: str
    granularity: str
    phase: str
    stream: str
    exp: int | None = None
    task: int | None = None
    cls: int | None = None

    @property
    def metric(self) -> str:
        """``QUANTITY_GRANULARITY``, the first part of the name (``acc_exp``)."""
        return f"{self.quantity}_{self.granularity}"

    def __str__(self) -> str:
        parts = [self.metric, self.phase, self.stream]
        parts += [f"{key}{value:03d}" for key, value in zip(_KEYS, (self.exp, self.task, self.cls))
                  if value is not None]
        return "/".join(parts)


def metric_name(quantity: str, granularity: str, phase: str, stream: str, *, exp: int | None = None,
                task: int | None = None, cls: int | None = None) -> str:
    """The name of one metric value: ``metric_name("acc", "exp", "eval", "test", exp=2)`` is
    ``"acc_exp/eval/test/exp002"``.

    An empty ``stream`` becomes ``"unnamed"`` (a dataset evaluated outside any stream).

    :raises ValueError: for an unknown granularity or phase, an empty quantity, a ``/`` inside a part, an
        experience, task or class number that is not an ``int`` >= 0, or a quantity ending like a granularity
        (``my_running`` with ``epoch``), whose name would not read back.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; granularities: {', '.join(GRANULARITIES)}")
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
    stream = stream or "unnamed"
    for what, text in (("quantity", quantity), ("stream", stream)):
        if not isinstance(text, str) or not text or "/" in text:
            raise ValueError(f"metric {what} must be a non-empty string without '/', got {text!r}")
    for key, value in zip(_KEYS, (exp, task, cls)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"metric {key} number must be an integer >= 0, got {value!r}")
    name = MetricName(quantity, granularity, phase, stream, exp, task, cls)
    if parse_metric_name(str(name)) != name:  # "my_running" + "epoch" would read back as "my" + "running_epoch"
        raise ValueError(f"metric quantity {quantity!r} ends like a granularity, so {str(name)!r} would not read back "
                         f"as quantity {quantity!r}, granularity {granularity!r}; rename the quantity")
    return str(name)


def parse_metric_name(name: str) -> MetricName:
    """The parts of a name built by :func:`metric_name` (cached: loggers parse every value's name).

    :raises ValueError: naming the part that does not follow the scheme, also for a name that is not a string
        (loggers that accept any name catch it and treat the value as unnamed).
    """
    if not isinstance(name, str):
        raise ValueError(f"metric name must be a string, got {type(name).__name__}: {name!r}")
    return _parse(name)


@lru_cache(maxsize=8192)
def _parse(name: str) -> MetricName:
    parts = name.split("/")
    if len(parts) < 3:
        raise ValueError(f"metric name {name!r} does not follow QUANTITY_GRANULARITY/PHASE/STREAM[/...]")
    head, phase, stream = parts[:3]
    granularity = next((g for g in GRANULARITIES if head.endswith("_" + g) and len(head) > len(g) + 1), None)
    if granularity is None:
        raise ValueError(f"metric name {name!r}: {head!r} does not end with a granularity "
                         f"({', '.join(GRANULARITIES)})")
    if phase not in PHASES:
        raise ValueError(f"metric name {name!r}: phase {phase!r} is not one of {', '.join(PHASES)}")
    if not stream:
        raise ValueError(f"metric name {name!r}: the stream is empty")
    numbers: dict[str, int] = {}
    position = 0
    for part in parts[3:]:
        key = next((k for k in _KEYS if part.startswith(k) and part[len(k):].isdigit()
                    and len(part) - len(k) >= 3), None)
        if key is None or _KEYS.index(key) < position or key in numbers:
            raise ValueError(f"metric name {name!r}: unexpected part {part!r} (expected expNNN, taskNNN, classNNN, "
                             f"in this order)")
        position = _KEYS.index(key)
        numbers[key] = int(part[len(key):])
    return MetricName(head[: -len(granularity) - 1], granularity, phase, stream, numbers.get("exp"),
                      numbers.get("task"), numbers.get("class"))
