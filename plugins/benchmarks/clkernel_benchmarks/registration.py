"""Entry point of clkernel-benchmarks: registers every benchmark by name.

Cheap to import (no torch, no torchvision): each registered factory is a stub that declares the options of the
factory of the same name in :mod:`clkernel_benchmarks.classic` (``clkernel show`` and option parsing read them
from its signature) and imports that module only when called. A test checks that the stubs' signatures match.

Every registered benchmark also takes the options of :data:`VALIDATION_OPTIONS`: ``valid_size=0.1`` carves a
``valid`` stream out of the train stream with
:func:`clkernel_benchmarks.generators.benchmark_with_validation_stream` (streams ``train``, ``valid``, ``test``),
so that ``clkernel run --benchmark split-digits:valid_size=0.1 --eval-streams valid,test`` can monitor it.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable

import clkernel

__all__ = ["BENCHMARKS", "VALIDATION_OPTIONS", "check_options", "core50", "image_folder", "permuted_mnist",
           "register_benchmarks", "rotated_mnist", "split_cifar10", "split_cifar100", "split_digits", "split_fmnist",
           "split_mnist", "split_tinyimagenet"]

#: A transform option: called on a normalised float batch ``(B, C, H, W)`` (in-memory benchmarks) or on one
#: image ``(C, H, W)`` (file-backed ones).
Transform = Callable[[Any], Any]


#: Options every registered benchmark takes besides its own, with their defaults: the fraction of each training
#: experience moved to a ``valid`` stream (0: no validation stream), and whether that fraction is taken from each
#: class of the experience (stratified) rather than from the whole experience.
VALIDATION_OPTIONS: dict[str, Any] = {"valid_size": 0.0, "valid_class_balanced": True}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse the options of benchmark ``name`` that are wrong whatever the data, before any data is loaded or
    downloaded: counts, seed, class order, rotations, transforms, the dataset root, the CORe50 scenario, the
    device, and image-folder's test_size, image_size, mean and std.

    :raises ValueError: (``TypeError`` for a transform that is not callable) naming the benchmark, the option
        and the value.
    """
    from clkernel.validate import positive_int, unit_interval

    def fail(option: str, what: str) -> ValueError:
        return ValueError(f"{name}: {option} must be {what}, got {options[option]!r}")

    if "valid_size" in options:
        unit_interval(options["valid_size"], "valid_size", name, include_one=False)
    if "valid_class_balanced" in options and not isinstance(options["valid_class_balanced"], bool):
        raise fail("valid_class_balanced", "true or false")

    if options.get("n_experiences") is not None:
        positive_int(options["n_experiences"], "n_experiences", name)
    if options.get("seed") is not None and not _is_int(options["seed"]):
        raise fail("seed", "an integer (or None)")
    order = options.get("fixed_class_order")
    if order is not None and (not isinstance(order, (list, tuple)) or not all(_is_int(c) and c >= 0 for c in order)
                              or len(set(order)) != len(order)):
        raise fail("fixed_class_order", "a list of distinct class ids (integers >= 0)")
    rotations = options.get("rotations")
    if rotations is not None and (not isinstance(rotations, (list, tuple)) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in rotations)):
        raise fail("rotations", "a list of angles in degrees")
    for option in ("download", "return_task_id", "class_ids_from_zero_in_each_exp", "object_level", "mini"):
        if option in options and not isinstance(options[option], bool):
            raise fail(option, "true or false")
    for option in ("train_transform", "eval_transform"):
        value = options.get(option)
        if value is not None and not callable(value):
            raise TypeError(f"{name}: {option} must be a callable (a transform given from Python; transforms have "
                            f"no names on the command line), got {value!r}")
    if "scenario" in options and options["scenario"] not in ("ni", "nc"):
        raise fail("scenario", "'ni' or 'nc'")
    device = options.get("device")
    if device is not None:
        import torch

        try:
            torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise fail("device", "a torch device such as 'cpu', 'cuda' or 'cuda:1'") from None
    if options.get("test_size") is not None and (isinstance(options["test_size"], bool) or not isinstance(
            options["test_size"], (int, float)) or not 0 < options["test_size"] < 1):
        raise fail("test_size", "a fraction in (0, 1)")
    if options.get("image_size") is not None:
        positive_int(options["image_size"], "image_size", name)
    for option in ("mean", "std"):
        value = options.get(option)
        if value is not None and (not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise fail(option, "a list of numbers, one per channel")
    if options.get("std") is not None and not all(v > 0 for v in options["std"]):
        raise fail("std", "positive numbers")
    root = options.get("dataset_root")
    if root is not None and root != "":
        if not isinstance(root, (str, os.PathLike)):
            raise fail("dataset_root", "a folder")
        folder = Path(root).expanduser()
        if folder.exists() and not folder.is_dir():
            raise FileNotFoundError(f"{name}: dataset_root {str(root)!r} is not a folder")
        if not folder.exists() and options.get("download", True) is False:
            raise FileNotFoundError(f"{name}: dataset_root {str(root)!r} does not exist (and download=false)")


def _deferred(stub: Callable[..., Any]) -> Callable[..., Any]:
    """A factory with ``stub``'s name, signature and docstring, plus the options of :data:`VALIDATION_OPTIONS`,
    that checks the options (:func:`check_options`), calls ``classic.<name>`` and carves the validation stream
    when ``valid_size`` > 0 (seeded with the benchmark's ``seed``)."""

    @functools.wraps(stub)
    def factory(**options: Any) -> Any:
        name = stub.__name__.replace("_", "-")
        check_options(name, options)
        valid = {key: options.pop(key, default) for key, default in VALIDATION_OPTIONS.items()}
        from clkernel_benchmarks import classic

        benchmark = getattr(classic, stub.__name__)(**options)
        if not valid["valid_size"]:
            return benchmark
        from clkernel_benchmarks.generators import benchmark_with_validation_stream

        try:
            return benchmark_with_validation_stream(benchmark, valid["valid_size"],
                                                    class_balanced=valid["valid_class_balanced"],
                                                    seed=options.get("seed", 0))
        except ValueError as e:
            raise ValueError(f"{name}: valid_size={valid['valid_size']!r}: {e}") from None

    signature = inspect.signature(stub, eval_str=True)
    extra = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=type(default))
             for key, default in VALIDATION_OPTIONS.items()]
    factory.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore
    factory.__doc__ = (f"{stub.__doc__.rstrip()}\n\n    valid_size (a fraction in [0, 1), default 0) carves a "
                       f"validation stream 'valid' out of each training experience (valid_class_balanced: per class)."
                       f"\n    ")
    return factory


@_deferred
def split_mnist(*, n_experiences: int = 5, dataset_root: str | None = None, download: bool = True,
                seed: int | None = 0, fixed_class_order: list[int] | None = None, return_task_id: bool = False,
                class_ids_from_zero_in_each_exp: bool = False, train_transform: Transform | None = None,
                eval_transform: Transform | None = None,
                device: str | None = None) -> Any:
    """MNIST digits split by class: 5 experiences of 2 classes (60,000 train / 10,000 test, 1x28x28).

    See :func:`clkernel_benchmarks.classic.split_mnist`.
    """


@_deferred
def split_fmnist(*, n_experiences: int = 5, dataset_root: str | None = None, download: bool = True,
                 seed: int | None = 0, fixed_class_order: list[int] | None = None, return_task_id: bool = False,
                 class_ids_from_zero_in_each_exp: bool = False, train_transform: Transform | None = None,
                 eval_transform: Transform | None = None,
                 device: str | None = None) -> Any:
    """Fashion-MNIST split by class: 5 experiences of 2 classes (60,000 train / 10,000 test, 1x28x28).

    See :func:`clkernel_benchmarks.classic.split_fmnist`.
    """


@_deferred
def permuted_mnist(*, n_experiences: int = 10, dataset_root: str | None = None, download: bool = True,
                   seed: int | None = 0, return_task_id: bool = False, train_transform: Transform | None = None,
                   eval_transform: Transform | None = None,
                   device: str | None = None) -> Any:
    """MNIST under a fixed random pixel permutation per experience: 10 experiences of all 10 classes.

    See :func:`clkernel_benchmarks.classic.permuted_mnist`.
    """


@_deferred
def rotated_mnist(*, n_experiences: int = 10, rotations: list[float] | None = None, dataset_root: str | None = None,
                  download: bool = True, seed: int | None = 0, return_task_id: bool = False,
                  train_transform: Transform | None = None, eval_transform: Transform | None = None,
                  device: str | None = None) -> Any:
    """MNIST rotated by one angle per experience: 10 experiences of all 10 classes.

    ``rotations`` gives the angles in degrees. See :func:`clkernel_benchmarks.classic.rotated_mnist`.
    """


@_deferred
def split_cifar10(*, n_experiences: int = 5, dataset_root: str | None = None, download: bool = True,
                  seed: int | None = 0, fixed_class_order: list[int] | None = None, return_task_id: bool = False,
                  class_ids_from_zero_in_each_exp: bool = False, train_transform: Transform | None = None,
                  eval_transform: Transform | None = None,
                  device: str | None = None) -> Any:
    """CIFAR-10 split by class: 5 experiences of 2 classes (50,000 train / 10,000 test, 3x32x32).

    See :func:`clkernel_benchmarks.classic.split_cifar10`.
    """


@_deferred
def split_cifar100(*, n_experiences: int = 10, dataset_root: str | None = None, download: bool = True,
                   seed: int | None = 0, fixed_class_order: list[int] | None = None, return_task_id: bool = False,
                   class_ids_from_zero_in_each_exp: bool = False, train_transform: Transform | None = None,
                   eval_transform: Transform | None = None,
                   device: str | None = None) -> Any:
    """CIFAR-100 split by class: 10 experiences of 10 classes (50,000 train / 10,000 test, 3x32x32).

    See :func:`clkernel_benchmarks.classic.split_cifar100`.
    """


@_deferred
def split_tinyimagenet(*, n_experiences: int = 10, dataset_root: str | None = None, download: bool = True,
                       seed: int | None = 0, fixed_class_order: list[int] | None = None,
                       return_task_id: bool = False, class_ids_from_zero_in_each_exp: bool = False,
                       train_transform: Transform | None = None, eval_transform: Transform | None = None) -> Any:
    """Tiny ImageNet split by class: 10 experiences of 20 classes (100,000 train / 10,000 val, 3x64x64).

    See :func:`clkernel_benchmarks.classic.split_tinyimagenet`.
    """


@_deferred
def core50(*, scenario: str = "ni", object_level: bool = True, mini: bool = False, n_experiences: int | None = None,
           dataset_root: str | None = None, download: bool = True, seed: int | None = 0,
           fixed_class_order: list[int] | None = None, return_task_id: bool = False,
           train_transform: Transform | None = None, eval_transform: Transform | None = None) -> Any:
    """CORe50 objects: ``ni`` (one experience per training session) or ``nc`` (new objects) scenario.

    See :func:`clkernel_benchmarks.classic.core50`.
    """


@_deferred
def split_digits(*, n_experiences: int = 5, seed: int | None = 0, fixed_class_order: list[int] | None = None,
                 return_task_id: bool = False, class_ids_from_zero_in_each_exp: bool = False,
                 train_transform: Transform | None = None, eval_transform: Transform | None = None,
                 device: str | None = None) -> Any:
    """UCI 8x8 handwritten digits, shipped with the package: 5 experiences of 2 classes, no download.

    See :func:`clkernel_benchmarks.classic.split_digits`.
    """


@_deferred
def image_folder(*, dataset_root: str | None = None, n_experiences: int = 5, test_size: float | None = None,
                 seed: int | None = 0, fixed_class_order: list[int] | None = None, return_task_id: bool = False,
                 class_ids_from_zero_in_each_exp: bool = False, image_size: int | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 train_transform: Transform | None = None, eval_transform: Transform | None = None) -> Any:
    """Any folder of images, one sub-folder per class, split by class into ``n_experiences`` experiences.

    ``dataset_root`` (``clkernel run --data-root``) holds ``train/`` and ``test/`` folders of class folders, or
    class folders (``test_size`` of each class, default 0.2, is then the test set). See
    :func:`clkernel_benchmarks.classic.image_folder`.
    """


#: Registered name -> factory (the stubs above).
BENCHMARKS: dict[str, Callable[..., Any]] = {
    "split-digits": split_digits, "split-mnist": split_mnist, "permuted-mnist": permuted_mnist,
    "rotated-mnist": rotated_mnist, "split-fmnist": split_fmnist, "split-cifar10": split_cifar10,
    "split-cifar100": split_cifar100, "split-tinyimagenet": split_tinyimagenet, "core50": core50,
    "image-folder": image_folder,
}


@clkernel.hookimpl
def register_benchmarks(register: Callable[..., None]) -> None:
    for name, factory in BENCHMARKS.items():
        register(name, factory, default=name == "split-digits")
