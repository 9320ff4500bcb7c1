"""clkernel-lucir: LUCIR (Hou et al., 2019) as a training plugin, and its cosine-normalised classifier as a model
component any strategy can use.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_lucir.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"lucir": ["LUCIR", "CosineLinear", "CosineMLP", "cosine_head", "find_cosine_classifier",
                                      "less_forget_loss", "margin_ranking_loss"]})
