"""CLDataset: a map-style dataset of ``(x, y, t)`` triplets with data attributes and train/eval transforms.

A CLDataset is a flat view over one or more *sources* (a torch ``Dataset`` or an in-memory tensor, each with its
own transform groups). It keeps, per sample, the source and the index inside it: subset and concat only index
or concatenate those flat index tensors, so reading a sample costs the same after any number of them, and the
data itself is never copied. A view holds only the sources its samples use (subset drops the others), so a
buffer keeping a few samples of each of many datasets keeps only those alive. Data attributes (``targets``,
``task_labels`` and any other name) are tensors of one value per sample that follow every subset and concat;
integer ones are int64, and ``targets`` and ``task_labels`` are checked to be ids (whole, non-negative). ``y``
and ``t`` are always read from the ``targets`` and ``task_labels`` attributes, so relabelling a dataset is
replacing an attribute.

Transforms: for a torch ``Dataset`` source they apply to one sample (torchvision style). For a tensor source they
are *batched*: they receive a whole minibatch ``x[idx]`` with its leading batch dimension, so an epoch over
in-memory data is one indexing operation and one transform call per minibatch, never a loop over samples.

Devices: in-memory data can live on an accelerator (:meth:`CLDataset.to`, or ``from_tensors`` of a tensor
there). Minibatches are then gathered there and come back there, ``x``, ``y`` and ``t`` alike, so an epoch
makes no host-device copy per minibatch; data attributes stay on the CPU (the views' bookkeeping), and each
view copies what its gathers need to the device once. Data read from a torch ``Dataset`` (files) is read on
the CPU through a ``torch.utils.data.DataLoader`` (:class:`MinibatchLoader`), with worker processes if asked.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from attrs import evolve, field, frozen
from torch.utils.data import Dataset, default_collate

__all__ = ["RESERVED_LOADER_OPTIONS", "CLDataset", "EpochLoader", "MinibatchLoader", "as_cl_dataset", "iterate_minibatches",
           "set_batch_reader_options"]

Transform = Callable[[Any], Any]
GROUPS = ("train", "eval")


@frozen(eq=False)
class _Source:
    """One underlying dataset or tensor, with its transform groups (``{"train": fn|None, "eval": fn|None}``)."""

    data: Any
    transforms: Mapping[str, Transform | None]

    @property
    def is_tensor(self) -> bool:
        return isinstance(self.data, torch.Tensor)

    def item(self, index: int, group: str) -> Any:
        transform = self.transforms.get(group)
        if self.is_tensor:
            x = self.data[index]
            return transform(x.unsqueeze(0))[0] if transform is not None else x
        sample = self.data[index]
        x = sample[0] if isinstance(sample, (tuple, list)) else sample
        return transform(x) if transform is not None else x

    def batch(self, index: torch.Tensor | None, group: str) -> torch.Tensor:
        x = self.data if index is None else self.data.index_select(0, index)
        transform = self.transforms.get(group)
        return transform(x) if transform is not None else x


_LABELS = ("targets", "task_labels")


def _attribute(name: str, values: Any, n: int) -> torch.Tensor:
    """``values`` as data attribute ``name`` of ``n`` samples; every value from outside goes through here.

    One value (or row) per sample; a single value is repeated. Integers of any dtype become int64 (so sums,
    ``bincount`` and ``y * C + p`` never overflow a narrow dtype); floats and bools of other attributes stay
    as they are (weights, masks). ``targets`` and ``task_labels`` must be 1-D, whole (any int, uint or bool
    dtype, or floats holding whole numbers) and non-negative; they always become int64.

    :raises TypeError: when ``values`` are not numbers.
    :raises ValueError: for the wrong number of values, or labels that are 2-D (one-hot), fractional (or not
        finite) or negative. Every message names the attribute.
    """
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"data attribute {name!r} must be numbers, one per sample, got {type(values).__name__}: "
                        f"{error}") from None
    if tensor.device.type != "cpu":  # views index and concatenate attributes on the CPU; gathers copy them once
        tensor = tensor.cpu()
    if tensor.dim() == 0:
        tensor = tensor.expand(n).clone()
    if tensor.shape[0] != n:
        raise ValueError(f"data attribute {name!r} has {tensor.shape[0]} values, expected one per sample ({n})")
    if name not in _LABELS:
        return tensor if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool \
            else tensor.long()
    if tensor.dim() != 1:
        hint = "; one-hot labels? pass labels.argmax(1)" if tensor.dim() == 2 else ""
        raise ValueError(f"data attribute {name!r} must be one integer id per sample (1-D), got shape "
                         f"{tuple(tensor.shape)}{hint}")
    if tensor.is_floating_point():
        bad = (~torch.isfinite(tensor) | (tensor != tensor.trunc())).nonzero().flatten()
        if len(bad):
            raise ValueError(f"data attribute {name!r} must hold whole numbers (ids), got {tensor[bad[0]].item()} "
                             f"at sample {int(bad[0])}")
    tensor = tensor.long()
    if int(tensor.min()) < 0:
        at = int(tensor.argmin())
        raise ValueError(f"data attribute {name!r} must hold ids 0, 1, 2, ..., got {int(tensor[at])} at sample {at}")
    return tensor


@frozen(eq=False)
class CLDataset:
    """A dataset of ``(x, y, t)`` with data attributes, lazy subset/concat and train/eval transform groups.

    Build one with :meth:`from_tensors` or :meth:`from_dataset`; every other method returns a new view.
    """

    _sources: tuple[_Source, ...]
    _source_of: torch.Tensor | None  # source number per sample; None when there is one source
    _index: torch.Tensor | None  # index inside the source per sample; None means 0..n-1 of the only source
    attributes: Mapping[str, torch.Tensor]
    group: str = field(default="train")
    # per view: the bookkeeping tensors copied to the data's device, the batch reader of file-backed data
    _cache: dict[Any, Any] = field(factory=dict, init=False, repr=False)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_tensors(
        cls,
        x: torch.Tensor,
        y: Any,
        t: Any = 0,
        *,
        transform: Transform | None = None,
        eval_transform: Transform | None = None,
        **attributes: Any,
    ) -> CLDataset:
        """In-memory data: ``x`` with one row per sample, targets ``y``, task labels ``t`` (a tensor or one int).

        Transforms here are batched: they receive ``x[idx]`` for a whole minibatch.
        """
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise TypeError(f"CLDataset.from_tensors expects x as a tensor with a sample dimension, got {type(x)}")
        return cls._build(_Source(x, {"train": transform, "eval": eval_transform}), len(x), y, t, attributes)

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        *,
        targets: Any = None,
        task_labels: Any = 0,
        transform: Transform | None = None,
        eval_transform: Transform | None = None,
        **attributes: Any,
    ) -> CLDataset:
        """Wrap any map-style dataset whose items are ``x`` or ``(x, y, ...)``.

        ``targets`` defaults to the labels the items carry: ``dataset.targets`` (through the dataset's
        ``target_transform`` when it has one) when it agrees with the items at the first, middle and last
        positions, else the ``y`` of every item, read once.
        Transforms here apply to one sample, after any transform the wrapped dataset applies itself.
        """
        if isinstance(dataset, CLDataset):
            return dataset
        n = len(dataset)  # type: ignore[arg-type]
        if targets is None and n:
            targets = _labels_of(dataset, n)
        return cls._build(_Source(dataset, {"train": transform, "eval": eval_transform}), n, targets, task_labels,
                          attributes)

    @classmethod
    def _build(cls, source: _Source, n: int, y: Any, t: Any, attributes: Mapping[str, Any]) -> CLDataset:
        if n == 0:
            raise ValueError("a CLDataset needs at least one sample, got an empty dataset")
        named = {"targets": y, "task_labels": t, **attributes}
        return cls((source,), None, None, {name: _attribute(name, v, n) for name, v in named.items()})

    # ----------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.attributes["targets"])

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a CLDataset of {n} samples")
        i = int(i) % n
        source = self._sources[0 if self._source_of is None else int(self._source_of[i])]
        j = i if self._index is None else int(self._index[i])
        return source.item(j, self.group), self.attributes["targets"][i], self.attributes["task_labels"][i]

    @property
    def is_batched(self) -> bool:
        """True when every source is an in-memory tensor, so :meth:`get_batch` needs no per-sample work."""
        return all(s.is_tensor for s in self._sources)

    @property
    def device(self) -> torch.device:
        """Where minibatches are gathered: the device of the in-memory data (see :meth:`to`); the CPU for data read
        from a torch ``Dataset``."""
        return self._sources[0].data.device if self.is_batched else torch.device("cpu")

    def to(self, device: str | torch.device) -> CLDataset:
        """A view whose in-memory sources live on ``device``; self when they already do.

        Each tensor source is copied there whole, once: move a dataset before splitting it (a benchmark's
        ``device`` option does), so that every experience, subset and replay buffer made from it shares that one
        copy. :meth:`get_batch` and :func:`iterate_minibatches` then gather ``x``, ``y`` and ``t`` on the device
        (index tensors are copied there once per epoch, not per minibatch), and batched transforms run there.
        Data attributes stay on the CPU. Sources that are torch ``Dataset`` s (files) are not moved.

        :raises RuntimeError: from torch when the device does not exist.
        """
        sources = tuple(_Source(s.data.to(device), s.transforms) if s.is_tensor else s for s in self._sources)
        if all(new.data is old.data for new, old in zip(sources, self._sources)):
            return self
        return evolve(self, sources=sources)

    def _bookkeeping(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """``targets``, ``task_labels``, the index inside the sources and the source numbers (None when not kept),
        on ``device``: copied there once per view and device."""
        values = (self.attributes["targets"], self.attributes["task_labels"], self._index, self._source_of)
        if device.type == "cpu":
            return values  # type: ignore[return-value]
        key = ("bookkeeping", device)
        if key not in self._cache:
            self._cache[key] = tuple(None if v is None else v.to(device) for v in values)
        return self._cache[key]

    def get_batch(self, idx: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The minibatch ``(x, y, t)`` of the samples at positions ``idx`` (a 1-D long tensor, any device).

        In-memory data: one gather (per source) where the data lives; ``x``, ``y`` and ``t`` (int64, ``(B,)``)
        come back on :attr:`device`. ``idx`` is copied there when it is elsewhere (pass it there to avoid that
        copy). Data read from a torch ``Dataset``: read on the CPU by a :class:`MinibatchLoader` kept by this view,
        with the worker processes :func:`set_batch_reader_options` asks for (default: none, read here).
        """
        idx = torch.as_tensor(idx, dtype=torch.long)
        if not self.is_batched:
            return self._reader().read(idx)
        device = self.device
        idx = idx.to(device)
        targets, tasks, index, source_of = self._bookkeeping(device)
        y, t = targets.index_select(0, idx), tasks.index_select(0, idx)
        if source_of is None:
            return self._sources[0].batch(idx if index is None else index.index_select(0, idx), self.group), y, t
        owner, inner = source_of.index_select(0, idx), index.index_select(0, idx)
        parts = {k: self._sources[k].batch(inner[owner == k], self.group) for k in owner.unique().tolist()}
        first = next(iter(parts.values()))
        x = first.new_empty((len(idx), *first.shape[1:]))
        for k, part in parts.items():
            x[owner == k] = part
        return x, y, t

    def get_batches(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
        """The minibatches :meth:`get_batch` returns for each index tensor of ``batches``, in order, lazily:
        ``batches`` may be an endless generator (a replay buffer's draws).

        In-memory data: each minibatch is gathered when the iterator is advanced, and ``batches`` is drawn one at
        a time. Data read from a torch ``Dataset`` with workers (:func:`set_batch_reader_options`): one
        :class:`MinibatchLoader` of its own reads ahead, ``prefetch_factor`` minibatches per worker, while the
        caller computes, as a plain loop's second ``DataLoader`` does; ``batches`` is then drawn that far ahead
        of what was returned. Dropping the iterator stops its workers.
        """
        if self.is_batched or not _READER_OPTIONS.get("num_workers"):
            return map(self.get_batch, batches)
        return MinibatchLoader(evolve(self), {**_READER_OPTIONS, "persistent_workers": False})(batches)

    def _reader(self) -> MinibatchLoader:
        """This view's reader for :meth:`get_batch`, built again when the reader options changed."""
        options = dict(_READER_OPTIONS)
        kept = self._cache.get("reader")
        if kept is None or kept[0] != options:
            if kept is not None:
                kept[1].close()
            # the DataLoader holds a copy of this view (no cache), so the view does not keep itself alive
            reader = MinibatchLoader(evolve(self), {**options, "persistent_workers": True})
            kept = self._cache["reader"] = (options, reader)
        return kept[1]

    def __getattr__(self, name: str) -> torch.Tensor:
        attributes = object.__getattribute__(self, "attributes")
        if name in attributes:
            return attributes[name]
        raise AttributeError(f"CLDataset has no attribute or data attribute {name!r} (data attributes: "
                             f"{', '.join(attributes)})")

    # ----------------------------------------------------------------- views

    def subset(self, indices: Sequence[int] | torch.Tensor) -> CLDataset:
        """The samples at ``indices``, in that order (data attributes and transforms follow)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if len(idx) == 0:
            raise ValueError("subset with no indices would give an empty dataset")
        index = idx if self._index is None else self._index[idx]
        sources, source_of = self._sources, None if self._source_of is None else self._source_of[idx]
        if source_of is not None:  # keep only the sources these samples use, renumbered in order
            used = torch.bincount(source_of, minlength=len(sources)).nonzero().flatten()
            if len(used) < len(sources):
                sources = tuple(sources[k] for k in used.tolist())
                renumber = torch.zeros(len(self._sources), dtype=torch.long)
                renumber[used] = torch.arange(len(used))
                source_of = None if len(used) == 1 else renumber[source_of]
        return evolve(self, sources=sources, source_of=source_of, index=index,
                      attributes={k: v[idx] for k, v in self.attributes.items()})

    def concat(self, *others: CLDataset) -> CLDataset:
        """This dataset followed by ``others``; attributes present in all of them are kept."""
        datasets = [self, *(as_cl_dataset(o) for o in others)]
        numbers_of: dict[int, int] = {}  # id(source) -> its number here; the datasets keep the sources alive
        sources: list[_Source] = []
        source_of, index = [], []
        for d in datasets:
            numbers = []
            for s in d._sources:
                if id(s) not in numbers_of:
                    numbers_of[id(s)] = len(sources)
                    sources.append(s)
                numbers.append(numbers_of[id(s)])
            own = torch.zeros(len(d), dtype=torch.long) if d._source_of is None else d._source_of
            source_of.append(torch.tensor(numbers, dtype=torch.long)[own])
            index.append(torch.arange(len(d)) if d._index is None else d._index)
        devices = {s.data.device for s in sources if s.is_tensor}
        if len(devices) > 1:
            raise ValueError(f"cannot concatenate in-memory datasets on different devices "
                             f"({', '.join(sorted(map(str, devices)))}): move them with .to(device) first")
        names = [k for k in self.attributes if all(k in d.attributes for d in datasets)]
        attributes = {k: torch.cat([d.attributes[k] for d in datasets]) for k in names}
        single = len(sources) == 1
        return CLDataset(tuple(sources), None if single else torch.cat(source_of), torch.cat(index), attributes,
                         self.group)

    def __add__(self, other: CLDataset) -> CLDataset:
        return self.concat(other)

    def with_attribute(self, name: str, values: Any) -> CLDataset:
        """A view with data attribute ``name`` set (``targets`` relabels ``y``, ``task_labels`` sets ``t``)."""
        return evolve(self, attributes={**self.attributes, name: _attribute(name, values, len(self))})

    def with_transforms(self, transform: Transform | None = None, eval_transform: Transform | None = None,
                        ) -> CLDataset:
        """A view whose sources all use these train and eval transforms instead of their own."""
        groups = {"train": transform, "eval": eval_transform}
        return evolve(self, sources=tuple(_Source(s.data, groups) for s in self._sources))

    def with_input_op(self, op: Transform, per_sample: Transform | None = None) -> CLDataset:
        """A view whose inputs also go through the batched ``op`` (a permutation, a rotation), in both groups.

        In-memory sources apply ``op`` to the stored minibatch, before their own transforms. Dataset sources
        apply ``per_sample`` (default: ``op`` on a batch of one) to each sample, after their own transforms.
        """
        one = per_sample or (lambda x: op(x.unsqueeze(0))[0])
        sources = tuple(_Source(s.data, {g: _chain(op, s.transforms.get(g)) if s.is_tensor else
                                         _chain(s.transforms.get(g), one) for g in GROUPS})
                        for s in self._sources)
        return evolve(self, sources=sources)

    def train(self) -> CLDataset:
        """A view that applies the train transforms."""
        return self if self.group == "train" else evolve(self, group="train")

    def eval(self) -> CLDataset:
        """A view that applies the eval transforms."""
        return self if self.group == "eval" else evolve(self, group="eval")

    # ----------------------------------------------------------------- classes and tasks

    @property
    def targets(self) -> torch.Tensor:
        return self.attributes["targets"]

    @property
    def task_labels(self) -> torch.Tensor:
        return self.attributes["task_labels"]

    @property
    def classes(self) -> list[int]:
        """The sorted class ids present."""
        return self.targets.unique().tolist()

    @property
    def tasks(self) -> list[int]:
        """The sorted task labels present."""
        return self.task_labels.unique().tolist()

    def class_subset(self, classes: Iterable[int]) -> CLDataset:
        """The samples whose class is in ``classes``."""
        wanted = torch.as_tensor(list(classes), dtype=self.targets.dtype)
        return self.subset(torch.isin(self.targets, wanted).nonzero().flatten())

    def split_by_class(self) -> dict[int, CLDataset]:
        """One dataset per class, in class order."""
        return {c: self.class_subset([c]) for c in self.classes}

    def split_by_task(self) -> dict[int, CLDataset]:
        """One dataset per task label, in task order."""
        return {t: self.subset((self.task_labels == t).nonzero().flatten()) for t in self.tasks}

    def __repr__(self) -> str:
        return (f"CLDataset({len(self)} samples, classes={self.classes}, tasks={self.tasks}, "
                f"group={self.group!r}, attributes={list(self.attributes)})")


def _labels_of(dataset: Dataset, n: int) -> Any:
    """The ``y`` of every item of ``dataset`` (items ``(x, y, ...)``), without reading every item when possible.

    Fast path: ``dataset.targets`` (torchvision's attribute), mapped through ``dataset.target_transform`` when
    the dataset has one (torchvision applies it to ``int(targets[i])`` in ``__getitem__``, so the same call is
    made here, once per sample, at construction). It is checked against the items at three positions (first,
    middle, last); when one differs, or there is no ``targets`` attribute, every item is read once. A dataset
    whose labels differ from ``targets`` at other positions only should be given ``targets=`` explicitly.
    """
    fast = getattr(dataset, "targets", None)
    if fast is not None:
        transform = getattr(dataset, "target_transform", None)
        if transform is not None:
            fast = [transform(v) for v in (fast.tolist() if hasattr(fast, "tolist") else fast)]
        if all(_same_label(dataset[i], fast[i]) for i in sorted({0, n // 2, n - 1})):
            return fast
    return [dataset[i][1] for i in range(n)]


def _same_label(item: Any, label: Any) -> bool:
    """Whether ``item``'s ``y`` equals ``label`` (True when the item carries no ``y`` to compare)."""
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        return True
    try:
        return torch.as_tensor(item[1]).tolist() == torch.as_tensor(label).tolist()
    except (TypeError, ValueError, RuntimeError):
        return False


def _chain(first: Transform | None, second: Transform | None) -> Transform | None:
    if first is None or second is None:
        return first or second
    return lambda x: second(first(x))


def as_cl_dataset(dataset: Any) -> CLDataset:
    """``dataset`` as a CLDataset: a CLDataset as is, a map-style torch Dataset wrapped."""
    if isinstance(dataset, CLDataset):
        return dataset
    if isinstance(dataset, Dataset) or (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        return CLDataset.from_dataset(dataset)
    raise TypeError(f"expected a CLDataset or a map-style torch Dataset, got {type(dataset).__name__}: {dataset!r}")


def iterate_minibatches(dataset: CLDataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
                        = None, indices: torch.Tensor | None = None, drop_last: bool = False,
                        loader_options: Mapping[str, Any] | None = None, loader: MinibatchLoader | None = None,
                        ) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
    """One epoch of ``(x, y, t)`` minibatches over ``dataset`` (or over its samples ``indices``, e.g. one rank's).

    In-memory data takes the batched path, on the data's device (:meth:`CLDataset.to`): the epoch's indices go
    there once, then each minibatch is one gather and one transform call there. Other data is read by
    ``loader``, a :class:`MinibatchLoader` of ``dataset`` that outlives the epoch (so ``persistent_workers`` keep
    their workers from one epoch to the next), or else by a new one built with ``loader_options`` (keyword
    arguments of ``torch.utils.data.DataLoader``: ``num_workers``, ``pin_memory``, ``prefetch_factor``...).

    :raises ValueError: when ``loader`` reads another dataset than ``dataset``.
    """
    order = torch.arange(len(dataset)) if indices is None else indices
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator)]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    if dataset.is_batched:
        device = dataset.device
        order = order.to(device)  # once per epoch: every gather below stays on the device
        targets, tasks, index, source_of = dataset._bookkeeping(device)
        if source_of is not None:
            for start in range(0, stop, batch_size):
                yield dataset.get_batch(order[start:start + batch_size])
            return
        # one gather per epoch for the index and the attributes; per minibatch, one gather of x and two views
        source = dataset._sources[0]
        inner = order if index is None else index.index_select(0, order)
        y, t = targets.index_select(0, order), tasks.index_select(0, order)
        x_all, transform = source.data, source.transforms.get(dataset.group)
        for start in range(0, stop, batch_size):
            x = x_all.index_select(0, inner[start:start + batch_size])
            yield (x if transform is None else transform(x)), y[start:start + batch_size], t[start:start + batch_size]
        return
    if loader is None:
        loader = MinibatchLoader(dataset, loader_options)
    elif loader.dataset is not dataset:
        raise ValueError("iterate_minibatches: loader reads another dataset than the one given; build a "
                         "MinibatchLoader(dataset, loader_options) for this one")
    yield from loader([order[s:s + batch_size] for s in range(0, stop, batch_size)])


#: The DataLoader options of the readers behind :meth:`CLDataset.get_batch` for data that is not in memory.
_READER_OPTIONS: dict[str, Any] = {}


def set_batch_reader_options(loader_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Set how :meth:`CLDataset.get_batch` reads data that is not in memory (a replay buffer of image files).

    ``loader_options`` are keyword arguments of ``torch.utils.data.DataLoader`` (``num_workers``,
    ``pin_memory``, ...; None: read in this process, the default). With workers, each view keeps one
    :class:`MinibatchLoader` whose workers persist, and each ``get_batch`` splits its samples over them. A
    strategy sets its own ``loader_options`` here for the time of each ``train()`` / ``eval()`` call, so a replay
    buffer over files is read by as many workers as the training data, and puts the previous options back
    after it. Views built after the call, and views whose reader was built with other
    options, use the new ones at their next read.

    :returns: the previous options (to restore them).
    :raises ValueError: for options clkernel sets itself (``batch_size``, ``sampler``, ...).
    """
    options = dict(loader_options or {})
    _check_loader_options(options)
    previous = dict(_READER_OPTIONS)
    _READER_OPTIONS.clear()
    _READER_OPTIONS.update(options)
    return previous


#: DataLoader arguments that clkernel sets itself, so ``loader_options`` may not hold them.
RESERVED_LOADER_OPTIONS = ("dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")


def _check_loader_options(options: Mapping[str, Any]) -> None:
    taken = [k for k in RESERVED_LOADER_OPTIONS if k in options]
    if taken:
        raise ValueError(f"loader_options: {', '.join(taken)} cannot be set: clkernel chooses the minibatches")


class _Batches:
    """A batch sampler whose minibatches (index lists, possibly an endless iterator) are replaced before each
    pass; the DataLoader draws them as it prefetches."""

    def __init__(self) -> None:
        self.batches: Iterable[list[int]] = ()

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


class MinibatchLoader:
    """Reads minibatches of a dataset that is not in memory (files) through one ``torch.utils.data.DataLoader``.

    The DataLoader is built once, with a batch sampler whose list of minibatches each call replaces: with
    ``persistent_workers=True`` its worker processes (and their prefetching) live as long as this object, across
    the epochs of an experience, instead of starting again each epoch. Items are read with
    ``dataset[i]`` (the view's transform group) and collated with torch's ``default_collate``.

    Reading draws nothing from torch's global generator: the DataLoader's ``generator``, from which each pass
    draws its workers' base seed, is by default one of its own seeded with ``torch.initial_seed()``. Dropout and
    shuffles then come out the same whatever the loader options, and a run resumed inside an epoch continues as
    it would have. Random per-sample transforms run in the workers, from the workers' seeds (as in PyTorch), so
    those alone depend on the number of workers.

    :param dataset: the CLDataset to read.
    :param loader_options: keyword arguments of ``torch.utils.data.DataLoader``: ``num_workers``,
        ``pin_memory``, ``persistent_workers``, ``prefetch_factor``, ``worker_init_fn``, ... Without workers
        (``num_workers`` 0), ``persistent_workers`` and ``prefetch_factor`` are ignored.
    :raises ValueError: for ``batch_size``, ``shuffle``, ``sampler``, ``batch_sampler``, ``drop_last`` (clkernel
        chooses the minibatches), or options the DataLoader refuses.
    :raises TypeError: for an option the DataLoader does not have.
    """

    def __init__(self, dataset: CLDataset, loader_options: Mapping[str, Any] | None = None) -> None:
        options = dict(loader_options or {})
        _check_loader_options(options)
        self.dataset = dataset
        self.num_workers = int(options.get("num_workers", 0))
        if self.num_workers == 0:
            options.pop("persistent_workers", None)
            options.pop("prefetch_factor", None)
        # Each pass draws its workers' base seed from this generator: from torch's global one, the draws would shift
        # every later random number (dropout, shuffles) with the number of passes, hence with the loader options
        # and the point a run resumed from.
        options.setdefault("generator", torch.Generator().manual_seed(torch.initial_seed()))
        self._batches = _Batches()
        self._loader: torch.utils.data.DataLoader | None = torch.utils.data.DataLoader(
            dataset, batch_sampler=self._batches, **options)

    def __call__(self, batches: Iterable[torch.Tensor | Sequence[int]]) -> Iterator[tuple[Any, torch.Tensor,
                                                                                          torch.Tensor]]:
        """One pass: the minibatches ``(x, y, t)`` of ``batches`` (each a 1-D index tensor or list of positions),
        in order. Starting a pass ends the previous one.

        ``batches`` may be a lazy, even endless, iterator: the workers then read ahead (``prefetch_factor``
        minibatches each) as it yields. That is how a sampler that draws its next indices ahead (a replay
        buffer's) gets its minibatches read while the model trains, as a plain loop's second DataLoader does.

        :raises RuntimeError: after :meth:`close`.
        """
        if self._loader is None:
            raise RuntimeError("this MinibatchLoader is closed")
        if isinstance(batches, (list, tuple)):
            self._batches.batches = [b.tolist() if isinstance(b, torch.Tensor) else list(b) for b in batches]
        else:
            self._batches.batches = (b.tolist() if isinstance(b, torch.Tensor) else list(b) for b in batches)
        return map(tuple, self._loader)  # default_collate gives lists

    def read(self, idx: torch.Tensor | Sequence[int]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One minibatch ``(x, y, t)`` of the samples at ``idx``, split over the workers so they read it together
        (in this process without workers)."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if self.num_workers == 0 or len(idx) < 2:
            return tuple(default_collate([self.dataset[int(i)] for i in idx]))  # type: ignore[return-value]
        parts = list(self(idx.tensor_split(min(self.num_workers, len(idx)))))
        return tuple(torch.cat(column) for column in zip(*parts))  # type: ignore[return-value]

    def close(self) -> None:
        """Drop the DataLoader: its worker processes stop (as when this object is garbage collected)."""
        self._loader = None


class EpochLoader:
    """The loop's loader: re-iterable, each iteration one epoch of ``(x, y, t)`` minibatches over ``dataset``.

    A shuffled epoch records the generator's state before drawing its order (``epoch_state``); ``resume =
    (minibatches done, that state)`` makes the next epoch draw the same order and skip what was done.

    Shuffled (training), each epoch's order is ``torch.utils.data.DistributedSampler``'s, seeded by a number
    drawn from ``generator``: it changes every epoch and is reproducible from the seed. On several processes
    (``world_size`` > 1) the generator is the same on every rank, so all ranks draw the same global order, padded
    as the sampler pads (every rank the same number of samples, the first ones repeated to fill the last shard,
    so no rank waits for another at a gradient all-reduce), and rank ``r`` takes every ``world_size``-th index
    from ``r``. Global minibatch ``k`` (``batch_size x world_size`` samples) is then the same samples for every
    world size, which lets a checkpoint taken inside an epoch resume on another number of processes. Not
    shuffled (evaluation): every ``world_size``-th sample from ``rank``, no padding, so the shards partition the
    data exactly and summed counts equal one process's.

    :param generator: draws the shuffled orders (default: torch's global generator).
    :param loader_options: keyword arguments of the ``torch.utils.data.DataLoader`` that reads data which is not
        in memory (``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor``).
    """

    def __init__(self, dataset: CLDataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                 *, rank: int = 0, world_size: int = 1, loader_options: Mapping[str, Any] | None = None) -> None:
        self.dataset, self.batch_size, self.shuffle, self.generator = dataset, batch_size, shuffle, generator
        self.rank, self.world_size, self.loader_options = rank, world_size, loader_options
        self.resume: tuple[int, torch.Tensor] | None = None
        self.epoch_state: torch.Tensor | None = None
        self._reader: MinibatchLoader | None = None  # data not in memory: one DataLoader for every epoch

    def _order(self) -> tuple[torch.Tensor | None, int]:
        """This epoch's sample indices for this rank (None: all, in order) and the minibatches to skip."""
        n, w = len(self.dataset), self.world_size
        if not self.shuffle:
            return (None if w == 1 else torch.arange(self.rank, n, w)), 0
        (skip, state), self.resume, generator = self.resume or (0, None), None, self.generator
        if state is None:
            state = generator.get_state() if generator is not None else torch.get_rng_state()
        else:
            generator = torch.Generator().set_state(state)
        self.epoch_state = state
        seed = int(torch.randint(2 ** 31, (1,), generator=generator))
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=w, rank=self.rank, seed=seed)
        return torch.tensor(list(sampler), dtype=torch.long), skip

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
        order, skip = self._order()
        if order is not None:
            order = order[skip * self.batch_size:]
        if self._reader is None and not self.dataset.is_batched:  # its workers persist when the options say so
            self._reader = MinibatchLoader(self.dataset, self.loader_options)
        return iterate_minibatches(self.dataset, self.batch_size, shuffle=False, indices=order, loader=self._reader)

    def close(self) -> None:
        """Stop the worker processes reading files (persistent ones live until then); a later epoch starts
        others. The loop closes each experience's loaders when it is done with them, so that no worker outlives
        its experience, and none is copied into the processes a later ``DataLoader`` forks."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __len__(self) -> int:
        """Minibatches per epoch on this rank."""
        n, w = len(self.dataset), self.world_size
        mine = -(-n // w) if self.shuffle else len(range(self.rank, n, w))
        return -(-mine // self.batch_size)
