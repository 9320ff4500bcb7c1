"""Entry point of clkernel-der: registers the ``der`` and ``derpp`` training plugins (torch is imported in the
factories)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["der", "derpp", "register_plugins"]


def der(mem_size: int = 200, alpha: float = 0.1, batch_size_mem: int | None = None,
        storage_policy: str = "reservoir", seed: int | None = None) -> Any:
    """Dark Experience Replay (Buzzega et al., 2020): match the logits stored with buffer samples.

    loss = CE on the minibatch + alpha * MSE(model's logits on buffer samples, stored logits).
    storage_policy: reservoir (the paper's), class_balanced, experience_balanced, ... (clkernel-replay's).
    batch_size_mem defaults to the training minibatch size.
    """
    from clkernel_der.der import DER

    return DER(mem_size=mem_size, alpha=alpha, beta=0.0, batch_size_mem=batch_size_mem,
               storage_policy=storage_policy, seed=seed)


def derpp(mem_size: int = 200, alpha: float = 0.1, beta: float = 0.5, batch_size_mem: int | None = None,
          storage_policy: str = "reservoir", seed: int | None = None) -> Any:
    """DER++ (Buzzega et al., 2020): DER plus a cross-entropy term on a second buffer minibatch.

    loss = CE on the minibatch + alpha * MSE(logits on buffer samples, stored logits) + beta * CE on other
    buffer samples. storage_policy: reservoir (the paper's), class_balanced, ... (clkernel-replay's).
    batch_size_mem defaults to the training minibatch size.
    """
    from clkernel_der.der import DERpp

    return DERpp(mem_size=mem_size, alpha=alpha, beta=beta, batch_size_mem=batch_size_mem,
                 storage_policy=storage_policy, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("der", der)
    register("derpp", derpp)
