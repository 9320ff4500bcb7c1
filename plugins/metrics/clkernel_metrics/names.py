"""The naming scheme of metric values: ``QUANTITY_GRANULARITY/PHASE/STREAM[/expNNN][/taskNNN][/classNNN]``.

* ``QUANTITY``: what is measured (``acc``, ``loss``, ``top5_acc``, ``class_acc``, ``accuracy_matrix``,
  ``confusion_matrix``, ``forgetting``, ``bwt``, ``fwt``, ``time``, ``cpu_usage``, ``max_ram``, ``max_gpu``,
  ``disk_usage``). Quantities may contain ``_``.
* ``GRANULARITY``: over what it is measured, one of :data:`GRANULARITIES` (``mb``, ``running_epoch``, ``epoch``,
  ``exp``, ``exp_mean``, ``stream``).
* ``PHASE``: ``train`` or ``eval``; ``STREAM``: the stream's name (``state.stream_name``: ``train``, ``test``...).
* Optional trailing parts, in this order, each a key and a number of at least three digits: the experience
  (``exp002``), the task label (``task001``) and the class (``class007``).

Examples: ``acc_epoch/train/train``, ``acc_exp/eval/test/exp002``, ``acc_stream/eval/test``,
``acc_exp_mean/eval/test``, ``class_acc_stream/eval/test/class003``, ``accuracy_matrix_stream/eval/test``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GRANULARITIES", "metric_name", "parse_name"]

#: Granularity suffixes, longest first so that parsing picks ``exp_mean`` over ``exp``.
GRANULARITIES: tuple[str, ...] = ("running_epoch", "exp_mean", "stream", "epoch", "exp", "mb")
_KEYS = ("exp", "task", "class")


def metric_name(quantity: str, granularity: str, phase: str, stream: str, *, exp: int | None = None,
                task: int | None = None, cls: int | None = None) -> str:
    """The name of one metric value, following the scheme of this module."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; granularities: {', '.join(GRANULARITIES)}")
    parts = [f"{quantity}_{granularity}", phase, stream or "unnamed"]
    for key, value in zip(_KEYS, (exp, task, cls)):
        if value is not None:
            parts.append(f"{key}{int(value):03d}")
    return "/".join(parts)


def parse_name(name: str) -> dict[str, Any]:
    """Split a name of the scheme into ``quantity, granularity, phase, stream, exp, task, class``.

    Parts that are absent are None; a name that does not follow the scheme raises ValueError.
    """
    parts = name.split("/")
    if len(parts) < 3:
        raise ValueError(f"metric name {name!r} does not follow QUANTITY_GRANULARITY/PHASE/STREAM[/...]")
    head = parts[0]
    granularity = next((g for g in GRANULARITIES if head.endswith("_" + g)), None)
    if granularity is None:
        raise ValueError(f"metric name {name!r}: {head!r} does not end with a granularity "
                         f"({', '.join(GRANULARITIES)})")
    out: dict[str, Any] = {"quantity": head[: -len(granularity) - 1], "granularity": granularity,
                           "phase": parts[1], "stream": parts[2], "exp": None, "task": None, "class": None}
    for part in parts[3:]:
        key = next((k for k in _KEYS if part.startswith(k) and part[len(k):].isdigit()), None)
        if key is None:
            raise ValueError(f"metric name {name!r}: unknown part {part!r} (expected expNNN, taskNNN, classNNN)")
        out[key] = int(part[len(key):])
    return out
