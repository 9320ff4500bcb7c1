"""clkernel-icarl: iCaRL (Rebuffi et al., 2017) as a training plugin, and its nearest-mean-of-exemplars classifier
as a model component any strategy can use.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_icarl.registration``, does not import torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"icarl": ["SELECTIONS", "ICaRL", "classifier_features", "exemplar_memory", "find_classifier",
                                      "icarl_loss"],
                            "ncm": ["NCMClassifier", "class_means"]})
