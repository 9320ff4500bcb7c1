"""Scenario generators: build a kernel Benchmark from datasets, tensors or another benchmark.

Every generator only builds *views* (subsets, relabelled targets, composed transforms) of the datasets it gets:
no sample is copied, so a generator over an in-memory dataset keeps the kernel's batched minibatch path.
Randomness (class order, sample splits, permutations, angles) comes from a ``torch.Generator`` seeded with
``seed``; ``seed=None`` draws a fresh one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from attrs import evolve

from clkernel import Benchmark, CLDataset, Experience, Stream
from clkernel.data import as_cl_dataset
from clkernel.validate import positive_int, unit_interval
from clkernel_benchmarks.scenario import OnlineExperience, ScenarioBenchmark, copy_benchmark
from clkernel_benchmarks.transforms import add_input_op, input_shape, permutation, rotation

__all__ = [
    "benchmark_with_validation_stream", "dataset_benchmark", "nc_benchmark", "ni_benchmark", "online_benchmark",
    "permuted_benchmark", "rotated_benchmark", "split_online_stream", "task_incremental_benchmark",
    "tensors_benchmark",
]

Transform = Callable[[Any], Any]


# --------------------------------------------------------------------------- helpers


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def _prepare(dataset: Any, what: str, train_transform: Transform | None, eval_transform: Transform | None,
             ) -> CLDataset:
    try:
        ds = as_cl_dataset(dataset)
    except TypeError as e:
        raise TypeError(f"{what}: {e}") from None
    if train_transform is not None or eval_transform is not None:
        ds = ds.with_transforms(train_transform, eval_transform)
    return ds


def _with_task(ds: CLDataset, label: int | None) -> CLDataset:
    return ds if label is None else ds.with_attribute("task_labels", label)


# --------------------------------------------------------------------------- class-incremental (nc)


def _class_order(classes: list[int], fixed_class_order: Sequence[int] | None, shuffle: bool,
                 generator: torch.Generator) -> list[int]:
    if fixed_class_order is None:
        if not shuffle:
            return list(classes)
        return [classes[i] for i in torch.randperm(len(classes), generator=generator).tolist()]
    order = list(fixed_class_order)
    if any(isinstance(c, bool) or not isinstance(c, int) for c in order):
        raise ValueError(f"fixed_class_order must be a list of integer class ids, got {order!r}")
    repeated = sorted({c for c in order if order.count(c) > 1})
    unknown = sorted(set(order) - set(classes))
    missing = sorted(set(classes) - set(order))
    problems = []
    if repeated:
        problems.append(f"repeats class(es) {repeated}")
    if unknown:
        problems.append(f"names class(es) {unknown} that the training set does not contain")
    if missing:
        problems.append(f"misses class(es) {missing} of the training set")
    if problems:
        raise ValueError(f"fixed_class_order {order} {'; '.join(problems)}: it must list every class of the "
                         f"training set ({classes}) exactly once")
    return order


def _classes_per_exp(n_classes: int, n_experiences: int | None, per_exp_classes: Any, half: bool) -> list[int]:
    if per_exp_classes is not None and half:
        raise ValueError("give either per_exp_classes or first_exp_with_half_classes, not both")
    fixed: dict[int, int] = {}
    if per_exp_classes is not None and not isinstance(per_exp_classes, Mapping):
        counts = [positive_int(c, f"per_exp_classes[{i}]", "nc_benchmark") for i, c in enumerate(per_exp_classes)]
        if n_experiences is not None and n_experiences != len(counts):
            raise ValueError(f"per_exp_classes lists {len(counts)} experiences but n_experiences={n_experiences}")
        if sum(counts) != n_classes:
            raise ValueError(f"per_exp_classes {counts} adds up to {sum(counts)} classes; the training set has "
                             f"{n_classes}")
        return counts
    if n_experiences is None:
        raise ValueError("nc_benchmark needs n_experiences (or per_exp_classes as a list of class counts)")
    n = positive_int(n_experiences, "n_experiences", "nc_benchmark")
    if n > n_classes:
        raise ValueError(f"n_experiences={n} but the training set has only {n_classes} classes: every experience "
                         f"needs at least one")
    if isinstance(per_exp_classes, Mapping):
        for exp, count in per_exp_classes.items():
            if isinstance(exp, bool) or not isinstance(exp, int) or not 0 <= exp < n:
                raise ValueError(f"per_exp_classes names experience {exp!r}; experiences are 0..{n - 1}")
            fixed[exp] = positive_int(count, f"per_exp_classes[{exp}]", "nc_benchmark")
    if half:
        if n < 2:
            raise ValueError("first_exp_with_half_classes needs n_experiences >= 2")
        fixed = {0: n_classes // 2}
    rest = [i for i in range(n) if i not in fixed]
    left = n_classes - sum(fixed.values())
    if left < len(rest) or (not rest and left != 0):
        raise ValueError(f"cannot split {n_classes} classes into {n} experiences with {fixed} classes fixed: "
                         f"{left} classes are left for {len(rest)} experience(s)")
    counts = [0] * n
    base, extra = divmod(left, len(rest)) if rest else (0, 0)
    for j, i in enumerate(rest):
        counts[i] = base + (1 if j < extra else 0)  # the first `extra` free experiences take one class more
    for i, c in fixed.items():
        counts[i] = c
    return counts


def nc_benchmark(
    train_dataset: Any,
    test_dataset: Any,
    n_experiences: int | None = None,
    *,
    per_exp_classes: Mapping[int, int] | Sequence[int] | None = None,
    return_task_id: bool = False,
    shuffle: bool = True,
    seed: int | None = None,
    fixed_class_order: Sequence[int] | None = None,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    first_exp_with_half_classes: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    name: str = "nc",
) -> ScenarioBenchmark:
    """Class-incremental benchmark: the classes of the training set, split into ``n_experiences`` groups.

    Experience ``i`` of the train and test streams holds the samples of the classes of group ``i``.

    :param n_experiences: number of experiences. When the class count does not divide evenly, the first
        ``n_classes % n_experiences`` experiences get one class more (e.g. 10 classes in 3: 4, 3, 3).
    :param per_exp_classes: class counts: a list (one per experience, adding up to the class count), or a
        mapping ``{experience: count}`` fixing some experiences, the rest split as above.
    :param return_task_id: experience ``i`` gets task label ``i``; otherwise every sample has task label 0.
    :param shuffle: shuffle the class order with ``seed``; ``False`` keeps the sorted class ids.
    :param fixed_class_order: the class order to use instead (every training class exactly once).
    :param class_ids_from_zero_in_each_exp: relabel each experience's classes ``0..k-1`` (multi-head setups).
    :param class_ids_from_zero_from_first_exp: relabel classes ``0..n-1`` in the order they appear.
    :param first_exp_with_half_classes: the first experience takes half of the classes, the others split the rest.
    :param train_transform: when it or ``eval_transform`` is given, both replace the datasets' own transforms
        (train group / eval group; batched for in-memory data).
    :raises ValueError: for counts that do not add up, an ``n_experiences`` that is not a positive integer or
        exceeds the class count, a bad ``fixed_class_order``, negative class ids, or an experience whose classes
        have no test sample.
    """
    if class_ids_from_zero_in_each_exp and class_ids_from_zero_from_first_exp:
        raise ValueError("class_ids_from_zero_in_each_exp and class_ids_from_zero_from_first_exp exclude each other")
    train = _prepare(train_dataset, "nc_benchmark train_dataset", train_transform, eval_transform)
    test = _prepare(test_dataset, "nc_benchmark test_dataset", train_transform, eval_transform)
    classes = train.classes
    if classes[0] < 0 or (len(test.targets) and int(test.targets.min()) < 0):
        raise ValueError("nc_benchmark needs non-negative class ids")
    g = _generator(seed)
    order = _class_order(classes, fixed_class_order, shuffle, g)
    counts = _classes_per_exp(len(order), n_experiences, per_exp_classes, first_exp_with_half_classes)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    groups = [order[s:s + c] for s, c in zip(starts, counts)]

    if class_ids_from_zero_in_each_exp:
        mapping = {c: j for group in groups for j, c in enumerate(group)}
    elif class_ids_from_zero_from_first_exp:
        mapping = {c: j for j, c in enumerate(order)}
    else:
        mapping = {c: c for c in order}
    identity = all(k == v for k, v in mapping.items())
    size = max(max(classes), int(test.targets.max())) + 1
    lut = torch.full((size,), -1, dtype=torch.long)
    lut[torch.tensor(list(mapping))] = torch.tensor(list(mapping.values()))

    def part(ds: CLDataset, i: int, group: list[int], stream: str) -> Experience:
        wanted = torch.isin(ds.targets, torch.tensor(group, dtype=ds.targets.dtype))
        if not bool(wanted.any()):
            raise ValueError(f"nc_benchmark: the {stream} set has no sample of the classes {sorted(group)} of "
                             f"experience {i}")
        sub = ds.subset(wanted.nonzero().flatten())
        if not identity:
            sub = sub.with_attribute("targets", lut[sub.targets])
        label = i if return_task_id else 0
        sub = sub.with_attribute("task_labels", label)
        return Experience(i, sub, classes=sorted(mapping[c] for c in group), task_labels=[label],
                          info={"original_classes": sorted(group)})

    train_exps = [part(train, i, group, "train") for i, group in enumerate(groups)]
    test_exps = [part(test, i, group, "test") for i, group in enumerate(groups)]
    info = {
        "scenario": "nc", "seed": seed, "return_task_id": return_task_id,
        "classes_order": [mapping[c] for c in order], "classes_order_original_ids": order,
        "classes_in_experience": [sorted(mapping[c] for c in group) for group in groups],
        "original_classes_in_experience": [sorted(group) for group in groups],
        "class_mapping": mapping,
    }
    return ScenarioBenchmark({"train": Stream("train", train_exps), "test": Stream("test", test_exps)},
                             name=name, info=info)


# --------------------------------------------------------------------------- new instances (ni)


def ni_benchmark(
    train_dataset: Any,
    test_dataset: Any,
    n_experiences: int | None = None,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    balance_experiences: bool = False,
    fixed_exp_assignment: Sequence[Sequence[int]] | None = None,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    name: str = "ni",
) -> ScenarioBenchmark:
    """New-instances (domain-incremental) benchmark: the training samples split into experiences, classes shared.

    The test stream is one experience holding the whole test set.

    :param shuffle: assign samples at random (with ``seed``); ``False`` cuts the dataset order into chunks.
    :param balance_experiences: split every class evenly over the experiences, so that each experience holds
        every class (needs at least ``n_experiences`` samples per class); otherwise experiences only have
        (nearly) equal sizes. Sizes differ by at most one sample in both cases.
    :param fixed_exp_assignment: the sample indices of each experience, instead of a split.
    :raises ValueError: for an ``n_experiences`` that is not a positive integer or exceeds the sample count (or
        the per-class count with ``balance_experiences``), or an assignment that is empty, out of range or
        overlapping.
    """
    train = _prepare(train_dataset, "ni_benchmark train_dataset", train_transform, eval_transform)
    test = _prepare(test_dataset, "ni_benchmark test_dataset", train_transform, eval_transform)
    n_samples = len(train)
    g = _generator(seed)
    if fixed_exp_assignment is not None:
        parts = [torch.as_tensor(a, dtype=torch.long).reshape(-1) for a in fixed_exp_assignment]
        if n_experiences is not None and n_experiences != len(parts):
            raise ValueError(f"fixed_exp_assignment has {len(parts)} experiences but n_experiences={n_experiences}")
        for i, p in enumerate(parts):
            if len(p) == 0:
                raise ValueError(f"fixed_exp_assignment gives experience {i} no sample")
            if int(p.min()) < 0 or int(p.max()) >= n_samples:
                raise ValueError(f"fixed_exp_assignment[{i}] has indices outside 0..{n_samples - 1}")
        every = torch.cat(parts)
        if len(every.unique()) != len(every):
            raise ValueError("fixed_exp_assignment assigns some sample to more than one experience (or twice)")
    else:
        if n_experiences is None:
            raise ValueError("ni_benchmark needs n_experiences (or fixed_exp_assignment)")
        n = positive_int(n_experiences, "n_experiences", "ni_benchmark")
        if n_samples < n:
            raise ValueError(f"n_experiences={n} but the training set has only {n_samples} samples")
        if balance_experiences:
            chunks: list[list[torch.Tensor]] = [[] for _ in range(n)]
            offset = 0
            for c in train.classes:
                idx = (train.targets == c).nonzero().flatten()
                if len(idx) < n:
                    raise ValueError(f"balance_experiences: class {c} has {len(idx)} training samples, fewer than "
                                     f"n_experiences={n}, so some experience would lack it")
                if shuffle:
                    idx = idx[torch.randperm(len(idx), generator=g)]
                for j, chunk in enumerate(torch.tensor_split(idx, n)):
                    chunks[(j + offset) % n].append(chunk)  # rotate who gets the larger chunks
                offset += len(idx) % n
            parts = [torch.cat(c).sort().values for c in chunks]
        else:
            order = torch.randperm(n_samples, generator=g) if shuffle else torch.arange(n_samples)
            parts = [p.sort().values for p in torch.tensor_split(order, n)]
    train_exps = [Experience(i, train.subset(p)) for i, p in enumerate(parts)]
    info = {"scenario": "ni", "seed": seed, "balance_experiences": balance_experiences}
    return ScenarioBenchmark({"train": Stream("train", train_exps), "test": Stream("test", [Experience(0, test)])},
                             name=name, info=info)


# --------------------------------------------------------------------------- from datasets / tensors


def _task_labels(task_labels: Sequence[int] | bool | None, n: int) -> list[int | None]:
    if task_labels is None or task_labels is False:
        return [None] * n
    if task_labels is True:
        return list(range(n))
    labels = list(task_labels)
    if len(labels) != n or any(isinstance(t, bool) or not isinstance(t, int) for t in labels):
        raise ValueError(f"task_labels must be True, None or {n} integers (one per experience), got {labels!r}")
    return labels


def dataset_benchmark(
    train_datasets: Sequence[Any],
    test_datasets: Sequence[Any],
    *,
    task_labels: Sequence[int] | bool | None = None,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    name: str = "datasets",
) -> ScenarioBenchmark:
    """One experience per dataset: ``train_datasets[i]`` and ``test_datasets[i]`` form experience ``i``.

    :param task_labels: ``True``: experience ``i`` gets task label ``i``; a list: one label per experience;
        ``None``: the task labels the datasets carry (0 for plain torch datasets).
    """
    train_list, test_list = list(train_datasets), list(test_datasets)
    if not train_list:
        raise ValueError("dataset_benchmark needs at least one training dataset")
    if len(train_list) != len(test_list):
        raise ValueError(f"dataset_benchmark got {len(train_list)} training datasets and {len(test_list)} test "
                         f"datasets; give one test dataset per training dataset")
    labels = _task_labels(task_labels, len(train_list))
    streams = {}
    for stream, datasets in (("train", train_list), ("test", test_list)):
        exps = []
        for i, d in enumerate(datasets):
            ds = _with_task(_prepare(d, f"dataset_benchmark {stream} dataset {i}", train_transform,
                                     eval_transform), labels[i])
            exps.append(Experience(i, ds))
        streams[stream] = Stream(stream, exps)
    return ScenarioBenchmark(streams, name=name, info={"scenario": "datasets"})


def tensors_benchmark(
    train_tensors: Sequence[Sequence[Any]],
    test_tensors: Sequence[Sequence[Any]],
    *,
    task_labels: Sequence[int] | bool | None = None,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    name: str = "tensors",
) -> ScenarioBenchmark:
    """One experience per ``(x, y)`` or ``(x, y, t)`` tuple of in-memory tensors (transforms are batched)."""

    def build(items: Sequence[Sequence[Any]], stream: str) -> list[CLDataset]:
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValueError(f"tensors_benchmark: {stream} item {i} must be (x, y) or (x, y, t), got "
                                 f"{type(item).__name__}")
            x, y, *t = item
            if not isinstance(x, torch.Tensor) or len(x) != len(y):
                raise ValueError(f"tensors_benchmark: {stream} item {i}: x must be a tensor with one row per "
                                 f"target ({type(x).__name__} of length {len(x)}, {len(y)} targets)")
            out.append(CLDataset.from_tensors(x, y, t[0] if t else 0, transform=train_transform,
                                              eval_transform=eval_transform))
        return out

    return dataset_benchmark(build(train_tensors, "train"), build(test_tensors, "test"), task_labels=task_labels,
                             name=name)


# --------------------------------------------------------------------------- permuted / rotated


def _input_op_benchmark(train: CLDataset, test: CLDataset, ops: list[Any], return_task_id: bool, key: str,
                        values: list[Any], name: str, info: dict[str, Any]) -> ScenarioBenchmark:
    streams = {}
    for stream, ds in (("train", train), ("test", test)):
        exps, classes = [], ds.classes  # every experience holds the whole dataset: its classes, computed once
        for i, op in enumerate(ops):
            label = i if return_task_id else 0
            view = add_input_op(ds, op).with_attribute("task_labels", label)
            exps.append(Experience(i, view, classes=classes, task_labels=[label], info={key: values[i]}))
        streams[stream] = Stream(stream, exps)
    return ScenarioBenchmark(streams, name=name, info={**info, key + "s": values})


def _same_shapes(train: CLDataset, test: CLDataset, what: str) -> tuple[int, ...]:
    shape, test_shape = input_shape(train), input_shape(test)
    if shape != test_shape:
        raise ValueError(f"{what}: training samples have shape {shape} but test samples {test_shape}")
    return shape


def permuted_benchmark(
    train_dataset: Any,
    test_dataset: Any,
    n_experiences: int = 10,
    *,
    seed: int | None = None,
    return_task_id: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    name: str = "permuted",
) -> ScenarioBenchmark:
    """Each experience is the whole dataset under its own fixed random pixel permutation (drawn from ``seed``).

    For in-memory data the permutation is one gather per minibatch on the stored pixels, before the dataset's
    own (batched) transforms; ``exp.info["permutation"]`` holds it (pixel ``p`` takes pixel ``perm[p]``).

    :raises ValueError: for an ``n_experiences`` that is not a positive integer, or train and test samples of
        different shapes.
    """
    n = positive_int(n_experiences, "n_experiences", "permuted_benchmark")
    train = _prepare(train_dataset, "permuted_benchmark train_dataset", train_transform, eval_transform)
    test = _prepare(test_dataset, "permuted_benchmark test_dataset", train_transform, eval_transform)
    shape = _same_shapes(train, test, "permuted_benchmark")
    g = _generator(seed)
    ops = [permutation(shape, g) for _ in range(n)]
    return _input_op_benchmark(train, test, ops, return_task_id, "permutation", [op.index for op in ops], name,
                               {"scenario": "permuted", "seed": seed, "return_task_id": return_task_id})


def rotated_benchmark(
    train_dataset: Any,
    test_dataset: Any,
    n_experiences: int | None = None,
    *,
    rotations: Sequence[float] | None = None,
    seed: int | None = None,
    return_task_id: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    name: str = "rotated",
) -> ScenarioBenchmark:
    """Each experience is the whole dataset rotated by its own angle in degrees.

    :param n_experiences: number of experiences (default: one per angle of ``rotations``, else 10).
    :param rotations: the angles, one per experience; default: whole degrees drawn uniformly in [-180, 180]
        with ``seed``. ``exp.info["rotation"]`` holds each experience's angle.
    :raises ValueError: when ``rotations`` and ``n_experiences`` disagree, or train and test samples have
        different shapes.
    """
    if rotations is not None:
        angles = [float(a) for a in rotations]
        if not angles or (n_experiences is not None and len(angles) != n_experiences):
            raise ValueError(f"rotations lists {len(angles)} angles but n_experiences={n_experiences}")
    else:
        n = positive_int(10 if n_experiences is None else n_experiences, "n_experiences", "rotated_benchmark")
        angles = [float(a) for a in torch.randint(-180, 181, (n,), generator=_generator(seed)).tolist()]
    train = _prepare(train_dataset, "rotated_benchmark train_dataset", train_transform, eval_transform)
    test = _prepare(test_dataset, "rotated_benchmark test_dataset", train_transform, eval_transform)
    shape = _same_shapes(train, test, "rotated_benchmark")
    ops = [rotation(shape, a) for a in angles]
    return _input_op_benchmark(train, test, ops, return_task_id, "rotation", angles, name,
                               {"scenario": "rotated", "seed": seed, "return_task_id": return_task_id})


# --------------------------------------------------------------------------- online


def split_online_stream(
    stream: Stream | Iterable[Experience],
    experience_size: int,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    drop_last: bool = False,
) -> Stream:
    """Split every experience of ``stream`` into mini-experiences of ``experience_size`` samples.

    Each mini-experience is an :class:`OnlineExperience` that knows its origin experience and whether it is the
    first or last of it. Every sample lands in exactly one mini-experience (``drop_last`` drops each origin
    experience's last, smaller one).

    :param shuffle: shuffle the samples of each experience (with ``seed``) before cutting.
    :raises ValueError: for an ``experience_size`` that is not a positive integer, or when ``drop_last`` leaves
        no mini-experience.
    """
    size = positive_int(experience_size, "experience_size", "split_online_stream")
    exps = list(stream)
    name = stream.name if isinstance(stream, Stream) else "train"
    g = _generator(seed)
    out: list[Experience] = []
    for exp in exps:
        n = len(exp.dataset)
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        chunks = list(order.split(size))
        if drop_last and len(chunks[-1]) < size:
            chunks.pop()
        for j, idx in enumerate(chunks):
            out.append(OnlineExperience(len(out), exp.dataset.subset(idx), info=dict(exp.info),
                                        origin_experience=exp, subexp_index=j, is_first_subexp=j == 0,
                                        is_last_subexp=j == len(chunks) - 1))
    if not out:
        raise ValueError(f"split_online_stream: no mini-experience of {size} samples fits in stream {name!r} "
                         f"(drop_last=True and every experience is smaller)")
    return Stream(name, out)


def online_benchmark(
    benchmark: Benchmark,
    experience_size: int,
    *,
    streams: Sequence[str] = ("train",),
    shuffle: bool = True,
    seed: int | None = None,
    drop_last: bool = False,
) -> ScenarioBenchmark:
    """``benchmark`` with its ``streams`` (the train stream by default) split by :func:`split_online_stream`."""
    missing = [s for s in streams if s not in benchmark.streams]
    if missing:
        raise ValueError(f"online_benchmark: no stream {missing[0]!r} (streams: {', '.join(benchmark.streams)})")
    new = {key: split_online_stream(stream, experience_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
           if key in streams else stream for key, stream in benchmark.streams.items()}
    out = copy_benchmark(benchmark, new)
    out.info["online"] = {"experience_size": experience_size, "streams": list(streams), "seed": seed}
    return out


# --------------------------------------------------------------------------- validation stream


def benchmark_with_validation_stream(
    benchmark: Benchmark,
    validation_size: float = 0.1,
    *,
    class_balanced: bool = False,
    seed: int | None = None,
    input_stream: str = "train",
    output_stream: str = "valid",
) -> ScenarioBenchmark:
    """Carve a validation stream out of the train stream: experience ``i`` of each is disjoint from the other.

    :param validation_size: fraction (0..1) of each experience's samples that move to the validation stream.
    :param class_balanced: take that fraction of every class of the experience (stratified), not of the whole.
    :raises ValueError: for a ``validation_size`` outside (0, 1) or one leaving a part of some experience empty,
        an unknown ``input_stream``, or an ``output_stream`` that exists already.
    """
    if unit_interval(validation_size, "validation_size", "benchmark_with_validation_stream",
                     include_one=False) == 0:
        raise ValueError("benchmark_with_validation_stream: validation_size must be a number in (0, 1), got 0")
    if input_stream not in benchmark.streams:
        raise ValueError(f"no stream {input_stream!r} to split (streams: {', '.join(benchmark.streams)})")
    if output_stream in benchmark.streams:
        raise ValueError(f"the benchmark already has a stream {output_stream!r}")
    g = _generator(seed)
    kept, valid = [], []
    for exp in benchmark.streams[input_stream]:
        targets = exp.dataset.targets
        n = len(targets)
        if class_balanced:
            picks = []
            for c in targets.unique().tolist():
                idx = (targets == c).nonzero().flatten()
                picks.append(idx[torch.randperm(len(idx), generator=g)][:int(validation_size * len(idx) + 0.5)])
            chosen = torch.cat(picks)
        else:
            chosen = torch.randperm(n, generator=g)[:int(validation_size * n + 0.5)]
        if len(chosen) == 0 or len(chosen) == n:
            raise ValueError(f"experience {exp.index} of stream {input_stream!r} has {n} samples: "
                             f"validation_size={validation_size} leaves its "
                             f"{'validation' if len(chosen) == 0 else 'training'} part empty")
        mask = torch.ones(n, dtype=torch.bool)
        mask[chosen] = False
        train_ds, valid_ds = exp.dataset.subset(mask.nonzero().flatten()), exp.dataset.subset(chosen.sort().values)
        kept.append(evolve(exp, dataset=train_ds, classes=train_ds.classes, task_labels=train_ds.tasks,
                           stream=None, info=dict(exp.info)))
        valid.append(Experience(exp.index, valid_ds, info=dict(exp.info)))
    streams: dict[str, Stream] = {}
    for key, stream in benchmark.streams.items():
        streams[key] = Stream(stream.name, kept) if key == input_stream else stream
        if key == input_stream:
            streams[output_stream] = Stream(output_stream, valid)
    out = copy_benchmark(benchmark, streams)
    out.info["validation"] = {"size": validation_size, "class_balanced": class_balanced, "seed": seed}
    return out


# --------------------------------------------------------------------------- task-incremental


def task_incremental_benchmark(benchmark: Benchmark, *, task_labels: Sequence[int] | None = None,
                               ) -> ScenarioBenchmark:
    """``benchmark`` with task labels: experience ``i`` of every stream gets task label ``i``.

    Online mini-experiences take the label of their origin experience. ``task_labels`` gives other labels, one
    per experience index. Class ids are unchanged (use ``class_ids_from_zero_in_each_exp`` of
    :func:`nc_benchmark` for per-task ids).
    """
    labels = None if task_labels is None else list(task_labels)
    streams = {}
    for key, stream in benchmark.streams.items():
        exps = []
        for exp in stream:
            origin = exp.origin_index if isinstance(exp, OnlineExperience) else exp.index
            if labels is not None and origin >= len(labels):
                raise ValueError(f"task_labels has {len(labels)} labels but stream {key!r} has experience {origin}")
            label = origin if labels is None else int(labels[origin])
            exps.append(evolve(exp, dataset=exp.dataset.with_attribute("task_labels", label), task_labels=[label],
                               stream=None, info=dict(exp.info)))
        streams[key] = Stream(stream.name, exps)
    out = copy_benchmark(benchmark, streams)
    out.info["task_incremental"] = True
    return out
