"""clkernel-bic: Bias Correction (BiC; Wu et al., 2019) as a training plugin, and its bias layer as a model
component any strategy can use.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_bic.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"bic": ["BiC", "BiasLayer", "bic_distillation_loss", "fit_bias_layer"]})
