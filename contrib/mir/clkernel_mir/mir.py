"""Maximally Interfered Retrieval, ER-MIR (Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin and Tuytelaars, 2019,
"Online Continual Learning with Maximal Interfered Retrieval", NeurIPS).

Plain experience replay draws its buffer samples at random. MIR replays the ones the coming update would hurt most:
with the parameters ``theta`` and the gradient ``g`` of the loss on the incoming minibatch, it takes a *virtual*
SGD step ``theta' = theta - lr * g``, draws ``subsample`` candidates from the buffer and scores each by how much
its loss rises::

    s(x, y) = CE(f_theta'(x), y) - CE(f_theta(x), y)

The ``batch_size_mem`` candidates with the largest scores are trained on together with the incoming minibatch (the
real update follows the sum of both losses). The buffer is one of clkernel-replay's storage policies (reservoir
sampling by default, as in the paper), updated with each experience after it is trained; on an online stream of
mini-experiences (``clkernel_benchmarks.split_online_stream``) that is after every minibatch, as in the paper.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call

import clkernel
from clkernel import CLDataset, TrainState, distributed
from clkernel.validate import positive_int, positive_number
from clkernel_replay import StoragePolicy, make_policy

__all__ = ["MIR", "interference_scores", "virtual_parameters"]


def virtual_parameters(model: torch.nn.Module, loss: torch.Tensor, lr: float | Mapping[str, float], *,
                       retain_graph: bool = True) -> dict[str, torch.Tensor]:
    """The parameters after one virtual SGD step on ``loss``: ``theta' = theta - lr * d loss / d theta``.

    :param model: the module whose trainable parameters (``requires_grad``) the step moves.
    :param loss: a 0-d tensor computed from ``model`` (its graph is kept with ``retain_graph``, so the loop can
        still back-propagate it).
    :param lr: the step size, one for all, or per parameter name (``model.named_parameters()`` names; a name
        missing from the mapping is not moved).
    :returns: name -> detached tensor of the parameter's shape, for every trainable parameter; a parameter
        ``loss`` does not depend on keeps its value. The model itself is not changed.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=retain_graph, allow_unused=True)
    out = {}
    for (name, p), g in zip(named, grads):
        step = lr.get(name, 0.0) if isinstance(lr, Mapping) else lr
        out[name] = p.detach() if g is None or step == 0 else (p.detach() - step * g)
    return out


def _call(model: torch.nn.Module, params: Mapping[str, torch.Tensor] | None, x: Any, t: torch.Tensor) -> Any:
    args = (x, t) if getattr(model, "takes_task_labels", False) else (x,)
    return model(*args) if params is None else functional_call(model, dict(params), args)


@torch.no_grad()
def _mean_over_ranks(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor averaged over the ranks (one all-reduce). For the virtual parameters ``theta - lr * g_r``,
    identical ``theta`` on every rank, that is ``theta - lr * mean_r g_r``: the step of the global minibatch."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors.values()) else torch.float32
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors.values()])
    distributed.all_reduce_sum(flat).div_(distributed.world_size())
    out, start = {}, 0
    for name, t in tensors.items():
        out[name] = flat[start:start + t.numel()].view(t.shape).to(t.dtype)
        start += t.numel()
    return out


@torch.no_grad()
def interference_scores(model: torch.nn.Module, virtual: Mapping[str, torch.Tensor], x: Any, y: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
    """MIR's criterion: how much each sample's cross-entropy rises from the current to the virtual parameters.

    :param model: the model at its current parameters ``theta``; it runs in eval mode (no dropout, batch-norm
        statistics read, not updated), and each module gets its own mode back.
    :param virtual: ``theta'``, name -> tensor (:func:`virtual_parameters`); parameters not named keep theirs.
    :param x: inputs ``(n, *input_shape)``; ``y``: int64 targets ``(n,)``; ``t``: int64 task labels ``(n,)``
        (given to a model with ``takes_task_labels``).
    :returns: float ``(n,)``, ``CE(f_theta'(x_i), y_i) - CE(f_theta(x_i), y_i)``: larger is more interfered.
    """
    with clkernel.eval_mode(model):
        before = F.cross_entropy(_call(model, None, x, t), y, reduction="none")
        after = F.cross_entropy(_call(model, virtual, x, t), y, reduction="none")
    return after - before


class MIR:
    """ER-MIR (Aljundi et al., 2019) as a training plugin: replay the buffer samples most interfered by the update.

    From the second experience on, ``loss_terms`` does, on every training iteration:

    1. draw ``subsample`` candidates from the buffer (uniformly, without replacement);
    2. take the virtual step ``theta' = theta - lr * g`` with the gradient ``g`` of the loop's criterion on the
       minibatch being trained (:func:`virtual_parameters`; plain SGD, as the paper and Avalanche do, whatever
       the optimizer);
    3. score the candidates with :func:`interference_scores` and keep the ``batch_size_mem`` highest;
    4. return their cross-entropy under the current parameters, which the loop adds to the minibatch's loss.

    The buffer is updated with each experience after it is trained. :attr:`last_retrieved` gives the buffer
    positions retrieved at the last iteration.

    On several processes (``torchrun``) the virtual parameters are averaged over the ranks (one all-reduce per
    iteration), which makes ``g`` the gradient of the global minibatch; every rank then draws, scores and replays
    the same ``batch_size_mem`` candidates, and DDP's average of the gradients is one process's update on the
    global minibatch plus those candidates.

    :param mem_size: buffer size in samples.
    :param subsample: candidates drawn from the buffer per iteration (the paper's 50); all of the buffer when it
        holds fewer.
    :param batch_size_mem: candidates retrieved and replayed per iteration (default: the strategy's
        ``train_mb_size``, the paper's choice); at most ``subsample``.
    :param lr: the virtual step's learning rate (default: each parameter's optimizer group's ``lr``).
    :param storage_policy: a name understood by :func:`clkernel_replay.make_policy` (``reservoir``, the paper's,
        by default; ``class_balanced`` is Avalanche's), or a StoragePolicy with ``max_size == mem_size``.
    :param seed: seeds the policy and the candidate draws (default: drawn from torch's global generator).
    :raises ValueError: for a size that is not a positive integer, ``batch_size_mem > subsample``, a learning
        rate that is not positive, an unknown policy name, or a policy whose ``max_size`` differs from
        ``mem_size``.
    :raises TypeError: for a ``storage_policy`` that is neither a name nor a StoragePolicy.
    """

    name = "mir"

    def __init__(self, mem_size: int = 200, subsample: int = 50, batch_size_mem: int | None = None,
                 lr: float | None = None, storage_policy: str | StoragePolicy = "reservoir",
                 seed: int | None = None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        self.subsample = positive_int(subsample, "subsample", self.name)
        if batch_size_mem is not None:
            positive_int(batch_size_mem, "batch_size_mem", self.name)
            if batch_size_mem > subsample:
                raise ValueError(f"{self.name}: batch_size_mem={batch_size_mem} is more than subsample={subsample}: "
                                 f"it retrieves batch_size_mem of the subsample candidates")
        self.lr = None if lr is None else positive_number(lr, "lr", self.name)
        if isinstance(storage_policy, str):
            try:
                storage_policy = make_policy(storage_policy, mem_size, seed)
            except ValueError as e:
                raise ValueError(f"{self.name}: {e}") from None
        elif not isinstance(storage_policy, StoragePolicy):
            raise TypeError(f"{self.name}: storage_policy must be a policy name or a StoragePolicy, got "
                            f"{type(storage_policy).__name__}")
        elif storage_policy.max_size != mem_size:
            raise ValueError(f"{self.name}: mem_size={mem_size} but storage_policy.max_size="
                             f"{storage_policy.max_size}; give the same size to both")
        self.mem_size, self.batch_size_mem, self.storage_policy = mem_size, batch_size_mem, storage_policy
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator().manual_seed(seed + 1)  # not the policy's stream
        self._samples: CLDataset | None = None  # the buffer's train view while training an experience
        self._groups: list[tuple[str, dict[str, Any]]] | None = None  # (parameter name, its optimizer group)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (candidates, top among them)
        self._ready = False  # _samples and _groups are set up for the experience being trained

    @property
    def buffer(self) -> CLDataset | None:
        """The buffer's samples (None before the first experience ends)."""
        return self.storage_policy.buffer

    @property
    def last_retrieved(self) -> torch.Tensor | None:
        """int64 ``(k,)`` on the CPU: the buffer positions (rows of :attr:`buffer`) replayed at the last iteration,
        most interfered first; None before any retrieval."""
        if self._last is None:
            return None
        candidates, top = self._last
        return candidates[top.cpu()]

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        if distributed.is_distributed() and getattr(state.model, "takes_task_labels", False):
            raise ValueError(f"{self.name}: with a model that takes task labels (one head per task), the replayed "
                             f"samples run through old heads outside the loop's forward pass, which "
                             f"DistributedDataParallel cannot reduce (those heads are unused in its forward); run it "
                             f"in one process, without torchrun")
        self._prepare(state)

    def _prepare(self, state: TrainState) -> None:
        """Take the buffer's train view for the experience being trained, rebuilding the buffer from its stream
        first when it was loaded from a checkpoint."""
        policy = self.storage_policy
        if policy.needs_restore:
            stream = state.experience.stream if state.experience is not None else None
            if stream is None:
                raise RuntimeError(f"{self.name}: the buffer was loaded from a checkpoint and is rebuilt from the "
                                   f"stream of the experience being trained, but that experience has no stream")
            policy.restore({exp.index: exp.dataset for exp in stream})
        buffer = policy.buffer
        self._samples = None if buffer is None else buffer.train()
        self._groups = None  # the model may grow before the first iteration: map the groups then
        self._ready = True

    def _step_sizes(self, state: TrainState) -> float | dict[str, float]:
        if self.lr is not None:
            return self.lr
        if self._groups is None:
            group_of = {id(p): g for g in state.optimizer.param_groups for p in g["params"]}
            self._groups = [(n, group_of[id(p)]) for n, p in state.model.named_parameters() if id(p) in group_of]
        return {n: float(g["lr"]) for n, g in self._groups}  # read each time: a scheduler may change it

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if not self._ready:  # loaded from a checkpoint taken inside an experience: before_training_exp has fired
            self._prepare(state)
        if self._samples is None:
            return None
        model, device = state.model, state.device
        candidates = torch.randperm(len(self._samples), generator=self.generator)[:self.subsample]
        x, y, t = self._samples.get_batch(candidates)
        x, y, t = (x.to(device, non_blocking=True), y.to(device, non_blocking=True),
                   t.to(device, non_blocking=True))
        incoming = state.criterion(state.mb_output, state.mb_y)
        virtual = virtual_parameters(model, incoming, self._step_sizes(state))
        if distributed.is_distributed():  # the global minibatch's step: every rank scores and replays the same candidates
            virtual = _mean_over_ranks(virtual)
        scores = interference_scores(model, virtual, x, y, t)
        k = min(self.batch_size_mem or state.train_mb_size, len(candidates))
        top = torch.topk(scores, k).indices
        self._last = (candidates, top)
        out = clkernel.model_forward(model, x[top], t[top])
        return F.cross_entropy(out, y[top])

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self.storage_policy.update(state.experience, model=state.model)  # type: ignore[arg-type]
        self._samples, self._ready = None, False

    def state_dict(self) -> dict[str, Any]:
        return {"storage_policy": self.storage_policy.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the buffer's samples are rebuilt from the stream at the next training experience or,
        for a checkpoint taken inside one, at the next minibatch (the buffer then holds what it held when that
        experience began: it is updated only after an experience)."""
        self.storage_policy.load_state_dict(state["storage_policy"])
        self.generator.set_state(state["generator"])
        self._samples, self._last, self._groups, self._ready = None, None, None, False
