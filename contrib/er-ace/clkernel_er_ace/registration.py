"""Entry point of clkernel-er-ace: registers the ``er-ace`` and ``er-aml`` training plugins (torch is imported in
the factories)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["er_ace", "er_aml", "register_plugins"]


def er_ace(mem_size: int = 200, batch_size_mem: int | None = None, storage_policy: str = "reservoir",
           seed: int | None = None) -> Any:
    """ER-ACE (Caccia et al., 2022): cross-entropy over the minibatch's classes on incoming data, full on replay.

    storage_policy: reservoir (the paper's), class_balanced (Avalanche's), ... (clkernel-replay's policies).
    batch_size_mem defaults to the training minibatch size.
    """
    from clkernel_er_ace.methods import ERACE

    return ERACE(mem_size=mem_size, batch_size_mem=batch_size_mem, storage_policy=storage_policy, seed=seed)


def er_aml(mem_size: int = 200, batch_size_mem: int | None = None, temperature: float = 0.1,
           base_temperature: float = 0.07, same_task_neg: bool = True, feature_layer: str | None = None,
           storage_policy: str = "reservoir", seed: int | None = None, model: Any = None) -> Any:
    """ER-AML (Caccia et al., 2022): supervised contrastive loss against buffer samples on incoming data, CE on replay.

    feature_layer: the submodule whose output are the features (default: the input of the last Linear layer).
    storage_policy: reservoir (the paper's), class_balanced (Avalanche's), ... (clkernel-replay's policies).
    model: the model to train (clkernel run fills it), to check feature_layer before the run starts.
    """
    from clkernel_er_ace.methods import ERAML

    if model is not None and feature_layer is not None and feature_layer not in dict(model.named_modules()):
        parts = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"er-aml: feature_layer {feature_layer!r} is not a submodule of the model; its submodules: "
                         f"{', '.join(parts) or '(none)'}")

    return ERAML(mem_size=mem_size, batch_size_mem=batch_size_mem, temperature=temperature,
                 base_temperature=base_temperature, same_task_neg=same_task_neg, feature_layer=feature_layer,
                 storage_policy=storage_policy, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("er-ace", er_ace)
    register("er-aml", er_aml)
