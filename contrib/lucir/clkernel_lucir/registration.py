"""Entry point of clkernel-lucir: registers the ``lucir`` training plugin and the ``cosine-mlp`` model (torch is
imported in the factories)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["cosine_mlp", "lucir", "register_models", "register_plugins"]


def lucir(mem_size: int = 200, lambda_base: float = 5.0, lambda_mr: float = 1.0, margin: float = 0.5, k: int = 2,
          freeze_old: bool = True, batch_size_mem: int | None = None, storage_policy: str = "class_balanced",
          seed: int | None = None) -> Any:
    """LUCIR (Hou et al., 2019): cosine classifier, less-forget constraint and margin ranking, with exemplars.

    Needs a model with a CosineLinear classifier (--model cosine-mlp). From the second experience the loss adds
    lambda_base * sqrt(old/new classes) * (1 - cos(features, previous model's features)) and lambda_mr * the
    margin ranking loss (margin, k hardest new classes) on old-class samples; freeze_old keeps the old classes'
    embeddings fixed. storage_policy: class_balanced, herding, reservoir, ... (clkernel-replay's).
    """
    from clkernel_lucir.lucir import LUCIR

    return LUCIR(mem_size=mem_size, lambda_base=lambda_base, lambda_mr=lambda_mr, margin=margin, k=k,
                 freeze_old=freeze_old, batch_size_mem=batch_size_mem, storage_policy=storage_policy, seed=seed)


def cosine_mlp(num_classes: int = 10, input_size: int = 784, hidden_size: int = 512, hidden_layers: int = 1,
               drop_rate: float = 0.0, last_relu: bool = False) -> Any:
    """An MLP whose classifier is cosine-normalised (LUCIR's CosineLinear, learnable scale).

    last_relu=False (LUCIR's choice) leaves out the ReLU after the last hidden layer, so features can be negative.
    """
    from clkernel_lucir.lucir import CosineMLP

    return CosineMLP(num_classes, input_size, hidden_size, hidden_layers, drop_rate, last_relu)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("lucir", lucir)


@clkernel.hookimpl
def register_models(register: Callable[..., None]) -> None:
    register("cosine-mlp", cosine_mlp)
