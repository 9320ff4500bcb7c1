"""clkernel-lwf: Learning without Forgetting as a training plugin, and as an object usable outside the loop.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_lwf.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"lwf": ["LearningWithoutForgetting", "LwF", "distillation_loss"]})
