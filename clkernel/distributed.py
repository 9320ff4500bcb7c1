"""Runs on several processes with ``torch.distributed`` (DDP, launched by ``torchrun``): what plugins need.

The loop does the distributed work itself: it wraps the model in ``DistributedDataParallel`` for training,
gives each rank its shard of every training experience (``torch.utils.data.DistributedSampler``'s order and
padding) and of every evaluation experience (every ``world_size``-th sample, no padding), and fires the rank-0
events on rank 0 only. ``state.experience`` and ``state.dataset`` are the whole data on every rank; only the
minibatches are a rank's own. A plugin that computes over the whole experience (an importance, a buffer) either
computes the same thing on every rank from the same seed, or computes over :func:`shard_indices` and sums with
:func:`all_reduce_sum`. A plugin that cannot run on several processes sets the class attribute
``supports_distributed = False``: composing it in a distributed run raises a
:class:`~clkernel.dispatch.CompositionError` naming it.

Every function works in one process, where it does nothing (a reduction returns its input).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch

__all__ = ["all_reduce_sum", "barrier", "broadcast_object", "init_from_environment", "is_distributed", "rank",
           "shard_indices", "world_size"]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised (one process in it included: the loop then
    trains through DDP and reduces over the group, which is how a single GPU runs the NCCL path)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank in the initialised process group; 0 without one."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the initialised process group; 1 without one."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def shard_indices(n: int) -> torch.Tensor:
    """This rank's share of ``n`` samples for a computation that is then summed over ranks: every
    ``world_size``-th index from ``rank``, no padding, so the shards partition ``range(n)`` exactly.

    :returns: int64 tensor ``(ceil((n - rank) / world_size),)``; ``arange(n)`` in one process.
    """
    return torch.arange(rank(), n, world_size())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every rank, in place, and return it (unchanged in one process). Every rank must call
    it, in the same order, with a tensor of the same shape and dtype. A CPU tensor under the NCCL backend goes
    through the current CUDA device and comes back.

    :raises RuntimeError: from ``torch.distributed`` (a rank that failed, a timeout).
    """
    if not is_distributed():
        return tensor
    if torch.distributed.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.all_reduce(on_device)
        tensor.copy_(on_device)
    else:
        torch.distributed.all_reduce(tensor)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (pickled; for small objects: a path, a run name, options).
    Returns ``obj`` in one process."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if is_distributed():
        torch.distributed.barrier()


def init_from_environment(timeout_s: float = 300.0, *, cuda: bool | None = None) -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``): the NCCL backend for a run on GPUs (each process on GPU ``LOCAL_RANK``),
    else gloo. Does nothing when ``WORLD_SIZE`` is unset or 1, or a group is already initialised.

    :param timeout_s: how long a collective waits for a rank that does not come (seconds): a rank that failed
        ends the others with an error after at most this long, never a hang.
    :param cuda: whether the run trains on GPUs (default: when CUDA is available); False joins with gloo, for a
        run on the CPUs of a machine that has GPUs.
    :returns: True when this call initialised the group (the caller destroys it at the end).
    :raises RuntimeError: from ``torch.distributed`` when the rendezvous fails.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return False
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return True
