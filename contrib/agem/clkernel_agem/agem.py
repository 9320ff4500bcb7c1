"""Averaged Gradient Episodic Memory (Chaudhry, Ranzato, Rohrbach & Elhoseiny, 2019, "Efficient Lifelong Learning
with A-GEM", ICLR): the training plugin :class:`AGEM` and the projection :func:`agem_project`, usable on its own.

A-GEM replaces GEM's one constraint per past experience by a single one: the update must not increase the
*average* loss on the episodic memory, estimated on a random sample of it. With ``g`` the minibatch gradient and
``g_ref`` the gradient of the loss on that sample (the paper's update rule)::

    g~ = g - (g . g_ref / g_ref . g_ref) g_ref    if g . g_ref < 0,    else g~ = g

which is the closest vector to ``g`` with ``g~ . g_ref >= 0`` (the projection onto one half-space), so no
quadratic program is needed.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import positive_int
from clkernel_replay import ClassBalancedBuffer

__all__ = ["AGEM", "agem_project"]


def agem_project(gradient: torch.Tensor, reference_gradient: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection: ``g - (g . g_ref / g_ref . g_ref) g_ref`` when ``g . g_ref < 0``.

    :param gradient: ``g``, shape ``(n,)``, any floating dtype and device.
    :param reference_gradient: ``g_ref``, shape ``(n,)``, same dtype and device.
    :returns: ``gradient`` itself when ``g . g_ref >= 0`` (nothing violated; also when ``g_ref`` is zero), else a
        new tensor of the same shape, dtype and device, whose inner product with ``g_ref`` is 0.
    :raises ValueError: when the shapes are not both ``(n,)``.
    """
    if gradient.dim() != 1 or reference_gradient.shape != gradient.shape:
        raise ValueError(f"agem_project: expected gradient (n,) and reference_gradient (n,), got "
                         f"{tuple(gradient.shape)} and {tuple(reference_gradient.shape)}")
    dot = gradient @ reference_gradient
    if not bool(dot < 0):
        return gradient
    return gradient - (dot / (reference_gradient @ reference_gradient)) * reference_gradient


class AGEM:
    """Averaged Gradient Episodic Memory (Chaudhry et al., 2019) as a training plugin.

    - Memory: after each training experience, ``patterns_per_experience`` samples of it, split evenly over the
      classes it contains (the paper: 25 per class for MNIST's 10 classes, i.e. 250 per task), drawn uniformly
      without replacement within each class by a :class:`clkernel_replay.ClassBalancedBuffer` of that size (one
      buffer per experience, keyed by its index; training an experience again draws its memory anew). A class
      with fewer samples than its share keeps all of them. Samples are read through the dataset's evaluation view
      (no augmentation), once per experience, and kept on ``state.device``.
    - Reference gradient: at :func:`~clkernel.hookspecs.TrainingEvents.before_update`, ``sample_size`` samples
      drawn uniformly without replacement from all the memories together (all of them when there are fewer), one
      forward and backward pass with ``state.criterion`` and the model as it is (train mode; task labels routed by
      :func:`clkernel.model_forward`), through ``torch.autograd.grad``, so ``.grad`` is not touched.
    - Projection: ``g`` is the concatenation of the ``.grad`` of every parameter that requires a gradient (a
      missing ``.grad`` counts as zeros). When ``g . g_ref < 0``, each such parameter's ``.grad`` becomes its part
      of :func:`agem_project`'s result (a parameter without ``.grad`` gets one only when the memory loss depends on
      it); otherwise the gradients are left exactly as they are.

    :param patterns_per_experience: memory samples kept per experience (the paper's MNIST setting: 250).
    :param sample_size: memory samples per reference gradient (the paper: 256).
    :param seed: seeds the memory selection and the reference samples (default: drawn from torch's global
        generator).
    :raises ValueError: when ``patterns_per_experience`` or ``sample_size`` is not a positive integer.

    Attributes read by users: :attr:`memory` (experience index -> its memory as a :class:`~clkernel.CLDataset`)
    and :attr:`projections` (iterations projected in the current / last experience).
    """

    name = "agem"

    def __init__(self, patterns_per_experience: int = 250, sample_size: int = 256, seed: int | None = None) -> None:
        self.patterns_per_experience = positive_int(patterns_per_experience, "patterns_per_experience", self.name)
        self.sample_size = positive_int(sample_size, "sample_size", self.name)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator().manual_seed(int(seed))
        self._policies: dict[int, ClassBalancedBuffer] = {}
        self._memory: tuple[Any, torch.Tensor, torch.Tensor] | None = None  # every memory sample, on the device
        # True after load_state_dict until the memory is on the device again: a checkpoint taken inside an
        # experience fires no before_training_exp again, so the next before_update loads it.
        self._pending = False
        self.projections = 0

    @property
    def memory(self) -> dict[int, clkernel.CLDataset]:
        """Experience index -> the samples kept of it (a CLDataset view), in the order experiences were stored.

        :raises RuntimeError: after :meth:`load_state_dict`, until the next training experience gives the
            memories their data back (from its stream).
        """
        return {k: p.buffer for k, p in self._policies.items()}  # type: ignore[misc]

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self.projections = 0
        self._load_memory(state)

    def _load_memory(self, state: TrainState) -> None:
        self._restore(state)
        self._memory, self._pending = None, False
        if not self._policies:
            return
        parts = [p.buffer.eval() for p in self._policies.values()]  # type: ignore[union-attr]
        data = parts[0].concat(*parts[1:]) if len(parts) > 1 else parts[0]
        x, y, t = data.get_batch(torch.arange(len(data)))
        self._memory = (x.to(state.device), y.to(state.device), t.to(state.device))

    @clkernel.hookimpl
    def before_update(self, state: TrainState) -> None:
        if self._pending:  # loaded from a checkpoint taken inside this experience
            self._load_memory(state)
        if self._memory is None:
            return
        x, y, t = self._memory
        if len(y) > self.sample_size:
            idx = torch.randperm(len(y), generator=self.generator)[:self.sample_size].to(y.device)
            x, y, t = x[idx], y[idx], t[idx]
        model = state.model
        params = [p for p in model.parameters() if p.requires_grad]
        loss = state.criterion(clkernel.model_forward(model, x, t), y)
        ref = torch.autograd.grad(loss, params, allow_unused=True)
        g = _flatten([p.grad for p in params], params)
        projected = agem_project(g, _flatten(ref, params))
        if projected is g:
            return
        self.projections += 1
        offset = 0
        with torch.no_grad():
            for p, r in zip(params, ref):
                n = p.numel()
                if p.grad is not None:
                    p.grad.copy_(projected[offset:offset + n].view_as(p))
                elif r is not None:
                    p.grad = projected[offset:offset + n].view_as(p).clone()
                offset += n

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        experience = state.experience
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        policy = ClassBalancedBuffer(self.patterns_per_experience, seed=seed)
        policy.update(experience)  # type: ignore[arg-type]
        self._policies.pop(experience.index, None)  # type: ignore[union-attr]
        self._policies[experience.index] = policy  # type: ignore[union-attr]
        self._memory, self._pending = None, False

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and lists: the stored experiences' indices, each memory's storage-policy state (which
        samples of which experience, no data), the generator's state (memory selection and reference
        samples) and :attr:`projections`."""
        return {"experiences": list(self._policies),
                "policies": [p.state_dict() for p in self._policies.values()],
                "generator": self.generator.get_state(), "projections": self.projections}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned. The memories get their data back at the next training
        experience or, for a checkpoint taken inside one, at its next minibatch, from the datasets of its stream
        (same indices as when they were stored).

        :raises KeyError: at that experience, when the stream lacks an experience a memory comes from.
        """
        self._policies = {}
        for index, policy_state in zip(state["experiences"], state["policies"]):
            policy = ClassBalancedBuffer(self.patterns_per_experience, seed=0)
            policy.load_state_dict(policy_state)
            self._policies[int(index)] = policy
        self.generator.set_state(state["generator"])
        self.projections = int(state.get("projections", 0))  # absent from checkpoints written before it was kept
        self._memory, self._pending = None, True

    def _restore(self, state: TrainState) -> None:
        pending = [p for p in self._policies.values() if p.needs_restore]
        if not pending:
            return
        stream = state.experience.stream if state.experience is not None else None
        if stream is None:
            raise RuntimeError(f"{self.name}: the memories were loaded from a checkpoint and are rebuilt from the "
                               f"stream of the experience being trained, but that experience belongs to no stream")
        datasets = {exp.index: exp.dataset for exp in stream}
        for policy in pending:
            policy.restore(datasets)

    def __repr__(self) -> str:
        return (f"AGEM(patterns_per_experience={self.patterns_per_experience}, sample_size={self.sample_size}, "
                f"experiences={list(self._policies)})")


def _flatten(grads: Any, params: list[torch.Tensor]) -> torch.Tensor:
    """One vector of the gradients of ``params`` in order; None counts as zeros."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
