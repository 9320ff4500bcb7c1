"""clkernel-models: standard continual-learning models and dynamic modules (growing and multi-head classifiers).

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_models.registration``, does not import torch.
"""

import lazy_loader

_EXPORTS = {
    "dynamic": ["AdaptiveModule", "IncrementalClassifier", "MultiHeadClassifier", "MultiTaskDecorator",
                "MultiTaskModule", "UnknownTaskError", "as_multitask", "classes_by_task"],
    "models": ["MTSimpleCNN", "MTSimpleMLP", "SimpleCNN", "SimpleMLP", "SlimResNet18"],
}

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs=_EXPORTS)
