"""Exemplar selection strategies for :class:`~clkernel_replay.ParametricBuffer`: which samples of a group to keep.

A strategy orders the samples of one group (one class, task or experience) best first; the buffer keeps a prefix
of that order as long as the group's share of memory allows. Feature-based strategies (herding, closest to the
centre) compute features with, in this order of preference: their own ``feature_extractor``, the output of
``layer`` inside the model handed to ``update(..., model=...)``, the model's output, or the flattened inputs.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import torch

import clkernel
from clkernel import CLDataset, distributed, iterate_minibatches, model_forward
from clkernel.validate import positive_int

__all__ = ["ClosestToCenterSelection", "FeatureExtractor", "HerdingSelection", "RandomSelection", "SelectionStrategy",
           "as_strategy", "compute_features", "resolve_seed"]

#: Maps a batch of inputs ``(B, *input_shape)`` to features ``(B, *feature_shape)``.
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class SelectionStrategy(Protocol):
    """Orders the samples of one group, best first."""

    def order(self, dataset: CLDataset, *, k: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Positions in ``dataset``, best first: int64 ``(m,)`` with ``m >= min(k, len(dataset))``, no repeats.

        :param k: how many samples the group keeps (the order may be longer).
        :param model: the model being trained, for strategies that compute features with it.
        """
        ...


@torch.no_grad()
def compute_features(dataset: CLDataset, *, model: torch.nn.Module | None = None, layer: str | None = None,
                     feature_extractor: FeatureExtractor | None = None, batch_size: int = 256,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """One feature row per sample of ``dataset`` (eval transforms): float32 ``(len(dataset), F)`` on the CPU, each
    sample's feature flattened to ``F`` values.

    ``feature_extractor`` wins over ``model``; with ``model``, ``layer`` names the submodule whose output is the
    feature (the whole model's output otherwise), and the model gets the task labels when it takes them
    (:func:`clkernel.model_forward`); with neither, the inputs themselves, flattened. The model runs in eval mode,
    without gradients, on ``device`` (default: where its parameters are); its train/eval mode is restored.

    :raises ValueError: when ``layer`` is not a submodule of ``model``.
    """
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
    rows = []
    with clkernel.eval_mode(model) if model is not None else contextlib.nullcontext():
        try:
            for x, _y, t in iterate_minibatches(dataset.eval(), batch_size, shuffle=False):
                x = x.to(device)
                if feature_extractor is not None:
                    out = feature_extractor(x)
                elif model is not None:
                    out = model_forward(model, x, t.to(device))
                    if hook is not None:
                        out = captured.pop()
                else:
                    out = x
                rows.append(out.reshape(len(x), -1).float().cpu())
        finally:
            if hook is not None:
                hook.remove()
    return torch.cat(rows)


class RandomSelection:
    """A uniformly random order, from its own generator.

    :param seed: seeds the generator (default: drawn from torch's global generator, see :func:`resolve_seed`).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.generator = torch.Generator().manual_seed(resolve_seed(seed))

    def order(self, dataset: CLDataset, *, k: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """A random permutation of ``dataset``'s positions: int64 ``(len(dataset),)``."""
        return torch.randperm(len(dataset), generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (``"generator"``), for checkpoints."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class _FeatureBased:
    """Base of the feature-based strategies: features from :func:`compute_features`, ordered by a subclass."""

    def __init__(self, feature_extractor: FeatureExtractor | None = None, *, layer: str | None = None,
                 normalize: bool = False, batch_size: int = 256) -> None:
        self.feature_extractor, self.layer, self.normalize = feature_extractor, layer, normalize
        self.batch_size = positive_int(batch_size, "batch_size", type(self).__name__)

    def features(self, dataset: CLDataset, model: torch.nn.Module | None) -> torch.Tensor:
        """float32 ``(len(dataset), F)``: the samples' features, L2-normalised per row with ``normalize``."""
        f = compute_features(dataset, model=model, layer=self.layer, feature_extractor=self.feature_extractor,
                             batch_size=self.batch_size)
        return torch.nn.functional.normalize(f, dim=1) if self.normalize else f

    def order(self, dataset: CLDataset, *, k: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Positions in ``dataset``, best first (int64), from the features of its samples.

        On several processes every rank must call it, with the same dataset: each computes the features of its
        shard (:func:`clkernel.distributed.shard_indices`) and the rows are summed over ranks
        (:func:`clkernel.distributed.all_reduce_sum`; rank 0 computes them all for fewer samples than ranks), so
        every rank orders the same features and keeps the same samples. A model wrapped in
        ``DistributedDataParallel`` is unwrapped first.
        """
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        n = len(dataset)
        if not distributed.is_distributed():
            return self.order_features(self.features(dataset, model), k)
        if n < distributed.world_size():  # some ranks would have no sample: rank 0 computes them all
            features = self.features(dataset, model) if distributed.rank() == 0 else None
            return self.order_features(distributed.broadcast_object(features), k)
        mine = distributed.shard_indices(n)
        local = self.features(dataset.subset(mine), model)
        features = local.new_zeros((n, *local.shape[1:]))
        features[mine] = local
        return self.order_features(distributed.all_reduce_sum(features), k)

    def order_features(self, features: torch.Tensor, k: int) -> torch.Tensor:
        """Rows of ``features`` ``(n, F)``, best first: int64 ``(n,)``, a permutation of ``0..n-1``."""
        raise NotImplementedError


class HerdingSelection(_FeatureBased):
    """Herding (Welling, 2009; the exemplar selection of iCaRL, Rebuffi et al., 2017): each pick brings the mean
    of the picked features closest (squared Euclidean distance) to the mean of all the group's features.

    ``k`` greedy steps, each ``O(n F)``; the samples not picked follow in their dataset order.

    :param feature_extractor: maps a batch of inputs ``(B, *input_shape)`` to features; default: the model given
        to ``update``.
    :param layer: with the model, the name of the submodule whose output is the feature.
    :param normalize: L2-normalise features first (iCaRL does).
    :param batch_size: samples per forward pass when computing features.
    :raises ValueError: for a ``batch_size`` that is not a positive integer.
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


def resolve_seed(seed: int | None) -> int:
    """``seed`` as an ``int``, or, for ``None``, one drawn from torch's global generator (in ``[0, 2**62)``), so
    that ``torch.manual_seed`` makes runs that give no seed repeatable. Seeds the ``torch.Generator`` of every
    buffer, sampler and selection strategy of this package."""
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)))
    return int(seed)


def as_strategy(value: Any) -> SelectionStrategy:
    """``value`` if it is a :class:`SelectionStrategy` (has an ``order(dataset, k=, model=)`` method).

    :raises TypeError: otherwise.
    """
    if isinstance(value, SelectionStrategy):
        return value
    raise TypeError(f"selection must be a selection strategy with an order(dataset, k=, model=) method, got "
                    f"{type(value).__name__}")
