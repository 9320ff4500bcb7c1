"""clkernel-metrics: continual-learning evaluation for clkernel.

An :class:`Evaluator` plugin runs metric families (accuracy, loss, top-k, per-class accuracy, confusion matrix,
accuracy matrix, forgetting, BWT, FWT, time, CPU, RAM, GPU memory, disk) and hands their values to every logger
through the kernel's ``log_metrics`` event. Every metric is also usable on its own (``update / result / reset``).
Value names follow :mod:`clkernel_metrics.names`.
"""

from clkernel_metrics.evaluator import Chunk, Deferred, Evaluator, PluginMetric, resolve
from clkernel_metrics.families import (
    AccuracyMatrixMetrics, AccuracyMetrics, ClassAccuracyMetrics, ConfusionMatrixMetrics, LossMetrics,
    ResourceMetrics, TopKAccuracyMetrics, cpu_usage_metrics, disk_usage_metrics, gpu_usage_metrics,
    ram_usage_metrics, timing_metrics,
)
from clkernel_metrics.names import GRANULARITIES, metric_name, parse_name
from clkernel_metrics.standalone import (
    Accuracy, AccuracyMatrix, BackwardTransfer, ClassAccuracy, ConfusionMatrix, CPUUsage, DiskUsage, Forgetting,
    ForwardTransfer, Loss, MaxGPUMemory, MaxRAM, Mean, TopKAccuracy, WallTime, backward_transfer, forgetting,
    forward_transfer,
)

__version__ = "0.1.0"


def default_evaluator() -> Evaluator:
    """Accuracy and loss at epoch (train), experience and stream (eval) level: what ``clkernel run`` uses when
    no metric is chosen."""
    return Evaluator(AccuracyMetrics(epoch=True, experience=True, stream=True),
                     LossMetrics(epoch=True, experience=True, stream=True), name="default-metrics")


__all__ = [
    "GRANULARITIES", "Accuracy", "AccuracyMatrix", "AccuracyMatrixMetrics", "AccuracyMetrics", "BackwardTransfer",
    "CPUUsage", "Chunk", "ClassAccuracy", "ClassAccuracyMetrics", "ConfusionMatrix", "ConfusionMatrixMetrics",
    "Deferred", "DiskUsage", "Evaluator", "Forgetting", "ForwardTransfer", "Loss", "LossMetrics", "MaxGPUMemory",
    "MaxRAM", "Mean", "PluginMetric", "ResourceMetrics", "TopKAccuracy", "TopKAccuracyMetrics", "WallTime",
    "__version__", "backward_transfer", "cpu_usage_metrics", "default_evaluator", "disk_usage_metrics",
    "forgetting", "forward_transfer", "gpu_usage_metrics", "metric_name", "parse_name", "ram_usage_metrics",
    "resolve", "timing_metrics",
]
