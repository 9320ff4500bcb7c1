"""Repeated Augmented Rehearsal (Zhang, Pfahringer, Frank, Bifet, Lim and Jia, 2022, "A simple but strong baseline
for online continual learning: Repeated Augmented Rehearsal", NeurIPS).

Online rehearsal underfits the incoming data (one pass) and overfits the small buffer. RAR trains each incoming
minibatch, together with buffer samples, for several optimizer steps (repeated rehearsal), and augments the
combined minibatch anew at each step so that the repeated steps do not overfit the buffer (augmented rehearsal).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F

import clkernel
from clkernel import TrainState
from clkernel.validate import non_negative_int, positive_int
from clkernel_replay import Replay, StoragePolicy

__all__ = ["RAR", "RepeatedLoader", "random_shift", "shift_images"]


def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by its own offset, filling the border with the edge pixels.

    :param x: float ``(B, C, H, W)``.
    :param dy, dx: int64 ``(B,)`` in ``0..2*max_shift``: the crop's corner in the image padded by ``max_shift``
        on every side; ``max_shift`` leaves an image as it is, ``0`` moves it ``max_shift`` pixels down (right).
    :returns: float ``(B, C, H, W)``: ``out[b, c, i, j] = x[b, c, clamp(i + dy - max_shift), clamp(j + dx -
        max_shift)]``.
    """
    if max_shift == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = dy.to(x.device), dx.to(x.device)
    rows = (dy.unsqueeze(1) + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx.unsqueeze(1) + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, flip: bool = False, *,
                 rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """A random translation of each image by up to ``max_shift`` pixels in each direction (edge-filled), and with
    ``flip`` a horizontal flip with probability 1/2; each image draws its own (from ``generator``, on the CPU).

    On several processes each rank holds every ``world_size``-th image of the global minibatch: the draws are made
    for all ``world_size x B`` images and image ``i`` of rank ``rank`` takes draw ``i * world_size + rank``, so
    the ranks' images draw independently, ``generator`` stays in step on every rank, and the global minibatch is
    augmented as in one process.

    :param x: float ``(B, C, H, W)``.
    :param rank: this process's rank; ``world_size``: the number of processes.
    :raises ValueError: when ``x`` is not a 4-d batch of images.
    """
    if x.dim() != 4:
        raise ValueError(f"random_shift augments images of shape (B, C, H, W), got a minibatch of shape "
                         f"{tuple(x.shape)}; use max_shift=0 (and flip=False) for other inputs")
    n, mine = x.shape[0] * world_size, slice(rank, None, world_size)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)[mine]
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)[mine]
    out = shift_images(x, dy, dx, max_shift)
    if flip:
        flipped = (torch.rand(n, generator=generator)[mine] < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(flipped, out.flip(-1), out)
    return out


class RepeatedLoader:
    """Yields every minibatch of ``loader`` ``repeats`` times in a row (each pass of it is one epoch)."""

    def __init__(self, loader: Iterable[Any], repeats: int) -> None:
        self.loader, self.repeats = loader, repeats

    def __iter__(self) -> Iterator[Any]:
        for mb in self.loader:
            for _ in range(self.repeats):
                yield mb

    def __len__(self) -> int:
        return len(self.loader) * self.repeats  # type: ignore[arg-type]


class RAR(Replay):
    """Repeated Augmented Rehearsal (Zhang et al., 2022) on top of experience replay (ER-RAR).

    Each incoming minibatch is trained ``repeats`` times in a row (the loop's loader is wrapped in
    :class:`RepeatedLoader` at the first epoch of each experience, so every repetition is a full iteration of the
    loop: every plugin's events, loss terms and metrics). At each repetition the replay part
    (:class:`clkernel_replay.Replay`) appends ``batch_size_mem`` fresh buffer samples, and in ``before_forward`` the
    whole minibatch, incoming and replayed samples alike (the paper's ``aug_target both``), is augmented anew by
    :func:`random_shift`. The buffer is updated after each experience, as Replay does.

    The paper augments with RandAugment (one operation of magnitude 14); this plugin uses random translations (and
    optional horizontal flips), batched on the tensors, which suit digit images. Its reinforcement-learning
    schedule of ``repeats`` and the augmentation strength is not implemented: both are fixed.

    On several processes (``torchrun``) every rank repeats its share of each minibatch ``repeats`` times, replays
    its share of the global replay minibatch (Replay's), and augments its images with its share of the global
    minibatch's draws (:func:`random_shift`): the ranks draw independently and the generators stay in step.

    :param mem_size: buffer size in samples.
    :param repeats: optimizer steps per incoming minibatch (1: plain ER with augmentation).
    :param max_shift: largest translation in pixels (0: none).
    :param flip: also flip images horizontally with probability 1/2 (not for digits).
    :param batch_size_mem: buffer samples per step (default: the strategy's ``train_mb_size``).
    :param storage_policy: a policy name (``reservoir``, the paper's, by default) or a StoragePolicy.
    :param seed: seeds the buffer, its draws and the augmentations.
    :raises ValueError: for a ``repeats`` that is not a positive integer, a negative ``max_shift``, or the errors
        of Replay's options; in ``before_forward``, for inputs that are not images while augmenting.
    """

    name = "rar"

    def __init__(self, mem_size: int = 200, repeats: int = 10, max_shift: int = 2, flip: bool = False,
                 batch_size_mem: int | None = None, storage_policy: str | StoragePolicy = "reservoir",
                 seed: int | None = None) -> None:
        self.repeats = positive_int(repeats, "repeats", self.name)
        self.max_shift = non_negative_int(max_shift, "max_shift", self.name)
        self.flip = bool(flip)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        super().__init__(mem_size=mem_size, batch_size_mem=batch_size_mem, storage_policy=storage_policy, seed=seed)
        self.augment_generator = torch.Generator().manual_seed(seed + 2)

    @clkernel.hookimpl
    def before_train_dataset_adaptation(self, state: TrainState) -> None:
        if state.resuming and self.repeats > 1:
            warnings.warn(
                f"{self.name}: resuming inside an experience with repeats={self.repeats}: the epoch in progress "
                f"goes on without repetition and from the wrong minibatch (the kernel fires no event before it "
                f"that could wrap its loader in a RepeatedLoader again), so this run will differ from an "
                f"uninterrupted one; resume from a checkpoint taken at the end of an experience for identical "
                f"results", RuntimeWarning, stacklevel=2)

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if self.repeats > 1 and not isinstance(state.dataloader, RepeatedLoader):
            state.dataloader = RepeatedLoader(state.dataloader, self.repeats)  # type: ignore[arg-type]

    @clkernel.hookimpl
    def before_forward(self, state: TrainState) -> None:
        if self.max_shift == 0 and not self.flip:
            return
        x, y, t = state.mb  # type: ignore[misc]
        state.mb = (random_shift(x, self.max_shift, self.augment_generator, self.flip, rank=state.rank,
                                 world_size=state.world_size), y, t)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "augment_generator": self.augment_generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the buffer is rebuilt from the stream at the next training experience (or, for a
        checkpoint taken inside one, at the next minibatch). With ``repeats > 1`` only a checkpoint taken at the end
        of an experience resumes identically: inside one, the epoch in progress is not repeated (a warning
        says so)."""
        super().load_state_dict(state)
        self.augment_generator.set_state(state["augment_generator"])
