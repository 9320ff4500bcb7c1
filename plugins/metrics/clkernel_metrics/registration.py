"""Entry point of clkernel-metrics: registers the metric names that ``clkernel run --metric NAME`` accepts.

Each factory returns one :class:`~clkernel_metrics.Evaluator` plugin. Cheap to import (no torch): the metric
modules are imported inside the factories.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import clkernel

__all__ = [
    "accuracy", "accuracy_matrix", "bwt", "cl", "class_accuracy", "confusion_matrix", "cpu", "default", "disk",
    "forgetting", "fwt", "gpu", "loss", "ram", "register_metrics", "timing", "top_k",
]


def default(running_every: int = 32) -> Any:
    """Accuracy and loss at epoch, experience and stream level, the running epoch loss and accuracy every
    running_every training iterations, and the accuracy matrix (used when no metric is chosen)."""
    from clkernel_metrics import default_evaluator

    return default_evaluator(running_every)


def accuracy(minibatch: bool = False, running_epoch: bool = False, epoch: bool = True, experience: bool = True,
             stream: bool = True, per_task: bool = True, every: int = 1) -> Any:
    """Top-1 accuracy at the chosen granularities (acc_*); the stream value pools every sample, acc_exp_mean
    averages the experiences.

    minibatch and running_epoch emit one value every ``every`` training iterations.
    """
    from clkernel_metrics import AccuracyMetrics, Evaluator

    return Evaluator(AccuracyMetrics(minibatch=minibatch, running_epoch=running_epoch, epoch=epoch,
                                     experience=experience, stream=stream, per_task=per_task, every=every),
                     name="accuracy")


def loss(minibatch: bool = False, running_epoch: bool = False, epoch: bool = True, experience: bool = True,
         stream: bool = True, every: int = 1) -> Any:
    """Mean loss per sample at the chosen granularities (loss_*)."""
    from clkernel_metrics import Evaluator, LossMetrics

    return Evaluator(LossMetrics(minibatch=minibatch, running_epoch=running_epoch, epoch=epoch,
                                 experience=experience, stream=stream, every=every), name="loss")


def top_k(k: int = 5, epoch: bool = True, experience: bool = True, stream: bool = True,
          num_classes: int | None = None) -> Any:
    """Top-k accuracy (topK_acc_*): the label is among the k largest outputs.

    num_classes: the benchmark's class count (filled by clkernel run); k may not exceed it.
    """
    from clkernel.validate import positive_int

    from clkernel_metrics import Evaluator, TopKAccuracyMetrics

    k = positive_int(k, "k", "top-k")
    if num_classes is not None:
        positive_int(num_classes, "num_classes", "top-k")
        if k > num_classes:
            raise ValueError(f"top-k: k must be at most the number of classes ({num_classes}), got {k}")
    return Evaluator(TopKAccuracyMetrics(k, epoch=epoch, experience=experience, stream=stream), name="top-k")


def class_accuracy(epoch: bool = False, experience: bool = True, stream: bool = True) -> Any:
    """Accuracy of each class (class_acc_*/.../classNNN)."""
    from clkernel_metrics import ClassAccuracyMetrics, Evaluator

    return Evaluator(ClassAccuracyMetrics(epoch=epoch, experience=experience, stream=stream),
                     name="class-accuracy")


def confusion_matrix(num_classes: int | None = None, experience: bool = False, stream: bool = True) -> Any:
    """Confusion matrix of each evaluation stream (confusion_matrix_stream/eval/STREAM, a 2-D tensor)."""
    from clkernel_metrics import ConfusionMatrixMetrics, Evaluator

    return Evaluator(ConfusionMatrixMetrics(num_classes, experience=experience, stream=stream),
                     name="confusion-matrix")


def accuracy_matrix() -> Any:
    """Accuracy matrix R[i, j]: accuracy on experience j after training experience i (a 2-D tensor)."""
    from clkernel_metrics import AccuracyMatrixMetrics, Evaluator

    return Evaluator(AccuracyMatrixMetrics(matrix=True), name="accuracy-matrix")


def forgetting(experience: bool = True, stream: bool = True) -> Any:
    """Forgetting (Chaudhry et al., 2018): best earlier accuracy minus current accuracy, per experience and
    averaged."""
    from clkernel_metrics import AccuracyMatrixMetrics, Evaluator

    return Evaluator(AccuracyMatrixMetrics(matrix=False, forgetting=True, experience=experience, stream=stream),
                     name="forgetting")


def bwt(experience: bool = True, stream: bool = True) -> Any:
    """Backward transfer (Lopez-Paz & Ranzato, 2017): R[k, j] - R[j, j], per experience and averaged."""
    from clkernel_metrics import AccuracyMatrixMetrics, Evaluator

    return Evaluator(AccuracyMatrixMetrics(matrix=False, bwt=True, experience=experience, stream=stream),
                     name="bwt")


def fwt(experience: bool = True, stream: bool = True) -> Any:
    """Forward transfer (Lopez-Paz & Ranzato, 2017): R[i-1, i] - b[i], b from an evaluation before training.

    The kernel evaluates the test stream before the first experience for it (needs_initial_eval).
    """
    from clkernel_metrics import AccuracyMatrixMetrics, Evaluator

    return Evaluator(AccuracyMatrixMetrics(matrix=False, fwt=True, experience=experience, stream=stream),
                     name="fwt")


def cl(experience: bool = True, stream: bool = True) -> Any:
    """Accuracy matrix, forgetting, BWT and FWT from one shared accuracy matrix (one plugin)."""
    from clkernel_metrics import AccuracyMatrixMetrics, Evaluator

    return Evaluator(AccuracyMatrixMetrics(matrix=True, forgetting=True, bwt=True, fwt=True, experience=experience,
                                           stream=stream), name="cl")


def timing(epoch: bool = True, experience: bool = True, stream: bool = True) -> Any:
    """Wall-clock time in seconds of epochs, experiences and streams (time_*)."""
    from clkernel_metrics import Evaluator, timing_metrics

    return Evaluator(timing_metrics(epoch=epoch, experience=experience, stream=stream), name="timing")


def cpu(epoch: bool = True, experience: bool = True, stream: bool = True) -> Any:
    """Average CPU usage of the process, in percent of one core (cpu_usage_*)."""
    from clkernel_metrics import Evaluator, cpu_usage_metrics

    return Evaluator(cpu_usage_metrics(epoch=epoch, experience=experience, stream=stream), name="cpu")


def ram(every: float = 0.5, epoch: bool = True, experience: bool = True, stream: bool = True) -> Any:
    """Peak resident memory of the process in MiB (max_ram_*), sampled every `every` seconds."""
    from clkernel_metrics import Evaluator, ram_usage_metrics

    return Evaluator(ram_usage_metrics(every, epoch=epoch, experience=experience, stream=stream), name="ram")


def gpu(epoch: bool = True, experience: bool = True, stream: bool = True) -> Any:
    """Peak GPU memory allocated by tensors in MiB (max_gpu_*), when the strategy runs on CUDA."""
    from clkernel_metrics import Evaluator, gpu_usage_metrics

    return Evaluator(gpu_usage_metrics(epoch=epoch, experience=experience, stream=stream), name="gpu")


def disk(paths: str | list[str] | None = None, run_dir: str | Path | None = None, epoch: bool = False,
         experience: bool = True, stream: bool = True) -> Any:
    """Total size in MiB of the files under the given folders (disk_usage_*); default: the run folder.

    paths: a list, or one string of folders separated by the OS path separator (':' on Linux).
    """
    from clkernel_metrics import Evaluator, disk_usage_metrics

    if paths is None or paths == "":
        if run_dir is None:
            raise ValueError("disk: give paths (folders to measure) or run_dir")
        folders: list[Any] = [run_dir]
    else:
        if isinstance(paths, (str, os.PathLike)):
            folders = [p for p in str(paths).split(os.pathsep) if p]
        elif isinstance(paths, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in paths):
            folders = list(paths)
        else:
            raise TypeError(f"disk: paths must be a folder, a list of folders or folders separated by "
                            f"{os.pathsep!r}, got {paths!r}")
        if not folders:
            raise ValueError(f"disk: paths names no folder, got {paths!r}")
        missing = [str(p) for p in folders if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"disk: paths: no such folder{'s' if len(missing) > 1 else ''}: "
                                    f"{', '.join(repr(m) for m in missing)}")
    return Evaluator(disk_usage_metrics(folders, epoch=epoch, experience=experience, stream=stream), name="disk")


_METRICS: dict[str, Callable[..., Any]] = {
    "accuracy": accuracy, "loss": loss, "top-k": top_k, "class-accuracy": class_accuracy,
    "confusion-matrix": confusion_matrix, "accuracy-matrix": accuracy_matrix, "forgetting": forgetting,
    "bwt": bwt, "fwt": fwt, "cl": cl, "timing": timing, "cpu": cpu, "ram": ram, "gpu": gpu, "disk": disk,
}


@clkernel.hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    """Register ``default`` (the default metric) and every name of ``_METRICS``."""
    register("default", default, default=True)
    for name, factory in _METRICS.items():
        register(name, factory)
