"""Entry point of clkernel-lfl: registers the ``lfl`` training plugin (torch is imported in the factory)."""

from __future__ import annotations

from typing import Any, Callable

import clkernel

__all__ = ["lfl", "register_plugins"]


def lfl(lambda_e: float = 1e-4, classifier: str = "classifier", freeze_classifier: bool = True,
        model: Any = None) -> Any:
    """Less-Forgetful Learning: keep the features (the classifier's input) close to the previous model's.

    classifier: dotted name of the model's classifier submodule; the features are its input (every model of
    clkernel-models names it `classifier`). freeze_classifier: keep the classifier's existing weights fixed after the
    first experience, as the paper does. model: the model to train (clkernel run fills it), to check classifier
    before the run starts.
    """
    from clkernel_lfl.lfl import LFL

    if model is not None and classifier not in dict(model.named_modules()):
        parts = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"lfl: classifier {classifier!r} is not a submodule of the model; its submodules: "
                         f"{', '.join(parts) or '(none)'}")

    return LFL(lambda_e=lambda_e, classifier=classifier, freeze_classifier=freeze_classifier)


@clkernel.hookimpl
def register_plugins(register: Callable[..., None]) -> None:
    register("lfl", lfl)
