"""Entry point of clkernel-icarl: registers the ``icarl`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import clkernel

__all__ = ["check_classifier", "icarl", "register_plugins"]


def check_classifier(model: Any, classifier: str | None, who: str) -> None:
    """Refuse, when the plugin is built, a ``classifier`` option naming no submodule of ``model`` (the model
    ``clkernel run`` gives the factory; nothing is checked without one).

    :raises ValueError: naming the plugin, the option and the model's submodules.
    """
    if model is not None and classifier is not None and classifier not in dict(model.named_modules()):
        parts = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"{who}: classifier {classifier!r} is not a submodule of the model; its submodules: "
                         f"{', '.join(parts) or '(none)'}")


def icarl(mem_size: int = 2000, selection: str = "herding", classifier: str | None = None, nme: bool = True,
          temperature: float = 1.0, seed: int | None = None, model: Any = None) -> Any:
    """iCaRL (Rebuffi et al., 2017): herding exemplars, sigmoid distillation, nearest-mean-of-exemplars classifier.

    Trains on the experience plus the exemplars with binary cross-entropy over the classes seen so far, old classes'
    targets being the previous model's sigmoid outputs; evaluates with the nearest mean of exemplars (nme=True).
    mem_size: exemplars in all, split evenly over the classes seen. selection: herding (the paper's), random or
    closest_to_center. classifier: the submodule whose input are the features (default: the submodule named
    `classifier`, else the model's last Linear). temperature: the distillation targets are sigmoid(old logits / T)
    (1, the paper's). model: the model to train (clkernel run fills it), to check classifier before the run.
    """
    from clkernel_icarl.icarl import ICaRL

    check_classifier(model, classifier, "icarl")

    return ICaRL(mem_size=mem_size, selection=selection, classifier=classifier, nme=nme, temperature=temperature,
                 seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("icarl", icarl)
