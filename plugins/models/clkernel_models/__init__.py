"""clkernel-models: standard continual-learning models and dynamic modules (growing and multi-head classifiers)."""

from clkernel_models.dynamic import (AdaptiveModule, IncrementalClassifier, MultiHeadClassifier, MultiTaskDecorator,
                                     MultiTaskModule, UnknownTaskError, as_multitask, classes_by_task)
from clkernel_models.models import MTSimpleCNN, MTSimpleMLP, SimpleCNN, SimpleMLP, SlimResNet18

__all__ = [
    "AdaptiveModule", "IncrementalClassifier", "MTSimpleCNN", "MTSimpleMLP", "MultiHeadClassifier",
    "MultiTaskDecorator", "MultiTaskModule", "SimpleCNN", "SimpleMLP", "SlimResNet18", "UnknownTaskError",
    "as_multitask", "classes_by_task",
]
