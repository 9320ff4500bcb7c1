"""Entry point of clkernel-benchmarks: registers every benchmark by name (cheap: no torchvision import here)."""

from __future__ import annotations

from typing import Callable

import clkernel
from clkernel_benchmarks import classic


@clkernel.hookimpl
def register_benchmarks(register: Callable[..., None]) -> None:
    register("split-digits", classic.split_digits, default=True)
    register("split-mnist", classic.split_mnist)
    register("permuted-mnist", classic.permuted_mnist)
    register("rotated-mnist", classic.rotated_mnist)
    register("split-fmnist", classic.split_fmnist)
    register("split-cifar10", classic.split_cifar10)
    register("split-cifar100", classic.split_cifar100)
    register("split-tinyimagenet", classic.split_tinyimagenet)
    register("core50", classic.core50)
