"""Entry point of clkernel-mir: registers the ``mir`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["mir", "register_plugins"]


def mir(mem_size: int = 200, subsample: int = 50, batch_size_mem: int | None = None, lr: float | None = None,
        storage_policy: str = "reservoir", seed: int | None = None) -> Any:
    """MIR (Aljundi et al., 2019): replay the buffer samples whose loss a virtual SGD step would raise most.

    Each iteration draws `subsample` buffer samples, takes a virtual SGD step (learning rate lr, default the
    optimizer's) with the minibatch's gradient, and trains on the minibatch plus the batch_size_mem candidates
    (default: the training minibatch size) whose cross-entropy rises most. storage_policy: reservoir (the
    paper's), class_balanced (Avalanche's), ... (clkernel-replay's policies).
    """
    from clkernel_mir.mir import MIR

    return MIR(mem_size=mem_size, subsample=subsample, batch_size_mem=batch_size_mem, lr=lr,
               storage_policy=storage_policy, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("mir", mir)
