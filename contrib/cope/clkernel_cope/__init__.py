"""clkernel-cope: Continual Prototype Evolution (CoPE; De Lange & Tuytelaars, 2021): the training plugin, the PPP loss
and the prototype classifier head.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_cope.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"cope": ["CoPE", "PrototypeClassifier", "UNSEEN_SCORE", "ppp_loss"]})
