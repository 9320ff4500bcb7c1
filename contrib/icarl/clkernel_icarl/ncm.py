"""The nearest-mean-of-exemplars classifier of iCaRL (Rebuffi, Kolesnikov, Sperl and Lampert, 2017, "iCaRL:
Incremental Classifier and Representation Learning", CVPR), as a model component.

A sample is given to the class whose mean feature is nearest::

    y* = argmin_c || phi(x) - mu_c ||        phi(x) and mu_c L2-normalised (``normalize=True``)

:class:`NCMClassifier` scores every class with ``-|| phi(x) - mu_c ||^2``, so the argmax of its output is that
prediction, and it can stand wherever a linear head's logits do (metrics, losses). It is a plain
``torch.nn.Module`` over features, like Avalanche's ``NCMClassifier``: put it after any feature extractor, set its
means with :meth:`NCMClassifier.update_class_means` (:func:`class_means` computes them), and its state (the means)
goes into the model's ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NCMClassifier", "class_means"]


def class_means(features: torch.Tensor, targets: torch.Tensor, *, normalize: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean feature of every class present in ``targets``: iCaRL's ``mu_y = 1/|P_y| sum_{p in P_y} phi(p)``.

    :param features: float ``(N, F)``, one feature row per sample.
    :param targets: int64 ``(N,)``, each sample's class.
    :param normalize: L2-normalise each feature row before averaging, and each mean after (iCaRL, PyCIL and
        Avalanche do both).
    :returns: ``(classes, means)``: the sorted classes present, int64 ``(K,)``, and their means, float ``(K, F)``.
    :raises ValueError: when ``features`` is not 2-d or its rows do not match ``targets``.
    """
    if features.dim() != 2 or targets.dim() != 1 or len(features) != len(targets):
        raise ValueError(f"class_means needs features (N, F) and targets (N,), got {tuple(features.shape)} and "
                         f"{tuple(targets.shape)}")
    if normalize:
        features = F.normalize(features, dim=1)
    classes, inverse = torch.unique(targets, return_inverse=True)
    sums = torch.zeros(len(classes), features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, inverse, features)
    counts = torch.bincount(inverse, minlength=len(classes)).to(features.dtype)
    means = sums / counts.unsqueeze(1)
    return classes, F.normalize(means, dim=1) if normalize else means


class NCMClassifier(nn.Module):
    """Nearest class mean classifier: ``forward(features)`` scores each class with minus the squared Euclidean
    distance between the (normalised) features and the class's mean.

    :param num_classes: output units to start with (it grows when a mean is set for a larger class id).
    :param normalize: L2-normalise the input features (and the means given to :meth:`update_class_means`), as
        iCaRL does.
    :param mask_value: the score of classes without a mean (finite, like clkernel-models' masked units, so a
        loss on such a target is large, never NaN).

    ``forward(x)``: float ``(B, F)`` features -> float ``(B, num_classes)`` scores, ``-||x - mu_c||^2`` for
    classes with a mean (in ``[-4, 0]`` with ``normalize``), ``mask_value`` for the others. Before any mean is
    set, every score is ``mask_value``.

    Buffers (saved in ``state_dict``; loading resizes them): ``class_means`` float ``(num_classes, F)`` and
    ``known`` bool ``(num_classes,)``.
    """

    def __init__(self, num_classes: int = 0, *, normalize: bool = True, mask_value: float = -1000.0) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"NCMClassifier: num_classes must be an integer >= 0, got {num_classes!r}")
        self.normalize, self.mask_value = bool(normalize), float(mask_value)
        self.register_buffer("class_means", torch.zeros(num_classes, 0))
        self.register_buffer("known", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def num_classes(self) -> int:
        return len(self.known)

    def extend(self, num_classes: int) -> None:
        """Grow to at least ``num_classes`` output units (new units have no mean)."""
        extra = num_classes - self.num_classes
        if extra > 0:
            self.class_means = torch.cat([self.class_means, self.class_means.new_zeros(extra,
                                                                                      self.class_means.shape[1])])
            self.known = torch.cat([self.known, self.known.new_zeros(extra)])

    @torch.no_grad()
    def update_class_means(self, classes: Sequence[int] | torch.Tensor, means: torch.Tensor) -> None:
        """Set the means of ``classes`` (int, ``(K,)``) to ``means`` (float ``(K, F)``; L2-normalised here with
        ``normalize``); other classes keep theirs.

        :raises ValueError: for a negative class, rows that do not match the classes, or a feature size that
            differs from the means already set.
        """
        classes = torch.as_tensor(classes, dtype=torch.long).flatten().cpu()
        if means.dim() != 2 or len(means) != len(classes):
            raise ValueError(f"NCMClassifier.update_class_means: {len(classes)} classes but means of shape "
                             f"{tuple(means.shape)}")
        if len(classes) and int(classes.min()) < 0:
            raise ValueError(f"NCMClassifier.update_class_means: negative class id {int(classes.min())}")
        width = self.class_means.shape[1]
        if bool(self.known.any()) and means.shape[1] != width:
            raise ValueError(f"NCMClassifier.update_class_means: means of {means.shape[1]} features, but the "
                             f"classifier holds means of {width}")
        if not len(classes):
            return
        self.extend(int(classes.max()) + 1)
        if means.shape[1] != width:
            self.class_means = self.class_means.new_zeros(self.num_classes, means.shape[1])
        means = means.to(self.class_means.device, torch.float32)
        self.class_means[classes] = F.normalize(means, dim=1) if self.normalize else means
        self.known[classes] = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            x = x.flatten(1)
        scores = x.new_full((x.shape[0], self.num_classes), self.mask_value)
        if not bool(self.known.any()):
            return scores
        if x.shape[1] != self.class_means.shape[1]:
            raise ValueError(f"NCMClassifier: features of size {x.shape[1]}, but the class means have "
                             f"{self.class_means.shape[1]}")
        if self.normalize:
            x = F.normalize(x, dim=1)
        means = self.class_means[self.known].to(x.dtype)
        sq = (x.pow(2).sum(1, keepdim=True) - 2 * x @ means.T + means.pow(2).sum(1)).clamp(min=0)  # (B, K)
        scores[:, self.known] = -sq
        return scores

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the means grow with the classes seen: take the saved shapes before the default loading checks them
        for name in ("class_means", "known"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, features={self.class_means.shape[1]}, "
                f"known={int(self.known.sum())}, normalize={self.normalize}")
