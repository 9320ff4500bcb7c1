"""Registers this package's models with clkernel (entry point ``models``). Cheap to import: the model classes
are imported by the factories.

``clkernel run`` fills ``num_classes``, ``input_size``, ``in_channels`` and ``input_shape`` from the benchmark, and
``benchmark`` (the multi-task models refuse a benchmark without task labels).
"""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["MODELS", "require_task_labels", "mt_simple_cnn", "mt_simple_mlp", "register_models", "simple_cnn", "simple_mlp",
           "slim_resnet18"]


def _check_image_shape(model: str, input_shape: tuple[int, ...] | None, in_channels: int, min_size: int = 1,
                       ) -> None:
    if input_shape is None:
        return
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"{model}: takes images (channels, height, width); the benchmark's input_shape is "
                         f"{shape}: use simple-mlp")
    if shape[0] != in_channels:
        raise ValueError(f"{model}: in_channels={in_channels} but the benchmark's input_shape is {shape}")
    if min(shape[1:]) < min_size:
        raise ValueError(f"{model}: needs images of at least {min_size}x{min_size} pixels; the benchmark's "
                         f"input_shape is {shape}: use simple-mlp or slim-resnet18")


def require_task_labels(model: str, benchmark: Any) -> None:
    """Refuse a benchmark whose training experiences (more than one) all carry task label 0: a multi-task model
    needs task labels to pick its head / column. Nothing is checked without a benchmark (Python use).

    :raises ValueError: naming the model and the benchmark.
    """
    stream = getattr(benchmark, "streams", {}).get("train") if benchmark is not None else None
    if stream is None:
        return
    experiences = list(stream)
    if len(experiences) > 1 and all(set(getattr(exp, "task_labels", [0])) <= {0} for exp in experiences):
        which = getattr(benchmark, "name", "") or "the benchmark"
        raise ValueError(f"{model}: needs a benchmark with task labels (e.g. split-digits:return_task_id=True); "
                         f"all {len(experiences)} training experiences of {which} have task label 0")


def simple_mlp(num_classes: int = 10, input_size: int = 784, hidden_size: int = 512, hidden_layers: int = 1,
               drop_rate: float = 0.5) -> Any:
    """A multi-layer perceptron (Linear, ReLU, Dropout per hidden layer) that flattens its input.

    :param hidden_layers: number of hidden layers of ``hidden_size`` units.
    :param drop_rate: dropout probability after each hidden layer.
    """
    from clkernel_models.models import SimpleMLP

    return SimpleMLP(num_classes, input_size, hidden_size, hidden_layers, drop_rate)


def simple_cnn(num_classes: int = 10, in_channels: int = 3, input_shape: tuple[int, ...] | None = None,
               ) -> Any:
    """A small 5-convolution CNN (Avalanche's SimpleCNN) for images of at least 10x10 pixels (MNIST, CIFAR)."""
    from clkernel_models.models import SIMPLE_CNN_MIN_SIZE, SimpleCNN

    _check_image_shape("simple-cnn", input_shape, in_channels, SIMPLE_CNN_MIN_SIZE)
    return SimpleCNN(num_classes, in_channels)


def slim_resnet18(num_classes: int = 10, in_channels: int = 3, nf: int = 20,
                  input_shape: tuple[int, ...] | None = None) -> Any:
    """The reduced ResNet-18 of GEM (nf=20 base channels) for 32x32 colour images (CIFAR); takes other sizes too.

    :param nf: channels of the first stage (the others have 2nf, 4nf, 8nf).
    """
    from clkernel_models.models import SlimResNet18

    _check_image_shape("slim-resnet18", input_shape, in_channels)
    return SlimResNet18(num_classes, in_channels, nf)


def mt_simple_mlp(num_classes: int | None = None, input_size: int = 784, hidden_size: int = 512,
                  hidden_layers: int = 1, drop_rate: float = 0.5, masking: bool = True,
                  unseen_task: str = "fallback", benchmark: Any = None) -> Any:
    """The simple MLP with one classifier head per task label (multi-head; needs task labels).

    :param num_classes: units of each new head (they grow with their task's classes; default 2).
    :param masking: heads mask the units of classes their task never trained.
    :param unseen_task: a task met at evaluation before training gets all-zero outputs with a warning
        (``fallback``) or stops the run (``error``).
    """
    from clkernel_models.models import MTSimpleMLP

    require_task_labels("mt-simple-mlp", benchmark)

    return MTSimpleMLP(num_classes, input_size, hidden_size, hidden_layers, drop_rate, masking=masking,
                       unseen_task=unseen_task)


def mt_simple_cnn(num_classes: int | None = None, in_channels: int = 3, input_shape: tuple[int, ...] | None = None,
                  masking: bool = True, unseen_task: str = "fallback", benchmark: Any = None) -> Any:
    """The simple CNN with one classifier head per task label (multi-head; needs task labels).

    :param num_classes: units of each new head (they grow with their task's classes; default 2).
    :param masking: heads mask the units of classes their task never trained.
    :param unseen_task: ``fallback`` (all-zero outputs, with a warning) or ``error`` for untrained tasks at
        evaluation.
    """
    from clkernel_models.models import SIMPLE_CNN_MIN_SIZE, MTSimpleCNN

    _check_image_shape("mt-simple-cnn", input_shape, in_channels, SIMPLE_CNN_MIN_SIZE)
    require_task_labels("mt-simple-cnn", benchmark)
    return MTSimpleCNN(num_classes, in_channels, masking=masking, unseen_task=unseen_task)


#: The factories by registered name; each returns a ``torch.nn.Module``.
MODELS: dict[str, Callable[..., Any]] = {
    "simple-mlp": simple_mlp, "simple-cnn": simple_cnn, "slim-resnet18": slim_resnet18,
    "mt-simple-mlp": mt_simple_mlp, "mt-simple-cnn": mt_simple_cnn,
}


@clkernel.hookimpl
def register_models(register: Callable[..., None]) -> None:
    for name, factory in MODELS.items():
        register(name, factory, default=name == "simple-mlp")
