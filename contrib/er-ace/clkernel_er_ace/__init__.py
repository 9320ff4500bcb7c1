"""clkernel-er-ace: ER-ACE and ER-AML (Caccia et al., 2022) as training plugins.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_er_ace.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"methods": ["ERACE", "ERAML", "asymmetric_logits", "supervised_contrastive_loss"]})
