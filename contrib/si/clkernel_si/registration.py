"""Entry point of clkernel-si: registers the ``si`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["register_plugins", "si"]


def si(si_lambda: float = 0.1, eps: float = 0.1) -> Any:
    """Synaptic Intelligence: a quadratic penalty weighted by path-integral importances (Zenke et al., 2017).

    si_lambda: strength c of the penalty (the paper's c; 0.1 on Permuted MNIST). eps: damping xi of the importance
    denominator (the paper's xi; 0.1 on Permuted MNIST, 1e-3 on Split MNIST).
    """
    from clkernel_si.si import SynapticIntelligence

    return SynapticIntelligence(si_lambda=si_lambda, eps=eps)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("si", si)
