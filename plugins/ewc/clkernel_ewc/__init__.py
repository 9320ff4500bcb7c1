"""clkernel-ewc: Elastic Weight Consolidation as a training plugin, and as functions usable outside the loop.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_ewc.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"ewc": ["EWC", "compute_importances", "ewc_penalty", "quadratic_penalty"]})
