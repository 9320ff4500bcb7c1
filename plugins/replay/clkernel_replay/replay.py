"""The replay training plugin: every training minibatch gets ``batch_size_mem`` samples of a replay buffer."""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any, Iterator, Mapping

import torch

import clkernel
from clkernel import CLDataset, TrainState, distributed
from clkernel.validate import positive_int
from clkernel_replay.buffers import StoragePolicy, make_policy
from clkernel_replay.selection import resolve_seed

__all__ = ["BufferSampler", "Replay", "check_same_on_every_rank", "restore_from_stream"]


class BufferSampler:
    """Draws minibatches from a buffer, cycling through shuffled passes so every sample comes back equally often.

    With ``task_balanced``, each task label present in the buffer gets its own cycle and an equal part of every
    minibatch (the first tasks get the remainder). Draws use the batched path of the dataset.

    On several processes, ``batch_size`` is per rank: each :meth:`draw` takes the *global* replay minibatch,
    ``batch_size x world_size`` indices, from ``generator`` (the same on every rank when ranks are seeded alike,
    so every rank draws the same indices and the sampler's state is the same everywhere), and reads only this
    rank's share, every ``world_size``-th index from ``rank``. The ranks' shares partition the global minibatch,
    which is what one process with ``batch_size x world_size`` draws. With ``task_balanced`` the global minibatch
    is balanced over tasks, and each rank's share to within one sample per task.

    A buffer read from files by workers (:func:`clkernel.data.set_batch_reader_options`) is read ahead
    (:meth:`clkernel.CLDataset.get_batches`): the next draws are made, and their samples read, while the model
    trains on this one. :meth:`state` and :meth:`close` then give and restore the state after the last minibatch
    :meth:`draw` returned, so that checkpoints, and the draws after an experience, are those of a sampler that
    never read ahead: the minibatches do not depend on the number of workers.

    :param buffer: the samples to draw from (a non-empty CLDataset).
    :param batch_size: samples per :meth:`draw` (on this rank).
    :param generator: the shuffles' generator (default: torch's global one).
    :param rank: this process's rank (default: :func:`clkernel.distributed.rank`).
    :param world_size: the number of processes (default: :func:`clkernel.distributed.world_size`).
    :raises ValueError: for a ``batch_size`` or ``world_size`` that is not a positive integer, or a ``rank``
        outside ``0 .. world_size - 1``.
    """

    def __init__(self, buffer: CLDataset, batch_size: int, *, task_balanced: bool = False,
                 generator: torch.Generator | None = None, rank: int | None = None,
                 world_size: int | None = None) -> None:
        positive_int(batch_size, "batch_size", "BufferSampler")
        world_size = positive_int(distributed.world_size() if world_size is None else world_size, "world_size",
                                  "BufferSampler")
        rank = distributed.rank() if rank is None else rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"BufferSampler: rank must be an integer in 0..{world_size - 1}, got {rank!r}")
        self.buffer, self.generator, self.rank, self.world_size = buffer, generator, rank, world_size
        if task_balanced:
            tasks = buffer.task_labels
            pools = [(tasks == t).nonzero().flatten() for t in tasks.unique().tolist()]
        else:
            pools = [torch.arange(len(buffer))]
        base, extra = divmod(batch_size * world_size, len(pools))
        self._pools = [(pool, base + (i < extra)) for i, pool in enumerate(pools) if base + (i < extra) > 0]
        #: Per pool, the indices still to draw from its current shuffled pass (set it before the first draw to
        #: resume; :meth:`state` gives it for a checkpoint); the same on every rank.
        self.orders = [torch.zeros(0, dtype=torch.long) for _ in self._pools]
        self._stream: Iterator[tuple[Any, torch.Tensor, torch.Tensor]] | None = None
        self._ahead: deque[tuple[list[torch.Tensor], torch.Tensor | None]] = deque()  # state before each draw read

    def _take(self, i: int, n: int) -> torch.Tensor:
        pool, order = self._pools[i][0], self.orders[i]
        while len(order) < n:
            order = torch.cat([order, pool[torch.randperm(len(pool), generator=self.generator)]])
        self.orders[i] = order[n:]
        return order[:n]

    def draw_indices(self) -> torch.Tensor:
        """The next global replay minibatch: int64 ``(batch_size x world_size,)`` positions in the buffer, the
        same on every rank; this rank's share is ``[rank::world_size]``. Advances the sampler."""
        return torch.cat([self._take(i, n) for i, (_, n) in enumerate(self._pools)])

    def draw(self) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """This rank's part of the next replay minibatch, ``(x, y, t)`` of ``batch_size`` buffer samples: inputs
        ``(batch_size, *input_shape)``, int64 targets and task labels ``(batch_size,)``, on the CPU (or wherever
        the buffer's data lives). Only these samples are read."""
        if self._stream is None:
            self._stream = self.buffer.get_batches(self._draws())
        batch = next(self._stream)
        self._ahead.popleft()
        return batch

    def _draws(self) -> Iterator[torch.Tensor]:
        while True:
            self._ahead.append(self._now())
            yield self.draw_indices()[self.rank::self.world_size]

    def _now(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        return list(self.orders), None if self.generator is None else self.generator.get_state()

    def state(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``(orders, generator state)`` after the last minibatch :meth:`draw` returned, whatever was read
        ahead since (the generator state is None when the sampler draws from torch's global generator)."""
        return self._ahead[0] if self._ahead else self._now()

    def close(self) -> None:
        """Stop reading ahead (its workers stop) and set :attr:`orders` and the generator back to
        :meth:`state`, so the draws read ahead come again. With torch's global generator, which others draw
        from too, the draws read ahead are skipped instead."""
        orders, generator = self.state()
        self.orders = orders
        if generator is not None:
            self.generator.set_state(generator)  # type: ignore[union-attr]
        self._stream = None
        self._ahead.clear()


def restore_from_stream(policy: StoragePolicy, state: TrainState, who: str) -> None:
    """Give a buffer loaded from a checkpoint its data back, from the experiences of the stream of the experience
    being trained; does nothing unless ``policy.needs_restore``.

    :param who: the plugin's name, for the error message.
    :raises RuntimeError: when the buffer needs its data and the experience belongs to no stream.
    """
    if not policy.needs_restore:
        return
    stream = state.experience.stream if state.experience is not None else None
    if stream is None:
        raise RuntimeError(f"{who}: the buffer was loaded from a checkpoint and is rebuilt from the stream of the "
                           f"experience being trained, but that experience belongs to no stream")
    policy.restore({exp.index: exp.dataset for exp in stream})


def check_same_on_every_rank(who: str, *tensors: torch.Tensor) -> None:
    """Check that ``tensors`` (a buffer's slots, a generator's state) are the same on every rank of a distributed
    run; nothing in one process. Every rank must call it, at the same point (it is a collective): a checksum of
    the tensors' bytes and its square are summed over ranks, so that every rank sees a difference.

    :param who: the plugin's name, for the error message.
    :raises RuntimeError: on every rank, when some rank's tensors differ from another's (ranks not seeded alike,
        or given different data).
    """
    if not distributed.is_distributed():
        return
    crc = 0
    for tensor in tensors:
        crc = zlib.crc32(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes(), crc)
    crc %= 2**20  # its square, summed over ranks, fits in int64
    sums = distributed.all_reduce_sum(torch.tensor([crc, crc * crc], dtype=torch.long))
    n = distributed.world_size()
    if sums.tolist() != [n * crc, n * crc * crc]:
        raise RuntimeError(f"{who}: the buffer or its generator differs between ranks (rank {distributed.rank()} "
                           f"of {n}); seed every rank alike (the same torch.manual_seed before building the "
                           f"plugins, or seed=) and give every rank the same data")


class Replay:
    """Experience replay (as in Chaudhry et al., 2019, "On Tiny Episodic Memories in Continual Learning"): each
    training minibatch is the current data plus ``batch_size_mem`` buffer samples; the buffer is updated with the
    experience's data after each experience.

    Buffer samples are concatenated to the minibatch along dimension 0, so their inputs must be tensors of the
    same sample shape and dtype as the current data (a TypeError or ValueError says otherwise).

    :param mem_size: the buffer's size in samples.
    :param batch_size_mem: buffer samples added to each minibatch (default: the strategy's ``train_mb_size``).
    :param task_balanced: split those samples evenly over the task labels present in the buffer.
    :param storage_policy: a :class:`~clkernel_replay.StoragePolicy`, or the name of one (see
        :data:`~clkernel_replay.buffers.POLICIES`); default ``"experience_balanced"``. A policy object must
        have ``max_size == mem_size``.
    :param seed: seeds the buffer's sampling (default: drawn from torch's global generator).
    :raises ValueError: for a ``mem_size`` or ``batch_size_mem`` that is not a positive integer, or a policy
        whose ``max_size`` differs from ``mem_size``.
    :raises TypeError: for a ``storage_policy`` that is neither a name nor a StoragePolicy.
    """

    name = "replay"

    def __init__(self, mem_size: int = 200, batch_size_mem: int | None = None, task_balanced: bool = False,
                 storage_policy: str | StoragePolicy = "experience_balanced", seed: int | None = None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        if batch_size_mem is not None:
            positive_int(batch_size_mem, "batch_size_mem", self.name)
        if isinstance(storage_policy, str):
            storage_policy = make_policy(storage_policy, mem_size, seed)
        elif not isinstance(storage_policy, StoragePolicy):
            raise TypeError(f"{self.name}: storage_policy must be a policy name or a StoragePolicy, got "
                            f"{type(storage_policy).__name__}")
        elif storage_policy.max_size != mem_size:
            raise ValueError(f"{self.name}: mem_size={mem_size} but storage_policy.max_size="
                             f"{storage_policy.max_size}; give the same size to both")
        self.mem_size, self.batch_size_mem, self.task_balanced = mem_size, batch_size_mem, task_balanced
        self.storage_policy = storage_policy
        self.generator = torch.Generator().manual_seed(resolve_seed(seed))
        self._sampler: BufferSampler | None = None
        self._orders: list[torch.Tensor] | None = None  # a loaded sampler's draw orders, applied at the next draw
        self._checked = False

    @property
    def buffer(self) -> CLDataset | None:
        """The current buffer (None before the first experience ends)."""
        return self.storage_policy.buffer

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._orders = None
        self._build_sampler(state)

    def _build_sampler(self, state: TrainState) -> None:
        restore_from_stream(self.storage_policy, state, self.name)
        buffer = self.storage_policy.buffer
        self._sampler = None if buffer is None else BufferSampler(
            buffer.train(), self.batch_size_mem or state.train_mb_size, task_balanced=self.task_balanced,
            generator=self.generator, rank=state.rank, world_size=state.world_size)
        if self._sampler is not None and self._orders is not None:  # resumed inside an experience
            self._sampler.orders = list(self._orders)
        self._orders = None
        self._checked = False

    @clkernel.hookimpl
    def before_training_iteration(self, state: TrainState) -> None:
        if self._orders is not None:  # a checkpoint taken inside this experience: the sampler goes on
            self._build_sampler(state)
        if self._sampler is None:
            return
        x, y, t = state.mb  # type: ignore[misc]
        bx, by, bt = self._sampler.draw()
        if not self._checked:
            self._check(x, bx)
        device = state.device
        state.mb = (torch.cat([x, bx.to(device, non_blocking=True)]), torch.cat([y, by.to(device, non_blocking=True)]),
                    torch.cat([t, bt.to(device, non_blocking=True)]))

    def _check(self, x: Any, bx: Any) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(bx, torch.Tensor):
            raise TypeError(f"{self.name}: minibatch inputs must be tensors to be concatenated with buffer samples; "
                            f"got {type(x).__name__} and {type(bx).__name__}")
        if x.shape[1:] != bx.shape[1:] or x.dtype != bx.dtype:
            raise ValueError(f"{self.name}: buffer samples have shape {tuple(bx.shape[1:])} and dtype {bx.dtype}, "
                             f"but the current minibatch has {tuple(x.shape[1:])} and {x.dtype}")
        self._checked = True

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        if self._sampler is not None:
            self._sampler.close()  # the generator as if nothing had been read ahead
        self.storage_policy.update(state.experience, model=state.model)  # type: ignore[arg-type]
        self._sampler = self._orders = None
        policy = self.storage_policy.state_dict()
        check_same_on_every_rank(self.name, policy["origin"], policy["generator"], self.generator.get_state())

    def state_dict(self) -> dict[str, Any]:
        """The storage policy's state, the sampling generator's, and, inside a training experience, what the
        buffer sampler has left of its current passes (``orders``: index tensors, else None)."""
        orders, generator = (self._orders, self.generator.get_state()) if self._sampler is None \
            else self._sampler.state()
        return {"storage_policy": self.storage_policy.state_dict(), "generator": generator,
                "orders": None if orders is None else [o.clone() for o in orders]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the buffer is rebuilt from the stream at the next training experience or, for a
        checkpoint taken inside one, at the next minibatch."""
        self.storage_policy.load_state_dict(state["storage_policy"])
        self.generator.set_state(state["generator"])
        orders = state.get("orders")  # absent from checkpoints taken before it was kept
        self._sampler, self._orders = None, None if orders is None else [o.clone() for o in orders]
