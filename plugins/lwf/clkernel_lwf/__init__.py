"""clkernel-lwf: Learning without Forgetting as a training plugin, and as an object usable outside the loop."""

from clkernel_lwf.lwf import LearningWithoutForgetting, LwF, distillation_loss

__all__ = ["LearningWithoutForgetting", "LwF", "distillation_loss"]
