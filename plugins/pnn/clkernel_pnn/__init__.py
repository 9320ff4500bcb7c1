"""clkernel-pnn: Progressive Neural Networks (Rusu et al., 2016) for task-incremental learning.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_pnn.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"pnn": ["ADAPTERS", "LinearAdapter", "MLPAdapter", "PNN", "PNNColumn", "PNNLayer"]})
