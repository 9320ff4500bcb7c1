"""clkernel-metrics: continual-learning evaluation for clkernel.

An :class:`Evaluator` plugin runs metric families (accuracy, loss, top-k, per-class accuracy, confusion matrix,
accuracy matrix, forgetting, BWT, FWT, time, CPU, RAM, GPU memory, disk) and hands their values to every logger
through the kernel's ``log_metrics`` event. Every metric is also usable on its own (``update / result / reset``).
Value names follow the kernel's scheme, :mod:`clkernel.names` (``clkernel.metric_name``,
``clkernel.parse_metric_name``).

Names are imported on first use (``lazy_loader``), so that ``clkernel plugins``, which imports every entry point's
registration module, does not import torch through this package.
"""

import lazy_loader

__version__ = "0.2.0"

_EXPORTS = {
    "defaults": ["RUNNING_EVERY", "default_evaluator"],
    "evaluator": ["Chunk", "Deferred", "Evaluator", "PluginMetric", "max_over_ranks", "resolve", "sum_over_ranks"],
    "families": [
        "INITIAL_ACCURACY", "AccuracyMatrixMetrics", "AccuracyMetrics", "ClassAccuracyMetrics",
        "ConfusionMatrixMetrics", "LossMetrics", "ResourceMetrics", "TopKAccuracyMetrics", "cpu_usage_metrics",
        "disk_usage_metrics", "gpu_usage_metrics", "ram_usage_metrics", "timing_metrics",
    ],
    "standalone": [
        "Accuracy", "AccuracyMatrix", "BackwardTransfer", "CPUUsage", "ClassAccuracy", "ConfusionMatrix",
        "DiskUsage", "Forgetting", "ForwardTransfer", "Loss", "MaxGPUMemory", "MaxRAM", "Mean", "TopKAccuracy",
        "WallTime", "backward_transfer", "forgetting", "forward_transfer",
    ],
}

__getattr__, __dir__, _lazy_all = lazy_loader.attach(__name__, submod_attrs=_EXPORTS)

__all__ = sorted([*_lazy_all, "__version__"])
