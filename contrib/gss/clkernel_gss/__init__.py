"""clkernel-gss: GSS-greedy (Aljundi et al., 2019) as a clkernel-replay storage policy and a replay plugin.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_gss.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"gss": ["GSSGreedy", "GSSGreedyBuffer", "GSSGreedySelection", "ID_ATTRIBUTE",
                                    "gss_replacements", "max_cosine_similarity"]})
