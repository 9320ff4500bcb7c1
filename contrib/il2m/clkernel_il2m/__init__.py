"""clkernel-il2m: IL2M (Belouadah & Popescu, 2019) as a training plugin, and its score rectification as a function.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_il2m.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"il2m": ["IL2M", "rectify_scores"]})
