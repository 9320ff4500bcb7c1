"""Entry point of clkernel-mas: registers the ``mas`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["mas", "register_plugins"]


def mas(lambda_reg: float = 1.0, alpha: float | None = None, batch_size: int | None = None) -> Any:
    """Memory Aware Synapses: penalise moving parameters to which the output's squared L2 norm is sensitive.

    Importances need no labels. alpha: None sums them over experiences (the paper); a number in [0, 1] keeps
    alpha * old + (1 - alpha) * new (Avalanche). batch_size: samples per gradient of the importance (default the
    training minibatch size; 1 is the paper's per-sample definition).
    """
    from clkernel_mas.mas import MAS

    return MAS(lambda_reg=lambda_reg, alpha=alpha, batch_size=batch_size)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("mas", mas)
