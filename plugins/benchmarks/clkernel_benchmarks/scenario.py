"""The benchmark and experience types the generators return: kernel types plus what a scenario knows."""

from __future__ import annotations

from typing import Any

from attrs import define, field

from clkernel import Benchmark, Experience

__all__ = ["OnlineExperience", "ScenarioBenchmark"]


@define(eq=False)
class ScenarioBenchmark(Benchmark):
    """A kernel :class:`~clkernel.Benchmark` that also tells how its classes were split.

    The facts live in ``info`` (so they survive copies); these properties read them, falling back to what the
    train stream contains when a generator did not record them.
    """

    @property
    def classes_order(self) -> list[int]:
        """Class ids (as the model sees them) in the order the experiences introduce them."""
        if "classes_order" in self.info:
            return list(self.info["classes_order"])
        return [c for exp_classes in self.classes_in_experience for c in exp_classes]

    @property
    def classes_order_original_ids(self) -> list[int]:
        """:attr:`classes_order` with the dataset's own class ids (they differ when ids were remapped)."""
        return list(self.info.get("classes_order_original_ids", self.classes_order))

    @property
    def classes_in_experience(self) -> list[list[int]]:
        """The sorted class ids of each training experience, by experience."""
        if "classes_in_experience" in self.info:
            return [list(c) for c in self.info["classes_in_experience"]]
        return [list(exp.classes) for exp in self.streams["train"]]

    @property
    def original_classes_in_experience(self) -> list[list[int]]:
        """:attr:`classes_in_experience` with the dataset's own class ids."""
        return [list(c) for c in self.info.get("original_classes_in_experience", self.classes_in_experience)]

    @property
    def n_classes_per_exp(self) -> list[int]:
        """How many classes each training experience holds."""
        return [len(c) for c in self.classes_in_experience]

    @property
    def class_mapping(self) -> dict[int, int]:
        """Dataset class id -> class id the model sees (the identity when nothing was remapped)."""
        if "class_mapping" in self.info:
            return dict(self.info["class_mapping"])
        return {c: c for c in self.streams["train"].classes}


@define(eq=False)
class OnlineExperience(Experience):
    """A mini-experience of an online stream: a few samples of one experience of the original stream."""

    #: The experience of the original stream these samples come from.
    origin_experience: Experience | None = field(default=None, kw_only=True, repr=False)
    #: Position of this mini-experience among those of its origin experience.
    subexp_index: int = field(default=0, kw_only=True)
    #: True for the first / last mini-experience of its origin experience (e.g. to reset or consolidate).
    is_first_subexp: bool = field(default=False, kw_only=True)
    is_last_subexp: bool = field(default=False, kw_only=True)

    @property
    def origin_index(self) -> int:
        """The ``index`` of the origin experience in the original stream."""
        return self.origin_experience.index if self.origin_experience is not None else self.index


def copy_benchmark(benchmark: Benchmark, streams: dict[str, Any]) -> ScenarioBenchmark:
    """A ScenarioBenchmark (of ``benchmark``'s type when it is one) with its name and info and other ``streams``."""
    cls = type(benchmark) if isinstance(benchmark, ScenarioBenchmark) else ScenarioBenchmark
    return cls(streams, name=benchmark.name, info=dict(benchmark.info))
