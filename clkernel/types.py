"""Experiences, streams and benchmarks: what a continual learner is given, one experience at a time."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, overload

from attrs import Factory, define, field

from clkernel.data import CLDataset, as_cl_dataset

__all__ = ["Benchmark", "Experience", "Stream"]


@define(eq=False)
class Experience:
    """What the learner gets at one point in time: a dataset of ``(x, y, t)`` and what it contains.

    ``classes`` and ``task_labels`` default to those present in ``dataset``. ``index`` is the position in the
    original stream (kept by slicing). Generators add their own facts in subclasses or in ``info``.
    """

    index: int
    dataset: CLDataset = field(converter=as_cl_dataset)
    classes: list[int] = field(default=Factory(lambda self: self.dataset.classes, takes_self=True))
    task_labels: list[int] = field(default=Factory(lambda self: self.dataset.tasks, takes_self=True))
    stream: Stream | None = field(default=None, repr=False)
    info: dict[str, Any] = field(factory=dict, repr=False)

    @property
    def task_label(self) -> int:
        """The experience's only task label; an error when it has several."""
        if len(self.task_labels) != 1:
            raise ValueError(f"experience {self.index} has task labels {self.task_labels}, not exactly one")
        return self.task_labels[0]


@define(eq=False, repr=False)
class Stream:
    """A named sequence of experiences: iterable, ``len``, indexable, sliceable.

    Building a stream sets each experience's ``stream`` to it. A slice is a new stream of the same name whose
    experiences keep their original ``index``.
    """

    name: str
    experiences: tuple[Experience, ...] = field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        for exp in self.experiences:
            if not isinstance(exp, Experience):
                raise TypeError(f"stream {self.name!r} got {type(exp).__name__}, expected Experience")
            if exp.stream is None:
                exp.stream = self

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __len__(self) -> int:
        return len(self.experiences)

    @overload
    def __getitem__(self, i: int) -> Experience: ...
    @overload
    def __getitem__(self, i: slice) -> Stream: ...

    def __getitem__(self, i: int | slice) -> Experience | Stream:
        if isinstance(i, slice):
            return Stream(self.name, self.experiences[i])
        return self.experiences[i]

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, experiences {[e.index for e in self.experiences]})"

    @property
    def classes(self) -> list[int]:
        """Every class present in any experience of the stream, sorted."""
        return sorted({c for exp in self.experiences for c in exp.classes})


@define(eq=False, repr=False)
class Benchmark:
    """Named streams. ``benchmark.train_stream`` is ``benchmark.streams["train"]``, and so for any name."""

    streams: dict[str, Stream]
    name: str = ""
    info: dict[str, Any] = field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        for key, stream in self.streams.items():
            if not isinstance(stream, Stream):
                self.streams[key] = Stream(key, list(stream))

    def __getattr__(self, name: str) -> Stream:
        streams = object.__getattribute__(self, "streams")
        if name.endswith("_stream") and name[: -len("_stream")] in streams:
            return streams[name[: -len("_stream")]]
        raise AttributeError(f"benchmark has no attribute {name!r} (streams: {', '.join(streams)})")

    def __repr__(self) -> str:
        streams = ", ".join(f"{k}: {len(v)} experiences" for k, v in self.streams.items())
        return f"{type(self).__name__}({self.name!r}; {streams})"

    @property
    def num_classes(self) -> int:
        """The number of output units a model needs: the largest class id in the train stream plus one."""
        return max(self.streams["train"].classes) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, read from the first training sample (eval transforms applied)."""
        return tuple(self.streams["train"][0].dataset.eval()[0][0].shape)


def as_experiences(obj: Any, what: str) -> list[Experience]:
    """The experiences of ``obj``: one Experience, a Stream or iterable of experiences, or one dataset."""
    if isinstance(obj, Experience):
        return [obj]
    if isinstance(obj, (Stream, list, tuple)) or (isinstance(obj, Iterable) and not hasattr(obj, "__getitem__")):
        items = list(obj)
        bad = [x for x in items if not isinstance(x, Experience)]
        if not bad and items:
            return items
        if not items:
            raise ValueError(f"{what}() got no experiences")
        raise TypeError(f"{what}() expects an Experience, a Stream or experiences; got a {type(bad[0]).__name__} "
                        f"among them: {bad[0]!r}")
    try:
        return [Experience(0, as_cl_dataset(obj))]
    except TypeError:
        raise TypeError(f"{what}() expects an Experience, a Stream, experiences or a dataset; got "
                        f"{type(obj).__name__}: {obj!r}") from None
