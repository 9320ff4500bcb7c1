"""Entry point of clkernel-icarl: registers the ``icarl`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import clkernel

__all__ = ["icarl", "register_plugins"]


def icarl(mem_size: int = 2000, selection: str = "herding", classifier: str | None = None, nme: bool = True,
          temperature: float = 1.0, seed: int | None = None) -> Any:
    """iCaRL (Rebuffi et al., 2017): herding exemplars, sigmoid distillation, nearest-mean-of-exemplars classifier.

    Trains on the experience plus the exemplars with binary cross-entropy over the classes seen so far, old classes'
    targets being the previous model's sigmoid outputs; evaluates with the nearest mean of exemplars (nme=True).
    mem_size: exemplars in all, split evenly over the classes seen. selection: herding (the paper's), random or
    closest_to_center. classifier: the submodule whose input are the features (default: the submodule named
    `classifier`, else the model's last Linear). temperature: the distillation targets are sigmoid(old logits / T)
    (1, the paper's).
    """
    from clkernel_icarl.icarl import ICaRL

    return ICaRL(mem_size=mem_size, selection=selection, classifier=classifier, nme=nme, temperature=temperature,
                 seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("icarl", icarl)
