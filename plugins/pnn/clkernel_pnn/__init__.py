"""clkernel-pnn: Progressive Neural Networks (Rusu et al., 2016) for task-incremental learning."""

from clkernel_pnn.pnn import ADAPTERS, PNN, LinearAdapter, MLPAdapter, PNNColumn, PNNLayer

__all__ = ["ADAPTERS", "LinearAdapter", "MLPAdapter", "PNN", "PNNColumn", "PNNLayer"]
