"""Entry point of clkernel-rar: registers the ``rar`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["rar", "register_plugins"]


def rar(mem_size: int = 200, repeats: int = 10, max_shift: int = 2, flip: bool = False,
        batch_size_mem: int | None = None, storage_policy: str = "reservoir", seed: int | None = None) -> Any:
    """Repeated Augmented Rehearsal (Zhang et al., 2022): replay, each minibatch trained `repeats` times, augmented.

    Every incoming minibatch gets `repeats` optimizer steps, each with fresh buffer samples and a fresh random
    shift (up to max_shift pixels; flip adds horizontal flips) of the whole minibatch. Needs image inputs (B, C, H, W).
    """
    from clkernel_rar.rar import RAR

    return RAR(mem_size=mem_size, repeats=repeats, max_shift=max_shift, flip=flip, batch_size_mem=batch_size_mem,
               storage_policy=storage_policy, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("rar", rar)
