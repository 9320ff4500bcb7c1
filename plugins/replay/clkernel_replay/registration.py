"""Entry point of clkernel-replay: registers the replay, gdumb, cumulative and joint training plugins.

Cheap to import: the plugin modules (and torch) are imported inside the factories.
"""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["cumulative", "gdumb", "joint", "register_plugins", "replay"]


def replay(mem_size: int = 200, batch_size_mem: int | None = None, task_balanced: bool = False,
           storage_policy: str = "experience_balanced", seed: int | None = None) -> Any:
    """Experience replay: each minibatch mixes current data with samples of a bounded buffer.

    storage_policy: experience_balanced, class_balanced, reservoir, greedy_class_balanced, random, herding or
    closest_to_center (the last three: class-grouped parametric buffers; features are the model's outputs).
    batch_size_mem defaults to the training minibatch size.
    """
    from clkernel_replay.replay import Replay

    return Replay(mem_size=mem_size, batch_size_mem=batch_size_mem, task_balanced=task_balanced,
                  storage_policy=storage_policy, seed=seed)


def gdumb(mem_size: int = 200, seed: int | None = None) -> Any:
    """GDumb: a greedy class-balanced buffer, and the model retrained from scratch on it at each experience."""
    from clkernel_replay.gdumb import GDumb

    return GDumb(mem_size=mem_size, seed=seed)


def cumulative() -> Any:
    """Cumulative training: each experience trains on all the data seen so far."""
    from clkernel_replay.cumulative import Cumulative

    return Cumulative()


def joint() -> Any:
    """Joint training (upper bound): train once on the whole stream at its first experience, skip the others."""
    from clkernel_replay.cumulative import Joint

    return Joint()


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("replay", replay)
    register("gdumb", gdumb)
    register("cumulative", cumulative)
    register("joint", joint)
