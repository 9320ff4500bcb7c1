"""clkernel-wandb: a logger that sends a clkernel run to Weights & Biases (online, offline or disabled).

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_wandb.registration``, imports neither torch nor wandb.
"""

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, _lazy_all = lazy_loader.attach(
    __name__, submod_attrs={"logger": ["EXIT_CODES", "MODES", "STEP_METRIC", "WandbLogger"]})

__all__ = sorted([*_lazy_all, "__version__"])
