"""clkernel-benchmarks: scenario generators, the classic continual-learning benchmarks and an embedded default.

Generators (each returns a :class:`ScenarioBenchmark`, a kernel ``Benchmark``): :func:`nc_benchmark`,
:func:`ni_benchmark`, :func:`dataset_benchmark`, :func:`tensors_benchmark`, :func:`permuted_benchmark`,
:func:`rotated_benchmark`, :func:`online_benchmark` / :func:`split_online_stream`,
:func:`benchmark_with_validation_stream`, :func:`task_incremental_benchmark`. Named benchmarks (``split-mnist``,
``split-digits``, ...) are registered with clkernel; build them with ``clkernel.load("benchmark", name)`` or
call the factories in :mod:`clkernel_benchmarks.classic`.
"""

from clkernel_benchmarks.classic import (core50, permuted_mnist, rotated_mnist, split_cifar10, split_cifar100,
                                         split_digits, split_fmnist, split_mnist, split_tinyimagenet)
from clkernel_benchmarks.datasets import DatasetNotFoundError, default_data_root
from clkernel_benchmarks.generators import (benchmark_with_validation_stream, dataset_benchmark, nc_benchmark,
                                            ni_benchmark, online_benchmark, permuted_benchmark, rotated_benchmark,
                                            split_online_stream, task_incremental_benchmark, tensors_benchmark)
from clkernel_benchmarks.scenario import OnlineExperience, ScenarioBenchmark

__version__ = "0.1.0"

__all__ = [
    "DatasetNotFoundError", "OnlineExperience", "ScenarioBenchmark", "benchmark_with_validation_stream", "core50",
    "dataset_benchmark", "default_data_root", "nc_benchmark", "ni_benchmark", "online_benchmark",
    "permuted_benchmark", "permuted_mnist", "rotated_benchmark", "rotated_mnist", "split_cifar10",
    "split_cifar100", "split_digits", "split_fmnist", "split_mnist", "split_online_stream",
    "split_tinyimagenet", "task_incremental_benchmark", "tensors_benchmark",
]
