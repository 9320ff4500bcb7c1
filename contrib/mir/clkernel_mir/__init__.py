"""clkernel-mir: Maximally Interfered Retrieval (MIR; Aljundi et al., 2019) as a training plugin.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_mir.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"mir": ["MIR", "interference_scores", "virtual_parameters"]})
