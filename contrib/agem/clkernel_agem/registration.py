"""Entry point of clkernel-agem: registers the ``agem`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["agem", "register_plugins"]


def agem(patterns_per_experience: int = 250, sample_size: int = 256, seed: int | None = None) -> Any:
    """Averaged GEM (Chaudhry et al., 2019): project each gradient so the memory's average loss does not rise.

    patterns_per_experience: memory samples kept per experience (class-balanced). sample_size: memory samples
    drawn for each reference gradient.
    """
    from clkernel_agem.agem import AGEM

    return AGEM(patterns_per_experience=patterns_per_experience, sample_size=sample_size, seed=seed)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("agem", agem)
