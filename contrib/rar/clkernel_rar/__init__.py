"""clkernel-rar: Repeated Augmented Rehearsal (Zhang et al., 2022) as a training plugin.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_rar.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"rar": ["RAR", "RepeatedLoader", "random_shift", "shift_images"]})
