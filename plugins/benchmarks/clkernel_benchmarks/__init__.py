"""clkernel-benchmarks: scenario generators, the classic continual-learning benchmarks and an embedded default.

Generators (each returns a :class:`ScenarioBenchmark`, a kernel ``Benchmark``): :func:`nc_benchmark`,
:func:`ni_benchmark`, :func:`dataset_benchmark`, :func:`tensors_benchmark`, :func:`permuted_benchmark`,
:func:`rotated_benchmark`, :func:`online_benchmark` / :func:`split_online_stream`,
:func:`benchmark_with_validation_stream`, :func:`task_incremental_benchmark`. Named benchmarks (``split-mnist``,
``split-digits``, ...) are registered with clkernel; build them with ``clkernel.load("benchmark", name)`` or
call the factories in :mod:`clkernel_benchmarks.classic`.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_benchmarks.registration``, does not import torch.
"""

import lazy_loader

__version__ = "0.1.0"

_EXPORTS = {
    "classic": ["core50", "image_folder", "permuted_mnist", "rotated_mnist", "split_cifar10", "split_cifar100",
                "split_digits", "split_fmnist", "split_mnist", "split_tinyimagenet"],
    "datasets": ["DatasetNotFoundError", "default_data_root"],
    "generators": ["benchmark_with_validation_stream", "dataset_benchmark", "nc_benchmark", "ni_benchmark",
                   "online_benchmark", "permuted_benchmark", "rotated_benchmark", "split_online_stream",
                   "task_incremental_benchmark", "tensors_benchmark"],
    "scenario": ["OnlineExperience", "ScenarioBenchmark"],
}

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs=_EXPORTS)
