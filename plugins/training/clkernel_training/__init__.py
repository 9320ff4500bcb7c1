"""clkernel-training: training utilities as plugins that compose with every strategy.

``LRScheduler`` (any ``torch.optim.lr_scheduler`` class, per epoch or per optimizer update), ``EarlyStopping``
(on a metric of a validation stream), ``GradClip`` (by norm or by value), ``GradAccumulation`` (k minibatches per
optimizer step), ``AMP`` (mixed precision with ``torch.autocast`` and a gradient scaler for float16), ``EMA``
(an exponential moving average of the weights, evaluated when asked), ``ChannelsLast`` (weights and images in
channels-last memory format) and ``Compile`` (``torch.compile`` of the model, in place). ``MetricMonitor`` reads a
named metric where the loop logs it (what early stopping and ``ReduceLROnPlateau`` use).

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_training.registration``, does not import torch.
"""

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__, submod_attrs={"amp": ["AMP"], "compile": ["Compile"], "early_stopping": ["EarlyStopping"],
                            "ema": ["EMA"], "gradients": ["GradAccumulation", "GradClip"],
                            "memory_format": ["ChannelsLast", "to_channels_last"], "monitor": ["MetricMonitor"],
                            "scheduler": ["LRScheduler", "scheduler_classes"]})
