"""Reading a named metric where the loop logs it: what early stopping and ``ReduceLROnPlateau`` decide on.

A monitored metric is a name of the kernel's scheme (:mod:`clkernel.names`), of one of two kinds:

* a **training** metric of granularity ``epoch`` (``loss_epoch/train/train``): read at the end of every epoch, after
  the metric plugins logged it (the monitor's :func:`after_training_epoch` runs last);
* an **evaluation** metric (``acc_stream/eval/valid``, ``loss_exp_mean/eval/valid``,
  ``acc_exp/eval/valid/exp002``): read when its stream has been evaluated, after the metric plugins logged the
  stream's values (the monitor's :func:`after_eval` runs last). A name of granularity ``exp`` without an
  experience number (``loss_exp/eval/valid``) means *the experience being trained*: during experience 2 it reads
  ``loss_exp/eval/valid/exp002``, the validation data of the current experience.

Every reading is checked: a monitored stream that ``train()`` does not evaluate is an error when training starts,
and a monitored name that is not among the values logged where it should be is an error naming what was logged.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, Mapping

from clkernel import Stream, TrainState, parse_metric_name

__all__ = ["EVAL_GRANULARITIES", "MODES", "MetricMonitor", "optimizer_parameters", "optimizer_updated",
           "stream_names"]

#: How a monitored value improves: ``min`` (losses), ``max`` (accuracies), or ``auto``: ``max`` when the
#: metric's quantity holds ``acc`` (``acc``, ``top5_acc``), else ``min``.
MODES = ("auto", "min", "max")
#: Granularities an evaluation metric may be monitored at.
EVAL_GRANULARITIES = ("exp", "exp_mean", "stream")


def stream_names(streams: Iterable[Any]) -> list[str]:
    """The names of ``state.eval_streams``: a :class:`~clkernel.Stream`'s name, or the stream of the first
    experience of a list (``"eval"`` outside any stream)."""
    names = []
    for stream in streams:
        if isinstance(stream, Stream):
            names.append(stream.name)
        else:
            items = list(stream)
            first = items[0] if items else None
            names.append(first.stream.name if first is not None and first.stream is not None else "eval")
    return names


def optimizer_parameters(optimizer: Any) -> list[Any]:
    """Every parameter of ``optimizer``, group after group, in the groups' order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_updated(optimizer: Any) -> bool:
    """Whether the optimizer's last ``step()`` changed anything: some parameter had a gradient. torch's optimizers
    skip parameters whose ``.grad`` is None, so gradient accumulation (between its steps) and a skipped
    mixed-precision step (non-finite gradients) leave every ``.grad`` None and the parameters unchanged."""
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class MetricMonitor:
    """One monitored metric, read where the loop logs it (see the module docstring).

    :param metric: a metric name of the kernel's scheme: a training metric of granularity ``epoch``, or an
        evaluation metric of granularity ``exp`` (with or without ``/expNNN``), ``exp_mean`` or ``stream``.
    :param owner: the plugin's name, which starts every error message.
    :param option: the option's name in error messages (``monitor``).
    :param mode: ``"min"``, ``"max"`` or ``"auto"`` (see :data:`MODES`).
    :raises ValueError: naming the option, for a name that is not of the scheme or of another granularity, or
        an unknown mode.
    """

    def __init__(self, metric: str, owner: str, *, option: str = "monitor", mode: str = "auto") -> None:
        self.owner, self.option, self.metric = owner, option, metric
        try:
            parsed = parse_metric_name(metric)
        except ValueError as e:
            raise ValueError(f"{owner}: {option} {metric!r} is not a clkernel metric name ({e}); e.g. "
                             f"loss_exp/eval/valid, acc_stream/eval/valid or loss_epoch/train/train") from None
        if parsed.task is not None or parsed.cls is not None:
            raise ValueError(f"{owner}: {option} {metric!r}: per-task and per-class values cannot be monitored")
        if parsed.phase == "train" and parsed.granularity != "epoch":
            raise ValueError(f"{owner}: {option} {metric!r}: a training metric is read once per epoch, so its "
                             f"granularity must be 'epoch' (e.g. loss_epoch/train/train), got "
                             f"{parsed.granularity!r}")
        if parsed.phase == "eval" and parsed.granularity not in EVAL_GRANULARITIES:
            raise ValueError(f"{owner}: {option} {metric!r}: an evaluation metric is monitored at granularity "
                             f"{', '.join(EVAL_GRANULARITIES)}, got {parsed.granularity!r}")
        if mode not in MODES:
            raise ValueError(f"{owner}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.parsed = parsed
        #: ``"min"`` or ``"max"``, ``auto`` resolved.
        self.mode = mode if mode != "auto" else ("max" if "acc" in parsed.quantity else "min")
        #: True when the name means the experience being trained (``exp`` granularity, no number).
        self.current_experience = parsed.granularity == "exp" and parsed.exp is None
        self._before: Any = None

    @property
    def phase(self) -> str:
        """``"train"`` or ``"eval"``."""
        return self.parsed.phase

    @property
    def stream(self) -> str:
        """The stream whose values are monitored."""
        return self.parsed.stream

    def name(self, experience: int | None) -> str:
        """The name to read while training experience index ``experience``."""
        if self.current_experience and experience is not None:
            return f"{self.metric}/exp{experience:03d}"
        return self.metric

    def check_streams(self, state: TrainState) -> None:
        """At :func:`before_training`: the monitored stream must be evaluated (an evaluation metric) or trained
        (a training metric).

        :raises ValueError: naming the stream and the streams there are, and what to pass.
        """
        if self.phase == "eval":
            names = stream_names(state.eval_streams)
            if self.stream not in names:
                raise ValueError(
                    f"{self.owner}: {self.option} {self.metric!r} reads stream {self.stream!r}, which train() does "
                    f"not evaluate (eval streams: {', '.join(names) or 'none'}); pass it in train(..., "
                    f"eval_streams=[...]) or `clkernel run --eval-streams {self.stream},test`, with a benchmark "
                    f"that has it (e.g. `--benchmark split-digits:valid_size=0.1`)")
        elif self.stream != state.stream_name:
            raise ValueError(f"{self.owner}: {self.option} {self.metric!r} reads training stream {self.stream!r}, "
                             f"but train() trains on stream {state.stream_name!r}")

    def check_run_config(self, config: Mapping[str, Any], *, between_epochs: bool) -> None:
        """Before anything is built: the configuration of ``clkernel run`` (``--eval-streams``, ``--eval-every``,
        ``--epochs``, ``--metric``) must produce the monitored value where it is needed.

        :param between_epochs: the value is needed between the epochs of an experience (early stopping), not only
            after the experience's last one (``ReduceLROnPlateau``).
        :raises ValueError: naming the flag to change.
        """
        epochs, every = config.get("epochs", 1), config.get("eval_every", 0)
        streams = list(config.get("eval_streams", ["test"]))
        needs = []
        if not config.get("metric", True):
            needs.append("a metric plugin that computes it (--metric default; the run has none)")
        if between_epochs and epochs < 2:
            needs.append(f"--epochs 2 or more, to have epochs to stop (got --epochs {epochs})")
        if self.phase == "eval":
            if self.stream not in streams:
                others = ",".join(s for s in streams if s != self.stream) or "test"
                needs.append(f"--eval-streams {self.stream},{others} (got --eval-streams {','.join(streams)}), "
                             f"with a benchmark that has stream {self.stream!r} (e.g. --benchmark "
                             f"split-digits:valid_size=0.1)")
            if between_epochs and not 1 <= every < max(epochs, 2):
                needs.append(f"--eval-every K with 1 <= K < --epochs, to evaluate between epochs (got --eval-every "
                             f"{every})")
            elif every < 0:
                needs.append("--eval-every 0 or more (-1 evaluates nothing)")
        if needs:
            raise ValueError(f"{self.owner}: {self.option} {self.metric!r} needs " + "; ".join(needs))

    def mark(self, state: TrainState) -> None:
        """At :func:`before_training_epoch`: remember the value logged so far, so that :meth:`train_value` can
        tell a fresh value from an older epoch's."""
        self._before = state.metrics.get(self.metric)

    def train_value(self, state: TrainState) -> float:
        """At :func:`after_training_epoch` (the monitor's plugin last): this epoch's value.

        :raises ValueError: when this epoch logged no value of the metric, naming the training metrics logged.
        """
        value = state.metrics.get(self.metric)
        if value is None or value is self._before:
            logged = sorted(k for k in state.metrics if "/train/" in k)
            raise ValueError(self._missing(f"at the end of epoch {state.epoch}", logged))
        return self._number(value)

    def eval_value(self, state: TrainState, experience: int | None) -> float | None:
        """At :func:`after_eval` (the monitor's plugin last): the value of this evaluation, or None when it
        evaluated another stream.

        :raises ValueError: when the monitored stream was evaluated but the value was not logged, naming the values
            that were.
        """
        if self.phase != "eval" or state.stream_name != self.stream:
            return None
        name = self.name(experience)
        if name not in state.metrics:
            raise ValueError(self._missing(f"when stream {self.stream!r} was evaluated", sorted(state.metrics),
                                           name))
        return self._number(state.metrics[name])

    def improved(self, value: float, best: float | None, min_delta: float) -> bool:
        """Whether ``value`` improves on ``best`` (None: nothing yet) by more than ``min_delta``."""
        if best is None:
            return True
        return value < best - min_delta if self.mode == "min" else value > best + min_delta

    def _number(self, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{self.owner}: {self.option} {self.metric!r} is not a number, got "
                             f"{type(value).__name__}") from None
        return number if not math.isnan(number) else math.inf if self.mode == "min" else -math.inf

    def _missing(self, where: str, logged: list[str], name: str | None = None) -> str:
        name = name or self.metric
        close = difflib.get_close_matches(name, logged, n=1)
        return (f"{self.owner}: {self.option} {name!r} was not logged {where}; logged: "
                f"{', '.join(logged[:12]) or 'nothing'}{' ...' if len(logged) > 12 else ''}"
                + (f"; did you mean {close[0]!r}?" if close else
                   "; is the metric plugin that computes it in the run (e.g. --metric default)?"))
