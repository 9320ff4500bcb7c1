"""clkernel-ewc: Elastic Weight Consolidation as a training plugin, and as functions usable outside the loop."""

from clkernel_ewc.ewc import EWC, compute_importances, ewc_penalty

__all__ = ["EWC", "compute_importances", "ewc_penalty"]
