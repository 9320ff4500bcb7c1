"""clkernel: a tiny continual-learning kernel for PyTorch; every method, metric, logger and benchmark is a plugin."""

from clkernel.data import CLDataset, iterate_minibatches
from clkernel.discovery import RegistryError, available, load, registry
from clkernel.hookspecs import hookimpl
from clkernel.loop import CompositionError, DynamicModule, Naive, PluginError, Strategy, update_optimizer
from clkernel.state import TrainState
from clkernel.types import Benchmark, Experience, Stream

__version__ = "0.1.0"

__all__ = [
    "Benchmark", "CLDataset", "CompositionError", "DynamicModule", "Experience", "Naive", "PluginError",
    "RegistryError", "Strategy", "Stream", "TrainState", "__version__", "available", "hookimpl",
    "iterate_minibatches", "load", "registry", "update_optimizer",
]
