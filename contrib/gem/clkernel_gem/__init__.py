"""clkernel-gem: Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017) as a training plugin, and its projection as a
function usable outside the loop.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_gem.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={"gem": ["GEM", "gem_project"]})
