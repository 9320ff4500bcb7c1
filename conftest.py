"""Root pytest configuration for the kernel's and every plugin's tests.

One intra-op thread: the suite runs test after test on a 2-core machine, where a second OpenMP thread only
competes with the first (small tensor ops ran up to 100x slower with two threads under load).
"""

import torch

torch.set_num_threads(1)
