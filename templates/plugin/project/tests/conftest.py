"""Test settings: one intra-op thread (the tests' models are small: more threads only add overhead)."""

import torch

torch.set_num_threads(1)
