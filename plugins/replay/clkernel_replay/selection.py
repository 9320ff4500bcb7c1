"""Exemplar selection strategies for :class:`~clkernel_replay.ParametricBuffer`: which samples of a group to keep.

A strategy orders the samples of one group (one class, task or experience) best first; the buffer keeps a prefix
of that order as long as the group's share of memory allows. Feature-based strategies (herding, closest to the
centre) compute features with, in this order of preference: their own ``feature_extractor``, the output of
``layer`` inside the model handed to ``update(..., model=...)``, the model's output, or the flattened inputs.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch

from clkernel import CLDataset, iterate_minibatches

__all__ = ["ClosestToCenterSelection", "HerdingSelection", "RandomSelection", "SelectionStrategy",
           "compute_features"]

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class SelectionStrategy(Protocol):
    """Orders the samples of one group, best first."""

    def order(self, dataset: CLDataset, *, k: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Positions in ``dataset``, best first; at least ``min(k, len(dataset))`` of them."""
        ...


@torch.no_grad()
def compute_features(dataset: CLDataset, *, model: torch.nn.Module | None = None, layer: str | None = None,
                     feature_extractor: FeatureExtractor | None = None, batch_size: int = 256,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """One feature row per sample of ``dataset`` (eval transforms), on the CPU, as float32.

    ``feature_extractor`` wins over ``model``; with ``model``, ``layer`` names the submodule whose output is the
    feature (the whole model's output otherwise); with neither, the inputs themselves, flattened.
    """
    module = feature_extractor if feature_extractor is not None else model
    if device is None:
        params = list(model.parameters()) if model is not None else []
        device = params[0].device if params else torch.device("cpu")
    captured: list[torch.Tensor] = []
    hook = None
    if feature_extractor is None and model is not None and layer is not None:
        try:
            sub = model.get_submodule(layer)
        except AttributeError as e:
            raise ValueError(f"layer {layer!r} is not a submodule of the model ({e})") from None
        hook = sub.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    takes_t = feature_extractor is None and getattr(model, "takes_task_labels", False)
    rows = []
    try:
        for x, _y, t in iterate_minibatches(dataset.eval(), batch_size, shuffle=False):
            x = x.to(device)
            if module is None:
                out = x
            else:
                out = module(x, t.to(device)) if takes_t else module(x)  # type: ignore[operator]
                if hook is not None:
                    out = captured.pop()
            rows.append(out.reshape(len(x), -1).float().cpu())
    finally:
        if hook is not None:
            hook.remove()
        if model is not None:
            model.train(was_training)
    return torch.cat(rows)


class RandomSelection:
    """A uniformly random order (seeded)."""

    def __init__(self, seed: int | None = None) -> None:
        self.generator = torch.Generator().manual_seed(_seed(seed))

    def order(self, dataset: CLDataset, *, k: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        return torch.randperm(len(dataset), generator=self.generator)


class _FeatureBased:
    def __init__(self, feature_extractor: FeatureExtractor | None = None, *, layer: str | None = None,
                 normalize: bool = False, batch_size: int = 256) -> None:
        self.feature_extractor, self.layer, self.normalize, self.batch_size = (feature_extractor, layer, normalize,
                                                                               batch_size)

    def features(self, dataset: CLDataset, model: torch.nn.Module | None) -> torch.Tensor:
        f = compute_features(dataset, model=model, layer=self.layer, feature_extractor=self.feature_extractor,
                             batch_size=self.batch_size)
        return torch.nn.functional.normalize(f, dim=1) if self.normalize else f

    def order(self, dataset: CLDataset, *, k: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        return self.order_features(self.features(dataset, model), k)

    def order_features(self, features: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError


class HerdingSelection(_FeatureBased):
    """Herding (Welling 2009, as in iCaRL): each pick brings the mean of the picked features closest to the
    mean of all the group's features.

    :param feature_extractor: maps a batch of inputs to features; default: the model given to ``update``.
    :param layer: with the model, the name of the submodule whose output is the feature.
    :param normalize: L2-normalise features first (iCaRL does).
    """

    def order_features(self, features: torch.Tensor, k: int) -> torch.Tensor:
        n = len(features)
        k = min(k, n)
        center = features.mean(dim=0)
        running = torch.zeros_like(center)
        taken = torch.zeros(n, dtype=torch.bool)
        picks = []
        for i in range(k):  # k greedy steps, each vectorised over the candidates
            candidates = (running + features) / (i + 1)
            dist = (candidates - center).pow(2).sum(dim=1).masked_fill(taken, float("inf"))
            j = int(dist.argmin())
            picks.append(j)
            taken[j] = True
            running += features[j]
        rest = (~taken).nonzero().flatten()
        return torch.cat([torch.tensor(picks, dtype=torch.long), rest])


class ClosestToCenterSelection(_FeatureBased):
    """The samples whose features are closest to the group's mean feature, closest first.

    Same options as :class:`HerdingSelection`.
    """

    def order_features(self, features: torch.Tensor, k: int) -> torch.Tensor:
        dist = (features - features.mean(dim=0)).pow(2).sum(dim=1)
        return torch.argsort(dist, stable=True)


def _seed(seed: int | None) -> int:
    """``seed``, or one drawn from torch's global generator (so ``torch.manual_seed`` makes runs repeatable)."""
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)))
    return int(seed)


def as_strategy(value: Any) -> SelectionStrategy:
    if isinstance(value, SelectionStrategy):
        return value
    raise TypeError(f"selection must be a selection strategy with an order(dataset, k=, model=) method, got "
                    f"{type(value).__name__}")
