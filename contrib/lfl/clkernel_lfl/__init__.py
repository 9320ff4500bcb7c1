"""clkernel-lfl: Less-Forgetful Learning (Jung et al., 2016) as a training plugin.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_lfl.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"lfl": ["LFL", "classifier_inputs", "find_classifier"]})
