"""Storage policies: bounded replay buffers, usable on their own, outside any training loop.

Every policy is updated with one experience (or one dataset) at a time, ``policy.update(experience)``, and exposes
``policy.buffer``: a kernel :class:`~clkernel.CLDataset` view over the samples it keeps, with their data
attributes (``targets``, ``task_labels`` and any other the datasets share). No data is copied: the buffer is a
subset of the concatenation of the old buffer and the new dataset, so an update costs time in proportion to the
new data plus the (bounded) buffer, never to the history.

All policies share one mechanism: every kept sample has a *score* and a *group* (its class, its experience, ...);
each group gets a *quota* of memory, and an update keeps, per group, the ``quota`` best-scored samples of the old
buffer and the new data together. Reservoir sampling scores samples with a uniform random number drawn once, so the
buffer is a uniform sample of everything seen (per group); the greedy GDumb buffer scores by arrival (oldest first);
the parametric buffer by the rank its selection strategy gives.

The buffer is kept sorted by (group, score descending), so an update only sorts the new samples that can enter
(those above their group's current cut-off score) and merges them in with binary searches: the work that grows
with the buffer is a few linear passes, and the sorting grows with the new data only
(:func:`merge_top_per_group`; ``bench/bench_buffer_update.py`` measures it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from clkernel import CLDataset, Experience
from clkernel.validate import positive_int
from clkernel_replay.selection import RandomSelection, SelectionStrategy, as_strategy, resolve_seed

__all__ = ["POLICIES", "ClassBalancedBuffer", "ExperienceBalancedBuffer", "GreedyClassBalancedBuffer",
           "ParametricBuffer", "ReservoirSamplingBuffer", "StoragePolicy", "balanced_quotas", "make_policy",
           "merge_top_per_group", "top_per_group"]


def top_per_group(score: torch.Tensor, group: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """Positions of the ``quota[g]`` best-scored samples of every group ``g``, sorted ascending.

    :param score: ``(n,)`` float, higher is better; samples scored ``-inf`` are never kept.
    :param group: ``(n,)`` int64, each sample's group in ``0..G-1``.
    :param quota: ``(G,)`` int64, the samples each group keeps at most.
    :returns: int64 ``(k,)``, positions in ``0..n-1``.

    One stable sort by score, then one by group: a sample's rank in its group is its position minus the group's
    start. Ties keep the lower position.
    """
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    counts = torch.bincount(group, minlength=len(quota))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - starts[g]
    keep = order[(rank < quota[g]) & torch.isfinite(score[order])]
    return keep.sort().values


def balanced_quotas(num_groups: int, total: int) -> torch.Tensor:
    """``total`` split over ``num_groups`` as evenly as possible: int64 ``(num_groups,)``, the first groups
    getting one more when it does not divide evenly."""
    base, extra = divmod(total, num_groups)
    return base + (torch.arange(num_groups) < extra).long()


def merge_top_per_group(old_key: torch.Tensor, old_score: torch.Tensor, new_key: torch.Tensor,
                        new_score: torch.Tensor, quotas: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group, the ``quota`` best-scored of an old buffer and new samples: ``(keep, key, score)``.

    :param old_key: ``(m,)`` int64 group keys of the old buffer, sorted; within a key, ``old_score`` descends.
    :param old_score: ``(m,)`` float64 scores of the old buffer.
    :param new_key: ``(n,)`` int64 group keys of the new samples, any order.
    :param new_score: ``(n,)`` float64 scores of the new samples.
    :param quotas: ``quotas(keys, counts)``: each group's memory (int64 ``(G,)``) from the sorted distinct group
        keys ``(G,)`` and their candidate counts ``(G,)``.
    :returns: ``keep``, int64 ``(k,)`` positions in the concatenation old + new; the kept samples' ``key``
        (int64) and ``score`` (float64), ``(k,)`` each, sorted by key then score descending (the order ``keep``
        lists them in).

    Only new samples above their group's cut-off (the old score at rank ``quota - 1``) are sorted; old samples
    keep their order. Ties go to the old sample.
    """
    m = len(old_key)
    okeys, ocounts = torch.unique_consecutive(old_key, return_counts=True)
    nkeys, ninv, ncounts = torch.unique(new_key, return_inverse=True, return_counts=True)
    keys = torch.unique(torch.cat([okeys, nkeys]))
    g = len(keys)
    oslot, nslot = torch.searchsorted(keys, okeys), torch.searchsorted(keys, nkeys)
    old_len = torch.zeros(g, dtype=torch.long).index_put_((oslot,), ocounts)
    new_len = torch.zeros(g, dtype=torch.long).index_put_((nslot,), ncounts)
    quota = quotas(keys, old_len + new_len)
    old_start = torch.cumsum(old_len, 0) - old_len
    # cut-off per group: the old score at rank quota-1 (-inf when the group is not full, +inf for no room)
    at = (old_start + quota - 1).clamp(0, max(m - 1, 0))
    cut = old_score[at] if m else torch.zeros(g, dtype=old_score.dtype)
    cut = torch.where(old_len >= quota, cut, torch.full_like(cut, float("-inf")))
    cut = torch.where(quota > 0, cut, torch.full_like(cut, float("inf")))
    new_slot = nslot[ninv]
    enter = (new_score > cut[new_slot]).nonzero().flatten()
    # entrants sorted by group, then score descending (the only sort, over new samples)
    e_slot, e_score = new_slot[enter], new_score[enter]
    order = torch.argsort(e_score, descending=True, stable=True)
    order = order[torch.argsort(e_slot[order], stable=True)]
    enter, e_slot, e_score = enter[order], e_slot[order], e_score[order]
    e_len = torch.bincount(e_slot, minlength=g)
    e_start = torch.cumsum(e_len, 0) - e_len
    # rank of every candidate in its merged group: its own rank plus the other side's samples above it
    o_slot = torch.repeat_interleave(torch.arange(g), old_len)
    o_rank = torch.arange(m) - old_start[o_slot]
    e_rank = torch.arange(len(enter)) - e_start[e_slot]
    for s in e_slot.unique().tolist():  # only groups that receive new samples
        o0, o1 = int(old_start[s]), int(old_start[s] + min(int(old_len[s]), int(quota[s])))
        e0, e1 = int(e_start[s]), int(e_start[s] + e_len[s])
        o_scores, en_scores = old_score[o0:o1], e_score[e0:e1]
        o_rank[o0:o1] += torch.searchsorted(-en_scores, -o_scores, side="left")  # entrants strictly above
        e_rank[e0:e1] += torch.searchsorted(-o_scores, -en_scores, side="right")  # old samples above or tied
    o_keep = (o_rank < quota[o_slot]).nonzero().flatten()
    e_keep = (e_rank < quota[e_slot]).nonzero().flatten()
    final_len = torch.minimum(quota, old_len + e_len)
    final_start = torch.cumsum(final_len, 0) - final_len
    total = int(final_len.sum())
    keep = torch.empty(total, dtype=torch.long)
    slot = torch.empty(total, dtype=torch.long)
    score = torch.empty(total, dtype=old_score.dtype)
    for idx, kept, slots, ranks, scores, offset in (
            (torch.arange(m), o_keep, o_slot, o_rank, old_score, 0),
            (enter, e_keep, e_slot, e_rank, e_score, m)):
        pos = final_start[slots[kept]] + ranks[kept]
        keep[pos] = idx[kept] + offset
        slot[pos] = slots[kept]
        score[pos] = scores[kept]
    return keep, keys[slot], score


class StoragePolicy:
    """Base class: a buffer of at most ``max_size`` samples, grouped and scored (see the module docstring).

    Subclasses define how a dataset's samples are grouped (:meth:`group_of`), the memory each group gets
    (:meth:`quotas`) and the score of new samples (:meth:`new_scores`).

    :param max_size: the buffer's capacity in samples.
    :param seed: seeds the policy's generator (default: drawn from torch's global generator).
    :raises ValueError: when ``max_size`` is not a positive integer.
    """

    #: Name used in error messages.
    kind = "storage policy"

    def __init__(self, max_size: int, *, seed: int | None = None) -> None:
        self.max_size = positive_int(max_size, "max_size", type(self).__name__)
        self.generator = torch.Generator().manual_seed(resolve_seed(seed))
        self._data: CLDataset | None = None
        self._group = torch.zeros(0, dtype=torch.long)
        self._score = torch.zeros(0, dtype=torch.float64)
        self._origin = torch.zeros(0, 2, dtype=torch.long)  # (key of the update, position in its dataset)
        self._updates = 0
        self._pending = False

    # ------------------------------------------------------------------ reading

    @property
    def buffer(self) -> CLDataset | None:
        """The kept samples as a CLDataset view (None while empty).

        :raises RuntimeError: between :meth:`load_state_dict` and :meth:`restore` (see :attr:`needs_restore`).
        """
        if self._pending:
            raise RuntimeError(f"{type(self).__name__} was loaded from a state dict: call restore(datasets) "
                               f"before reading the buffer")
        return self._data

    @property
    def needs_restore(self) -> bool:
        """True after :meth:`load_state_dict` loaded a non-empty buffer, until :meth:`restore` gives it its data
        back; :attr:`buffer` and :meth:`update` raise meanwhile."""
        return self._pending

    def __len__(self) -> int:
        return len(self._group)

    @property
    def group_keys(self) -> torch.Tensor:
        """int64 ``(len(self),)``: the group (class, experience, task...) of every buffer sample, aligned with
        :attr:`buffer`."""
        return self._group

    def group_sizes(self) -> dict[int, int]:
        """Number of buffer samples per group key."""
        keys, counts = torch.unique(self._group, return_counts=True)
        return dict(zip(keys.tolist(), counts.tolist()))

    # ------------------------------------------------------------------ updating

    def group_of(self, dataset: CLDataset, key: int) -> torch.Tensor:
        """int64 ``(len(dataset),)``: the group of every sample of ``dataset`` (``key`` identifies the update: the
        experience index). The base class puts every sample in group 0."""
        return torch.zeros(len(dataset), dtype=torch.long)

    def quotas(self, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Memory per group: int64 ``(G,)`` for the sorted group ``keys`` ``(G,)`` with ``counts`` ``(G,)``
        candidates each (buffer and new samples together)."""
        return balanced_quotas(len(keys), self.max_size)

    def new_scores(self, n: int) -> torch.Tensor:
        """Scores of ``n`` new samples: float64 ``(n,)``, higher is kept first. Reservoir: uniform in [0, 1)."""
        return torch.rand(n, generator=self.generator, dtype=torch.float64)

    def _unpack(self, data: CLDataset | Experience, key: int | None) -> tuple[CLDataset, int]:
        if self._pending:
            raise RuntimeError(f"{type(self).__name__} was loaded from a state dict: call restore(datasets) first")
        if isinstance(data, Experience):
            dataset, key = data.dataset, data.index if key is None else key
        elif isinstance(data, CLDataset):
            dataset = data
        else:
            raise TypeError(f"{type(self).__name__}.update expects an Experience or a CLDataset, got "
                            f"{type(data).__name__}")
        return dataset, self._updates if key is None else int(key)

    def _commit(self, dataset: CLDataset, key: int, keep: torch.Tensor, group: torch.Tensor,
                score: torch.Tensor) -> None:
        """Keep the candidates ``keep`` (positions in old buffer + ``dataset``) with their group and score."""
        n = len(dataset)
        origin = torch.cat([self._origin, torch.stack([torch.full((n,), key), torch.arange(n)], dim=1)])
        candidates = dataset if self._data is None else self._data.concat(dataset)
        self._data = candidates.subset(keep) if len(keep) else None
        self._group, self._score, self._origin = group, score, origin[keep]
        self._updates += 1

    def update(self, data: CLDataset | Experience, *, key: int | None = None,
               model: torch.nn.Module | None = None) -> None:
        """Add the samples of ``data`` (an experience, or a dataset) that the policy keeps; evict others.

        :param key: identifies this update (an experience-balanced buffer groups by it); default: the
            experience's index, or the number of updates so far for a bare dataset.
        :param model: used by feature-based selection strategies only.
        :raises TypeError: when ``data`` is neither an Experience nor a CLDataset.
        :raises RuntimeError: while :attr:`needs_restore`.
        """
        dataset, key = self._unpack(data, key)
        new_key = self.group_of(dataset, key)
        keep, group, score = merge_top_per_group(self._group, self._score, new_key, self.new_scores(len(dataset)),
                                                 self.quotas)
        self._commit(dataset, key, keep, group, score)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, no data: which sample of which update every buffer slot holds (``origin``, int64
        ``(size, 2)``: update key and position in that update's dataset), its ``group`` (int64) and ``score``
        (float64), the number of ``updates`` and the generator's state."""
        return {"group": self._group.clone(), "score": self._score.clone(), "origin": self._origin.clone(),
                "updates": self._updates, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned; the buffer's data comes back with :meth:`restore`."""
        self._group, self._score, self._origin = state["group"], state["score"], state["origin"]
        self._updates = int(state["updates"])
        self.generator.set_state(state["generator"])
        self._data = None
        self._pending = len(self._group) > 0

    def restore(self, datasets: Mapping[int, CLDataset] | Callable[[int], CLDataset]) -> None:
        """Rebuild the buffer view after :meth:`load_state_dict` from the datasets of past updates, by key
        (for experiences: ``{exp.index: exp.dataset for exp in stream}``). Does nothing unless
        :attr:`needs_restore`.

        :raises KeyError: when the dataset of an update that buffer samples come from is missing.
        """
        if not self._pending:
            return
        get = datasets if callable(datasets) else datasets.__getitem__
        keys = self._origin[:, 0]
        parts, where = [], []
        for key in keys.unique().tolist():
            at = (keys == key).nonzero().flatten()
            try:
                dataset = get(key)
            except (KeyError, IndexError):
                raise KeyError(f"{type(self).__name__}.restore: no dataset for update {key}, which buffer samples "
                               f"come from") from None
            parts.append(dataset.subset(self._origin[at, 1]))
            where.append(at)
        merged = parts[0].concat(*parts[1:]) if len(parts) > 1 else parts[0]
        self._data = merged.subset(torch.argsort(torch.cat(where)))
        self._pending = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_size={self.max_size}, size={len(self)}, groups={self.group_sizes()})"


class ReservoirSamplingBuffer(StoragePolicy):
    """Reservoir sampling (Vitter, 1985): a uniform random sample of at most ``max_size`` of all the samples
    ever seen, kept as the ``max_size`` largest of one uniform random key drawn per sample."""


class ExperienceBalancedBuffer(StoragePolicy):
    """The same memory for every experience: ``max_size / experiences seen`` (adaptive), or
    ``max_size / num_experiences`` from the start when ``adaptive_size`` is False. Reservoir sampling inside
    each experience's share."""

    def __init__(self, max_size: int, *, adaptive_size: bool = True, num_experiences: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(max_size, seed=seed)
        if not adaptive_size:
            positive_int(num_experiences, "num_experiences (needed when adaptive_size is False)",
                         type(self).__name__)
        self.adaptive_size, self.num_experiences = adaptive_size, num_experiences

    def group_of(self, dataset: CLDataset, key: int) -> torch.Tensor:
        return torch.full((len(dataset),), key, dtype=torch.long)

    def quotas(self, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if self.adaptive_size:
            return balanced_quotas(len(keys), self.max_size)
        if len(keys) > self.num_experiences:  # type: ignore[operator]
            raise ValueError(f"{type(self).__name__}: num_experiences={self.num_experiences} but "
                             f"{len(keys)} experiences were given")
        return torch.full((len(keys),), self.max_size // self.num_experiences)  # type: ignore[operator]


class ClassBalancedBuffer(StoragePolicy):
    """The same memory for every class: ``max_size / classes seen`` (adaptive), or
    ``max_size / total_num_classes`` when ``adaptive_size`` is False. Reservoir sampling inside each class."""

    def __init__(self, max_size: int, *, adaptive_size: bool = True, total_num_classes: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(max_size, seed=seed)
        if not adaptive_size:
            positive_int(total_num_classes, "total_num_classes (needed when adaptive_size is False)",
                         type(self).__name__)
        self.adaptive_size, self.total_num_classes = adaptive_size, total_num_classes

    def group_of(self, dataset: CLDataset, key: int) -> torch.Tensor:
        return dataset.targets.to(torch.long)

    def quotas(self, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if self.adaptive_size:
            return balanced_quotas(len(keys), self.max_size)
        if len(keys) > self.total_num_classes:  # type: ignore[operator]
            raise ValueError(f"{type(self).__name__}: total_num_classes={self.total_num_classes} but "
                             f"{len(keys)} classes were seen: {keys.tolist()}")
        return torch.full((len(keys),), self.max_size // self.total_num_classes)  # type: ignore[operator]


class GreedyClassBalancedBuffer(StoragePolicy):
    """GDumb's greedy class-balanced sampler (Prabhu et al., 2020): samples already stored stay first, new ones
    fill the memory by class, and classes are balanced (max-min fair: each class gets ``max_size / classes seen``
    within one, and a class with fewer samples leaves its room to the others). New samples enter in a random
    order."""

    def __init__(self, max_size: int, *, seed: int | None = None) -> None:
        super().__init__(max_size, seed=seed)
        self._arrivals = 0

    def group_of(self, dataset: CLDataset, key: int) -> torch.Tensor:
        return dataset.targets.to(torch.long)

    def quotas(self, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        quota = torch.zeros(len(keys), dtype=torch.long)
        left = self.max_size
        order = torch.argsort(counts, stable=True).tolist()  # water-filling, smallest classes first
        for i, g in enumerate(order):
            quota[g] = min(int(counts[g]), left // (len(order) - i))
            left -= int(quota[g])
        return quota

    def new_scores(self, n: int) -> torch.Tensor:
        arrival = self._arrivals + torch.randperm(n, generator=self.generator)
        self._arrivals += n
        return -arrival.to(torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "arrivals": self._arrivals}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._arrivals = int(state["arrivals"])


class ParametricBuffer(StoragePolicy):
    """Memory split evenly over groups (``groupby``: None for one group, ``"class"``, ``"task"`` or
    ``"experience"``), each group keeping the first samples of the order its selection strategy gives
    (:class:`~clkernel_replay.RandomSelection`, :class:`~clkernel_replay.HerdingSelection`,
    :class:`~clkernel_replay.ClosestToCenterSelection`). A group that receives new data is re-ranked over its
    stored and new samples; a group that only shrinks keeps the prefix of its order."""

    GROUPBY = (None, "class", "task", "experience")

    def __init__(self, max_size: int, *, groupby: str | None = None, selection: SelectionStrategy | None = None,
                 seed: int | None = None) -> None:
        super().__init__(max_size, seed=seed)
        if groupby not in self.GROUPBY:
            raise ValueError(f"{type(self).__name__}: groupby must be one of {self.GROUPBY}, got {groupby!r}")
        self.groupby = groupby
        self.selection = as_strategy(selection if selection is not None else RandomSelection(seed))

    def state_dict(self) -> dict[str, Any]:
        """The base state, plus the selection strategy's (``"selection"``) when it has a ``state_dict()``."""
        state = super().state_dict()
        if callable(getattr(self.selection, "state_dict", None)):
            state["selection"] = self.selection.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "selection" in state:
            self.selection.load_state_dict(state["selection"])

    def group_of(self, dataset: CLDataset, key: int) -> torch.Tensor:
        if self.groupby == "class":
            return dataset.targets.to(torch.long)
        if self.groupby == "task":
            return dataset.task_labels.to(torch.long)
        if self.groupby == "experience":
            return torch.full((len(dataset),), key, dtype=torch.long)
        return torch.zeros(len(dataset), dtype=torch.long)

    def update(self, data: CLDataset | Experience, *, key: int | None = None,
               model: torch.nn.Module | None = None) -> None:
        """Add ``data``'s samples: groups that receive new samples are re-ranked by the selection strategy
        (``model`` gives feature-based strategies their features), the others keep their order's prefix."""
        dataset, key = self._unpack(data, key)
        n = len(dataset)
        candidates = dataset if self._data is None else self._data.concat(dataset)
        group_key = torch.cat([self._group, self.group_of(dataset, key)])
        keys, group, counts = torch.unique(group_key, return_inverse=True, return_counts=True)
        quota = self.quotas(keys, counts)
        score = torch.cat([self._score, torch.full((n,), float("-inf"), dtype=torch.float64)])
        for g in group[len(group) - n:].unique().tolist():
            members = (group == g).nonzero().flatten()
            order = self.selection.order(candidates.subset(members), k=int(quota[g]), model=model)
            score[members] = float("-inf")
            score[members[order]] = -torch.arange(len(order), dtype=torch.float64)
        keep = top_per_group(score, group, quota)
        self._commit(dataset, key, keep, group_key[keep], score[keep])


#: Storage policy names accepted by the replay plugin's ``storage_policy`` option.
POLICIES = ("experience_balanced", "class_balanced", "reservoir", "greedy_class_balanced", "random", "herding",
            "closest_to_center")


def make_policy(name: str, mem_size: int, seed: int | None = None) -> StoragePolicy:
    """The storage policy called ``name`` (one of :data:`POLICIES`; case and ``-``/``_`` do not matter) with
    ``mem_size`` slots.

    ``random``, ``herding`` and ``closest_to_center`` are class-grouped parametric buffers; the feature-based
    ones use the model's output as features (build a :class:`ParametricBuffer` yourself for another layer).

    :raises ValueError: for an unknown name, or a ``mem_size`` that is not a positive integer.
    """
    from clkernel_replay.selection import ClosestToCenterSelection, HerdingSelection

    key = name.strip().lower().replace("-", "_")
    simple = {"experience_balanced": ExperienceBalancedBuffer, "class_balanced": ClassBalancedBuffer,
              "reservoir": ReservoirSamplingBuffer, "greedy_class_balanced": GreedyClassBalancedBuffer}
    if key in simple:
        return simple[key](mem_size, seed=seed)
    selections = {"random": lambda: RandomSelection(seed), "herding": HerdingSelection,
                  "closest_to_center": ClosestToCenterSelection}
    if key in selections:
        return ParametricBuffer(mem_size, groupby="class", selection=selections[key](), seed=seed)
    raise ValueError(f"storage_policy {name!r} is unknown; choose one of {', '.join(POLICIES)}")
