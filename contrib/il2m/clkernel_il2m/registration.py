"""Entry point of clkernel-il2m: registers the ``il2m`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import clkernel

__all__ = ["il2m", "register_plugins"]


def il2m(mem_size: int = 2000, score: str = "logits", selection: str = "herding", classifier: str | None = None,
         rectify: bool = True, seed: int | None = None, model: Any = None) -> Any:
    """IL2M (Belouadah & Popescu, 2019): fine-tuning with exemplars, then old-class scores rectified with class
    statistics stored when each class was new.

    When a prediction falls on a class of the last experience, each old class c's score is multiplied by
    (mean score of c when it was new / its mean score on its exemplars now) * (model confidence now / model
    confidence when c was new). score: logits (the authors' raw scores) or softmax. selection: herding, random or
    closest_to_center (the exemplars). classifier: the submodule whose input are the herding features.
    rectify=False: evaluate the fine-tuned model unrectified (fine-tuning with the same memory). model: the model to
    train (clkernel run fills it), to check classifier before the run.
    """
    from clkernel_icarl.registration import check_classifier
    from clkernel_il2m.il2m import IL2M

    check_classifier(model, classifier, "il2m")

    return IL2M(mem_size=mem_size, score=score, selection=selection, classifier=classifier, rectify=rectify,
                seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("il2m", il2m)
