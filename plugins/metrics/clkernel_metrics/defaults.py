"""The default metrics: what ``clkernel run`` uses when no ``--metric`` is given (the ``default`` registration).

They compute everything the first-party loggers display, so that a logger (first- or third-party) gets it through
``log_metrics`` alone and never computes a metric itself:

* training: ``acc_running_epoch/train/STREAM`` and ``loss_running_epoch/train/STREAM`` (0-d float64 tensors on
  the training device) every :data:`RUNNING_EVERY` training iterations, then ``acc_epoch`` and ``loss_epoch`` at
  each epoch's end (floats);
* evaluation: ``acc_exp`` / ``loss_exp`` per experience, ``acc_stream`` / ``loss_stream`` (pooled over the
  stream's samples) and ``acc_exp_mean`` / ``loss_exp_mean`` (mean over its experiences), floats;
* after the evaluation that follows each training experience: ``accuracy_matrix_stream/eval/STREAM``, the
  accuracy matrix ``R`` (2-D float64 CPU tensor, NaN where unknown);
* after an evaluation before any training: ``accuracy_initial_stream/eval/STREAM``, the accuracies ``b`` of the
  untrained model (1-D float64 CPU tensor, NaN where unknown).
"""

from __future__ import annotations

from clkernel.validate import positive_int

from clkernel_metrics.evaluator import Evaluator
from clkernel_metrics.families import AccuracyMatrixMetrics, AccuracyMetrics, LossMetrics

__all__ = ["RUNNING_EVERY", "default_evaluator"]

#: Training iterations between two running values (``*_running_epoch/train/*``) of the default metrics. Each
#: emission costs one flush of the evaluator's buffer (a concatenation and a few reductions over 32 minibatches,
#: work that a later flush would do anyway) and one call of every logger with four 0-d tensors, with no device
#: synchronisation in the evaluator. ``bench/bench_evaluator_overhead.py`` (an MLP 784-512-10, minibatches of
#: 128, 1 thread) measured 1.7-1.8% of the training time inside the events of the default evaluator and the
#: interactive logger together (README, "Cost").
RUNNING_EVERY = 32


def default_evaluator(running_every: int = RUNNING_EVERY) -> Evaluator:
    """Accuracy and loss at running-epoch and epoch (train), experience and stream (eval) level, and the accuracy
    matrix with the initial accuracies: what ``clkernel run`` uses when no metric is chosen.

    :param running_every: training iterations between two running values.
    :returns: an :class:`Evaluator` named ``default-metrics``.
    :raises ValueError: when ``running_every`` is not a positive integer.
    """
    positive_int(running_every, "running_every", "default metrics")
    granularities = dict(running_epoch=True, epoch=True, experience=True, stream=True, every=running_every)
    return Evaluator(AccuracyMetrics(**granularities), LossMetrics(**granularities),
                     AccuracyMatrixMetrics(matrix=True), name="default-metrics")
