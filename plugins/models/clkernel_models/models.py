"""Standard continual-learning models (as in Avalanche): MLP, CNN, slim ResNet-18, and multi-head versions.

Every single-head model names its final ``nn.Linear`` ``classifier``, so :func:`~clkernel_models.as_multitask`
converts any of them with ``as_multitask(model, "classifier")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clkernel.validate import positive_int, unit_interval
from clkernel_models.dynamic import MultiTaskDecorator

__all__ = ["MTSimpleCNN", "MTSimpleMLP", "SimpleCNN", "SimpleMLP", "SlimResNet18", "SIMPLE_CNN_MIN_SIZE"]

#: The smallest height and width SimpleCNN's two 2x2 poolings leave at least 1x1 of.
SIMPLE_CNN_MIN_SIZE = 10


def _check_images(x: torch.Tensor, in_channels: int, what: str, min_size: int = 1) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels or min(x.shape[-2:]) < min_size:
        raise ValueError(f"{what} expects images of shape (batch, {in_channels}, H, W) with H, W >= {min_size}; "
                         f"got input of shape {tuple(x.shape)}")


class SimpleMLP(nn.Module):
    """A multi-layer perceptron: ``hidden_layers`` x (Linear, ReLU, Dropout), then a linear classifier.

    ``forward(x)``: float ``(B, ...)`` with ``input_size`` values per sample (flattened) -> logits
    ``(B, num_classes)``.

    :param drop_rate: dropout probability after each hidden layer, in [0, 1).
    :raises ValueError: for a size that is not a positive integer or a ``drop_rate`` out of range; in
        ``forward``, for inputs of another size.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 28 * 28, hidden_size: int = 512,
                 hidden_layers: int = 1, drop_rate: float = 0.5) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("input_size", input_size), ("hidden_size", hidden_size),
                            ("hidden_layers", hidden_layers)):
            positive_int(value, name, "SimpleMLP")
        drop_rate = unit_interval(drop_rate, "drop_rate", "SimpleMLP", include_one=False)
        layers: list[nn.Module] = []
        for i in range(hidden_layers):
            layers += [nn.Linear(input_size if i == 0 else hidden_size, hidden_size), nn.ReLU(inplace=True),
                       nn.Dropout(p=drop_rate)]
        self.input_size = input_size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.input_size:
            raise ValueError(f"SimpleMLP expects {self.input_size} values per sample (input_size), got input of "
                             f"shape {tuple(x.shape)} once flattened")
        return self.classifier(self.features(x))


class SimpleCNN(nn.Module):
    """Avalanche's small CNN: five convolutions (32-32-64-64-64 channels), two max-poolings, global max pooling,
    dropout 0.25, and a linear classifier on 64 features.

    ``forward(x)``: float images ``(B, in_channels, H, W)`` with ``H, W >= 10`` -> logits ``(B, num_classes)``.

    :raises ValueError: for a size that is not a positive integer; in ``forward``, for inputs of another shape.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        positive_int(num_classes, "num_classes", "SimpleCNN")
        positive_int(in_channels, "in_channels", "SimpleCNN")
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, kernel_size=3, padding=0), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2), nn.Dropout(p=0.25),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, kernel_size=3, padding=0), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2), nn.Dropout(p=0.25),
            nn.Conv2d(64, 64, kernel_size=1, padding=0), nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(1), nn.Dropout(p=0.25),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.in_channels, "SimpleCNN", SIMPLE_CNN_MIN_SIZE)
        return self.classifier(self.features(x).flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SlimResNet18(nn.Module):
    """The reduced ResNet-18 of GEM (Lopez-Paz & Ranzato, 2017): BasicBlocks [2, 2, 2, 2] with ``nf``, 2nf, 4nf,
    8nf channels (``nf=20``), made for 32x32 colour images; global average pooling lets it take other sizes.

    ``forward(x)``: float images ``(B, in_channels, H, W)`` -> logits ``(B, num_classes)``.

    :raises ValueError: for a size that is not a positive integer; in ``forward``, for inputs of another shape.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, nf: int = 20) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("nf", nf)):
            positive_int(value, name, "SlimResNet18")
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, nf, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        planes, layers = nf, []
        for i, width in enumerate((nf, 2 * nf, 4 * nf, 8 * nf)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(planes, width, stride), _BasicBlock(width, width, 1)))
            planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.classifier = nn.Linear(8 * nf, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.in_channels, "SlimResNet18")
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


class MTSimpleMLP(MultiTaskDecorator):
    """:class:`SimpleMLP` with one classifier head per task label (heads of ``num_classes`` units, default 2,
    growing with their task's classes). ``forward(x, task_labels)``.
    """

    def __init__(self, num_classes: int | None = None, input_size: int = 28 * 28, hidden_size: int = 512,
                 hidden_layers: int = 1, drop_rate: float = 0.5, *, masking: bool = True,
                 unseen_task: str = "fallback") -> None:
        super().__init__(SimpleMLP(num_classes or 2, input_size, hidden_size, hidden_layers, drop_rate),
                         "classifier", masking=masking, unseen_task=unseen_task)


class MTSimpleCNN(MultiTaskDecorator):
    """:class:`SimpleCNN` with one classifier head per task label (heads of ``num_classes`` units, default 2,
    growing with their task's classes). ``forward(x, task_labels)``.
    """

    def __init__(self, num_classes: int | None = None, in_channels: int = 3, *, masking: bool = True,
                 unseen_task: str = "fallback") -> None:
        super().__init__(SimpleCNN(num_classes or 2, in_channels), "classifier", masking=masking,
                         unseen_task=unseen_task)
