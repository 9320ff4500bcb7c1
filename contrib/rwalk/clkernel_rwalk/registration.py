"""Entry point of clkernel-rwalk: registers the ``rwalk`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["register_plugins", "rwalk"]


def rwalk(ewc_lambda: float = 0.1, alpha: float = 0.9, delta_t: int = 10) -> Any:
    """Riemannian Walk: a penalty weighted by a moving-average KL-Fisher plus path-based scores (Chaudhry et al., 2018).

    ewc_lambda: weight of the penalty. alpha: weight of the newest minibatch in the Fisher's moving average (EWC++).
    delta_t: training iterations between two score updates.
    """
    from clkernel_rwalk.rwalk import RWalk

    return RWalk(ewc_lambda=ewc_lambda, alpha=alpha, delta_t=delta_t)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("rwalk", rwalk)
