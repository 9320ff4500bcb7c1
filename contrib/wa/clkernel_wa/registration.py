"""Entry point of clkernel-wa: registers the ``wa`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import clkernel

__all__ = ["register_plugins", "wa"]


def wa(mem_size: int = 2000, temperature: float = 2.0, kd_lambda: float | None = None, selection: str = "herding",
       classifier: str | None = None, align: bool = True, align_bias: bool = False, clip_weights: bool = False,
       seed: int | None = None, model: Any = None) -> Any:
    """Weight Aligning (Zhao et al., 2020): distillation with exemplars, then the new classes' weight norms aligned.

    loss = (1 - kd_lambda) * CE + kd_lambda * KD(T) on the experience plus mem_size exemplars; kd_lambda defaults to
    old classes / classes seen (the paper's). After each experience the new classes' weight vectors are scaled by
    gamma = mean norm of the old ones / mean norm of the new ones. selection: herding (iCaRL's), closest_to_center or
    random. classifier: the linear head (default: the submodule named `classifier`, else the last Linear).
    align=False: distillation with exemplars only, no aligning. align_bias: scale the new biases too.
    clip_weights: keep the head's weights >= 0 after every step. model: the model to train (clkernel run fills it),
    to check classifier before the run.
    """
    from clkernel_icarl.registration import check_classifier
    from clkernel_wa.wa import WA

    check_classifier(model, classifier, "wa")

    return WA(mem_size=mem_size, temperature=temperature, kd_lambda=kd_lambda, selection=selection,
              classifier=classifier, align=align, align_bias=align_bias, clip_weights=clip_weights, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("wa", wa)
