"""clkernel-agem: Averaged Gradient Episodic Memory (Chaudhry et al., 2019) as a training plugin, and its
projection as a function usable outside the loop.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_agem.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={"agem": ["AGEM", "agem_project"]})
