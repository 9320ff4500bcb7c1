"""clkernel-der: Dark Experience Replay (DER, DER++; Buzzega et al., 2020) as training plugins.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_der.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"der": ["DER", "DERpp", "LogitBuffer", "logit_matching_loss"]})
