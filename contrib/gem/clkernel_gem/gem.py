"""Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017, "Gradient Episodic Memory for Continual Learning",
NeurIPS): the training plugin :class:`GEM` and the projection :func:`gem_project`, usable on its own.

GEM keeps an episodic memory ``M_k`` of a few samples of every past experience ``k``. Before each update it computes
the gradient ``g_k`` of the loss on each memory and, when the minibatch gradient ``g`` would increase one of those
losses (``<g, g_k> < 0`` for some ``k``), replaces ``g`` by the closest vector ``g~`` with ``<g~, g_k> >= 0`` for
every ``k``. That primal problem, ``min ||g~ - g||^2 / 2 s.t. G g~ >= 0`` with ``G = [g_1; ...; g_t]``, is solved
through its dual (section 3 of the paper), a quadratic program in ``t`` variables only::

    min_v  v^T (G G^T) v / 2 + (G g)^T v    s.t.  v >= memory_strength        then  g~ = G^T v + g

``memory_strength`` (the paper's margin gamma, 0.5 in the authors' experiments) biases the projection towards
updates that also lower the memories' losses; with 0 it is the exact Euclidean projection. The dual is solved by
``quadprog`` (Goldfarb & Idnani's dual active-set method), with ``eps`` added to the diagonal of ``G G^T`` as in the
authors' code so that the matrix is strictly positive definite.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import quadprog
import torch

import clkernel
from clkernel import TrainState
from clkernel.validate import non_negative_number, positive_int
from clkernel_replay import ReservoirSamplingBuffer

__all__ = ["GEM", "gem_project"]


def gem_project(gradient: torch.Tensor, memory_gradients: torch.Tensor, *, memory_strength: float = 0.0,
                eps: float = 1e-3) -> torch.Tensor:
    """GEM's projection of ``gradient`` onto the cone of directions that increase no memory's loss.

    :param gradient: ``g``, shape ``(n,)``, any floating dtype, any device.
    :param memory_gradients: ``G``, shape ``(t, n)``: one gradient per past experience's memory, same dtype and
        device as ``gradient``.
    :param memory_strength: the margin gamma >= 0 of the dual constraint ``v >= gamma`` (0: exact projection).
    :param eps: >= 0, added to the diagonal of ``G G^T`` (``1e-3`` in the authors' code); 0 solves the exact
        problem but then the rows of ``G`` must be linearly independent.
    :returns: ``gradient`` itself when ``G g >= 0`` already holds (no constraint violated: nothing to do, whatever
        ``memory_strength``), else a new tensor ``g~ = G^T v* + g`` of the same shape, dtype and device, where
        ``v*`` solves the dual quadratic program of the module docstring (in float64).
    :raises ValueError: for shapes that do not match, a negative ``memory_strength`` or ``eps``, or (``eps=0``)
        linearly dependent memory gradients, which quadprog cannot solve.
    """
    memory_strength = non_negative_number(memory_strength, "memory_strength", "gem_project")
    eps = non_negative_number(eps, "eps", "gem_project")
    if gradient.dim() != 1 or memory_gradients.dim() != 2 or memory_gradients.shape[1] != gradient.shape[0]:
        raise ValueError(f"gem_project: expected gradient (n,) and memory_gradients (t, n), got "
                         f"{tuple(gradient.shape)} and {tuple(memory_gradients.shape)}")
    if len(memory_gradients) == 0 or not bool((memory_gradients @ gradient < 0).any()):
        return gradient
    mem = memory_gradients.double()
    gram = (mem @ mem.T).cpu().numpy()
    gram = 0.5 * (gram + gram.T) + eps * np.eye(len(gram))
    linear = (mem @ gradient.double()).cpu().numpy()
    t = len(gram)
    try:
        # quadprog: min x^T P x / 2 - a^T x  s.t.  C^T x >= b; here P = G G^T, a = -G g, C = I, b = gamma
        v = quadprog.solve_qp(gram, -linear, np.eye(t), np.full(t, memory_strength))[0]
    except ValueError as e:
        raise ValueError(f"gem_project: quadprog could not solve the dual ({e}); with eps=0 the memory gradients "
                         f"must be linearly independent, give eps > 0") from e
    v_star = torch.from_numpy(v).to(device=mem.device)
    return (mem.T @ v_star + gradient.double()).to(gradient.dtype)


class GEM:
    """Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017) as a training plugin.

    - Memory: after each training experience, ``patterns_per_experience`` samples of it, drawn uniformly without
      replacement by a :class:`clkernel_replay.ReservoirSamplingBuffer` of that size (one buffer per experience,
      keyed by the experience's index; training an experience again draws its memory anew). Memory samples are
      read through the dataset's evaluation view (no augmentation), once per experience, and kept on
      ``state.device``.
    - Constraint gradients: at :func:`~clkernel.hookspecs.TrainingEvents.before_update`, one forward and backward
      pass per memory, with ``state.criterion`` and the model as it is (train mode; task labels routed by
      :func:`clkernel.model_forward`), through ``torch.autograd.grad``, so the parameters' ``.grad`` are not
      touched.
    - Projection: ``g`` is the concatenation of the ``.grad`` of every parameter that requires a gradient (a
      missing ``.grad`` counts as zeros). When ``<g, g_k> < 0`` for some memory ``k``, every such parameter's
      ``.grad`` is replaced by its part of :func:`gem_project`'s ``g~`` (a parameter without ``.grad`` gets one
      only when some memory's loss depends on it); otherwise the gradients are left exactly as they are.

    Per iteration it costs one forward and backward pass per stored experience, plus a ``t x t`` quadratic program
    (``t`` experiences) when a constraint is violated, and one host synchronisation (the violation test).

    :param patterns_per_experience: memory samples kept per experience (256 in the paper's MNIST experiments).
    :param memory_strength: the margin gamma >= 0 (0.5 in the authors' experiments; 0: exact projection).
    :param eps: >= 0, the ridge added to the diagonal of ``G G^T`` (authors' code: 1e-3).
    :param seed: seeds the memory sampling (default: drawn from torch's global generator).
    :raises ValueError: for a ``patterns_per_experience`` that is not a positive integer, or a negative
        ``memory_strength`` or ``eps``.

    Attributes read by users: :attr:`memory` (experience index -> its memory as a
    :class:`~clkernel.CLDataset`) and :attr:`projections` (iterations projected in the current / last experience).
    """

    name = "gem"

    def __init__(self, patterns_per_experience: int = 256, memory_strength: float = 0.5, eps: float = 1e-3,
                 seed: int | None = None) -> None:
        self.patterns_per_experience = positive_int(patterns_per_experience, "patterns_per_experience", self.name)
        self.memory_strength = non_negative_number(memory_strength, "memory_strength", self.name)
        self.eps = non_negative_number(eps, "eps", self.name)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator().manual_seed(int(seed))
        self._policies: dict[int, ReservoirSamplingBuffer] = {}
        # The memories on the device, by index; None after load_state_dict until the next minibatch or
        # experience (a checkpoint taken inside an experience fires no before_training_exp again).
        self._tensors: list[tuple[Any, torch.Tensor, torch.Tensor]] | None = []
        self.projections = 0

    # ------------------------------------------------------------------ reading

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
        self._load_memories(state)

    def _load_memories(self, state: TrainState) -> None:
        self._restore(state)
        self._tensors = []
        for policy in self._policies.values():
            data = policy.buffer.eval()  # type: ignore[union-attr]
            x, y, t = data.get_batch(torch.arange(len(data)))
            self._tensors.append((x.to(state.device), y.to(state.device), t.to(state.device)))

    @clkernel.hookimpl
    def before_update(self, state: TrainState) -> None:
        if self._tensors is None:  # loaded from a checkpoint taken inside this experience
            self._load_memories(state)
        if not self._tensors:
            return
        model = state.model
        params = [p for p in model.parameters() if p.requires_grad]
        rows, used = [], [p.grad is not None for p in params]
        for x, y, t in self._tensors:
            loss = state.criterion(clkernel.model_forward(model, x, t), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(_flatten(grads, params))
            used = [u or g is not None for u, g in zip(used, grads)]
        g = _flatten([p.grad for p in params], params)
        projected = gem_project(g, torch.stack(rows), memory_strength=self.memory_strength, eps=self.eps)
        if projected is g:
            return
        self.projections += 1
        offset = 0
        with torch.no_grad():
            for p, u in zip(params, used):
                n = p.numel()
                if u:
                    part = projected[offset:offset + n].view_as(p)
                    if p.grad is None:
                        p.grad = part.clone()
                    else:
                        p.grad.copy_(part)
                offset += n

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        experience = state.experience
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        policy = ReservoirSamplingBuffer(self.patterns_per_experience, seed=seed)
        policy.update(experience)  # type: ignore[arg-type]
        self._policies.pop(experience.index, None)  # type: ignore[union-attr]
        self._policies[experience.index] = policy  # type: ignore[union-attr]
        self._tensors = []

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and lists: the stored experiences' indices, each memory's storage-policy state (which
        samples of which experience, no data), the sampling generator's state and :attr:`projections`."""
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
            policy = ReservoirSamplingBuffer(self.patterns_per_experience, seed=0)
            policy.load_state_dict(policy_state)
            self._policies[int(index)] = policy
        self.generator.set_state(state["generator"])
        self.projections = int(state.get("projections", 0))  # absent from checkpoints written before it was kept
        self._tensors = None

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
        return (f"GEM(patterns_per_experience={self.patterns_per_experience}, memory_strength="
                f"{self.memory_strength}, eps={self.eps}, experiences={list(self._policies)})")


def _flatten(grads: Any, params: list[torch.Tensor]) -> torch.Tensor:
    """One vector of the gradients of ``params`` in order; None counts as zeros."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
