"""Entry point of clkernel-bic: registers the ``bic`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["bic", "register_plugins"]


def bic(mem_size: int = 200, val_fraction: float = 0.1, temperature: float = 2.0, lamb: float | None = None,
        stage2_epochs: int = 200, stage2_lr: float = 0.1, batch_size_mem: int | None = None,
        storage_policy: str = "class_balanced", seed: int | None = None) -> Any:
    """Bias Correction (Wu et al., 2019): replay and distillation, then a bias layer fitted on held-out samples.

    Stage 1: (1 - lambda) * CE + lambda * distillation (T = temperature) from the previous model on the old
    classes, lambda = old / seen classes unless lamb is given, with exemplars replayed. Stage 2 (after each
    experience): q = alpha * o + beta on the new classes' logits, fitted on val_fraction of the memory held out
    from training (stage2_epochs of SGD at stage2_lr). storage_policy: class_balanced, herding, reservoir, ...
    """
    from clkernel_bic.bic import BiC

    return BiC(mem_size=mem_size, val_fraction=val_fraction, temperature=temperature, lamb=lamb,
               stage2_epochs=stage2_epochs, stage2_lr=stage2_lr, batch_size_mem=batch_size_mem,
               storage_policy=storage_policy, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("bic", bic)
