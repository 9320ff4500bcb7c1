"""Entry point of clkernel-ewc: registers the ``ewc`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["ewc", "register_plugins"]


def ewc(ewc_lambda: float = 1.0, mode: str = "separate", decay_factor: float | None = None,
        keep_importance_data: bool = False) -> Any:
    """Elastic Weight Consolidation: penalise moving parameters that were important for past experiences.

    mode: separate (one term per past experience) or online (decayed running importance; needs decay_factor).
    """
    from clkernel_ewc.ewc import EWC

    return EWC(ewc_lambda=ewc_lambda, mode=mode, decay_factor=decay_factor,
               keep_importance_data=keep_importance_data)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("ewc", ewc)
