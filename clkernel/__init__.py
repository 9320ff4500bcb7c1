"""clkernel: a tiny continual-learning kernel for PyTorch; every method, metric, logger and benchmark is a plugin.

Names are imported on first use (``lazy_loader``), so ``import clkernel`` and the ``clkernel`` command's listing
subcommands do not import torch.
"""

import lazy_loader

__version__ = "0.2.0"

_EXPORTS = {
    "checkpoint": ["CheckpointError", "Checkpointer", "latest_checkpoint", "load_checkpoint", "read_checkpoint",
                   "save_checkpoint"],
    "data": ["CLDataset", "iterate_minibatches"],
    "discovery": ["RegistryError", "available", "load", "registry"],
    "dispatch": ["CompositionError", "PluginError"],
    "hookspecs": ["hookimpl"],
    "loop": ["Naive", "NonFiniteLossError", "Strategy", "run"],
    "modules": ["DynamicModule", "adapt_model", "eval_mode", "model_forward", "update_optimizer"],
    "names": ["MetricName", "metric_name", "parse_metric_name"],
    "state": ["TrainState"],
    "types": ["Benchmark", "Experience", "Stream"],
}

__getattr__, __dir__, _lazy_all = lazy_loader.attach(
    __name__, submodules=["checkpoint", "distributed", "names", "testing", "validate"], submod_attrs=_EXPORTS)

__all__ = sorted([*_lazy_all, "__version__"])
