"""Entry point of clkernel-gem: registers the ``gem`` training plugin (torch and quadprog are imported in the
factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["gem", "register_plugins"]


def gem(patterns_per_experience: int = 256, memory_strength: float = 0.5, eps: float = 1e-3,
        seed: int | None = None) -> Any:
    """Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017): project each gradient so no past memory's loss rises.

    patterns_per_experience: memory samples kept per experience. memory_strength: the paper's margin gamma
    (0: exact projection). eps: ridge on the diagonal of the memories' Gram matrix (authors' code: 1e-3).
    """
    from clkernel_gem.gem import GEM

    return GEM(patterns_per_experience=patterns_per_experience, memory_strength=memory_strength, eps=eps, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("gem", gem)
