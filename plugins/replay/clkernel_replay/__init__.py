"""clkernel-replay: replay buffers (usable on their own), and the replay, GDumb, Cumulative and Joint plugins."""

from clkernel_replay.buffers import (ClassBalancedBuffer, ExperienceBalancedBuffer, GreedyClassBalancedBuffer,
                                     ParametricBuffer, ReservoirSamplingBuffer, StoragePolicy, make_policy)
from clkernel_replay.cumulative import Cumulative, Joint
from clkernel_replay.gdumb import GDumb, reinitialize
from clkernel_replay.replay import BufferSampler, Replay
from clkernel_replay.selection import (ClosestToCenterSelection, HerdingSelection, RandomSelection,
                                       SelectionStrategy, compute_features)

__all__ = [
    "BufferSampler", "ClassBalancedBuffer", "ClosestToCenterSelection", "Cumulative", "ExperienceBalancedBuffer",
    "GDumb", "GreedyClassBalancedBuffer", "HerdingSelection", "Joint", "ParametricBuffer", "RandomSelection",
    "Replay", "ReservoirSamplingBuffer", "SelectionStrategy", "StoragePolicy", "compute_features", "make_policy",
    "reinitialize",
]
