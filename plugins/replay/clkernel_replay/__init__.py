"""clkernel-replay: replay buffers (usable on their own), and the replay, GDumb, Cumulative and Joint plugins.

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_replay.registration``, does not import torch.
"""

import lazy_loader

_EXPORTS = {
    "buffers": ["ClassBalancedBuffer", "ExperienceBalancedBuffer", "GreedyClassBalancedBuffer", "ParametricBuffer",
                "ReservoirSamplingBuffer", "StoragePolicy", "make_policy"],
    "cumulative": ["Cumulative", "Joint"],
    "gdumb": ["GDumb", "reinitialize"],
    "replay": ["BufferSampler", "Replay"],
    "selection": ["ClosestToCenterSelection", "HerdingSelection", "RandomSelection", "SelectionStrategy",
                  "compute_features"],
}

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs=_EXPORTS)
