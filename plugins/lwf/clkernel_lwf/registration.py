"""Entry point of clkernel-lwf: registers the ``lwf`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["lwf", "register_plugins"]


def lwf(alpha: float | list = 1.0, temperature: float = 2.0) -> Any:
    """Learning without Forgetting: distil the previous model's outputs on the classes seen so far.

    alpha: one number, or a list with one number per experience (e.g. alpha=[0,1,1,1,1]).
    """
    from clkernel_lwf.lwf import LwF

    return LwF(alpha=alpha, temperature=temperature)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("lwf", lwf)
