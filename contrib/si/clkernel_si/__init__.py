"""clkernel-si: Synaptic Intelligence (Zenke et al., 2017) as a training plugin.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_si.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"si": ["SynapticIntelligence", "si_importance"]})
