"""Entry point of clkernel-cope: registers the ``cope`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["cope", "register_plugins"]


def cope(mem_size: int = 200, alpha: float = 0.99, temperature: float = 0.1, num_classes: int | None = None,
         batch_size_mem: int | None = None, seed: int | None = None) -> Any:
    """CoPE (De Lange & Tuytelaars, 2021): prototypes by momentum, PPP loss, class-balanced replay, nearest prototype.

    The model's output is the embedding (unless the model ends with a PrototypeClassifier); the plugin classifies it
    by its nearest prototype among num_classes (clkernel run fills it). alpha: prototype momentum; temperature: the
    PPP loss's. batch_size_mem (replayed samples per minibatch) defaults to the training minibatch size.
    """
    from clkernel_cope.cope import CoPE

    return CoPE(mem_size=mem_size, alpha=alpha, temperature=temperature, num_classes=num_classes,
                batch_size_mem=batch_size_mem, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("cope", cope)
