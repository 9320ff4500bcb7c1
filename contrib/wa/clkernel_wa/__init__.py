"""clkernel-wa: Weight Aligning (Zhao et al., 2020) as a training plugin, and the alignment itself as a function
usable on any linear classifier.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_wa.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"wa": ["WA", "weight_align", "classifier_rows"]})
