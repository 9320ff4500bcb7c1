"""clkernel-mas: Memory Aware Synapses (Aljundi et al., 2018) as a training plugin, and as functions usable outside
the loop.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_mas.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"mas": ["MAS", "mas_importances"]})
