"""Entry point of clkernel-gss: registers the ``gss`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["gss", "register_plugins"]


def gss(mem_size: int = 200, mem_strength: int = 10, batch_size: int = 10, batch_threshold: float | None = None,
        batch_size_mem: int | None = None, seed: int | None = None) -> Any:
    """GSS-greedy (Aljundi et al., 2019): replay from a buffer kept diverse in gradient space.

    A new sample's score is its gradient's largest cosine similarity to the gradients of mem_strength random
    buffer minibatches; once the buffer is full it replaces a sample drawn by score, with probability given by
    both scores. Samples are scored batch_size at a time; batch_threshold (off by default; the authors' code uses 0)
    skips minibatches whose mean gradient is that similar. batch_size_mem defaults to the training minibatch size.
    """
    from clkernel_gss.gss import GSSGreedy

    return GSSGreedy(mem_size=mem_size, mem_strength=mem_strength, batch_size=batch_size,
                     batch_threshold=batch_threshold, batch_size_mem=batch_size_mem, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("gss", gss)
