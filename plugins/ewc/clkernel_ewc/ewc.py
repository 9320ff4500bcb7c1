"""Elastic Weight Consolidation (Kirkpatrick et al., 2017), with Avalanche's ``EWCPlugin`` semantics.

After each experience the diagonal Fisher information ``F`` is estimated on that experience's training data as
the mean, over minibatches (in order, the strategy's minibatch size), of the squared gradients of the loss
(model in eval mode). The penalty added to the loss is ``ewc_lambda * sum_e sum_k F_e,k (theta_k - theta_e,k)^2``
over the past experiences ``e`` (``separate`` mode), or ``ewc_lambda * sum_k F_k (theta_k - theta_last,k)^2``
with ``F = decay_factor * F_old + F_new`` (``online`` mode). No 1/2 factor, as in Avalanche.

In separate mode the sum over experiences is kept folded: with ``A = sum_e F_e`` and
``mu = sum_e F_e theta_e / A``, ``sum_e F_e (theta - theta_e)^2 = A (theta - mu)^2 + c`` where the constant
``c = sum_e F_e (theta_e - mu)^2`` is computed once per experience. The penalty's value and gradient are the same
as the direct sum, and its cost per minibatch and its memory stay those of one experience however many pass.
The penalty is a :func:`quadratic_penalty`, whose gradient is formed with its value.

In a distributed run every rank computes the importances over its share of the experience's minibatches and the
sums are all-reduced (:func:`compute_importances`), so every rank holds the importances one process computes.
The minibatch size is the strategy's ``train_mb_size`` (per rank), as in one process.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

import clkernel
from clkernel import CLDataset, TrainState, distributed, iterate_minibatches, model_forward
from clkernel.validate import non_negative_number, positive_int, unit_interval

__all__ = ["EWC", "compute_importances", "ewc_penalty", "quadratic_penalty"]

Tensors = dict[str, torch.Tensor]


def compute_importances(model: torch.nn.Module, dataset: CLDataset, *,
                        criterion: Callable[..., torch.Tensor] | None = None, batch_size: int = 32,
                        device: torch.device | str | None = None, all_ranks: bool = True) -> Tensors:
    """The diagonal Fisher information of ``model``'s parameters on ``dataset``: the mean over minibatches (in
    dataset order) of the squared gradient of ``criterion`` (default cross-entropy), the model in eval mode.

    The model gets each minibatch's task labels when it takes them (:func:`clkernel.model_forward`). Parameters
    that get no gradient have zero importance. The model's gradients are cleared afterwards and its train/eval
    mode restored. A model wrapped in ``DistributedDataParallel`` is unwrapped (names without ``module.``).

    In a distributed run (:func:`clkernel.distributed.is_distributed`) with ``all_ranks`` (the default), every
    rank must call it with the same model and dataset: each rank takes its share of the minibatches
    (:func:`clkernel.distributed.shard_indices` over the minibatch count, so the minibatches are those of one
    process), the sums of squared gradients are added over ranks (:func:`clkernel.distributed.all_reduce_sum`)
    and divided by the total minibatch count, so that every rank returns what one process computes over the
    whole dataset (up to summation order). ``all_ranks=False`` computes over the whole dataset in this process
    alone, with no collective.

    :param batch_size: samples per minibatch (the mean is over minibatches, as in Avalanche).
    :param device: where minibatches go (default: where the parameters are).
    :returns: parameter name -> importance, a tensor of the parameter's shape, dtype and device, for every
        parameter that requires grad.
    :raises ValueError: for an empty dataset or a ``batch_size`` that is not a positive integer.
    """
    positive_int(batch_size, "batch_size", "compute_importances")
    if len(dataset) == 0:  # known alike on every rank: raised before any collective
        raise ValueError("compute_importances got an empty dataset")
    model = _unwrap(model)  # DDP's backward would average the gradients over ranks
    criterion = criterion or torch.nn.CrossEntropyLoss()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if device is None:
        device = next(iter(params.values())).device if params else torch.device("cpu")
    importances = {n: torch.zeros_like(p) for n, p in params.items()}
    batches = -(-len(dataset) // batch_size)
    shard = all_ranks and distributed.is_distributed()
    indices = None
    if shard:  # this rank's minibatches (every world_size-th), as sample indices in dataset order
        mine = distributed.shard_indices(batches)
        indices = (mine[:, None] * batch_size + torch.arange(batch_size)).flatten()
        indices = indices[indices < len(dataset)]  # only the last minibatch can be short; it comes last
    with clkernel.eval_mode(model):
        try:
            for x, y, t in iterate_minibatches(dataset, batch_size, shuffle=False, indices=indices):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                model.zero_grad(set_to_none=True)
                out = model_forward(model, x, t.to(device, non_blocking=True))
                criterion(out, y).backward()
                for n, p in params.items():
                    if p.grad is not None:
                        importances[n].addcmul_(p.grad, p.grad)  # += grad^2, in place
        finally:
            model.zero_grad(set_to_none=True)
    if shard:
        for imp in importances.values():  # the same names in the same order on every rank
            distributed.all_reduce_sum(imp)
    return {n: imp / batches for n, imp in importances.items()}


def ewc_penalty(model: torch.nn.Module, importances: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
                saved_params: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]], *,
                ewc_lambda: float = 1.0) -> torch.Tensor:
    """``ewc_lambda * sum_e sum_k F_e,k (theta_k - theta_e,k)^2``: the EWC penalty computed directly.

    ``importances`` and ``saved_params`` are one dict (one experience) or aligned sequences of dicts, name ->
    tensor. Parameters missing from a dict are not penalised; a parameter that grew since (a larger head) is
    penalised on the part it had then (the leading slice of each dimension).

    :returns: a scalar tensor on the parameters' device, differentiable with respect to them.
    :raises ValueError: when ``importances`` and ``saved_params`` have different lengths.
    """
    if isinstance(importances, Mapping):
        importances, saved_params = [importances], [saved_params]  # type: ignore[list-item]
    params = dict(model.named_parameters())
    total = torch.zeros((), device=next(iter(params.values())).device if params else None)
    for imp, old in zip(importances, saved_params, strict=True):  # type: ignore[arg-type]
        for name, f in imp.items():
            if name not in params:
                continue
            p = params[name][tuple(slice(0, s) for s in f.shape)]
            total = total + (f * (p - old[name]).pow(2)).sum()
    return ewc_lambda * total


def quadratic_penalty(params: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                      anchors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_k w_k (theta_k - a_k)^2`` summed over aligned sequences of parameters ``theta``, weights ``w`` (the
    importances) and anchors ``a`` of the same shapes: the quadratic penalty of EWC, SI (Zenke et al., 2017),
    MAS (Aljundi et al., 2018) and RWalk (Chaudhry et al., 2018), without their factor.

    The gradient ``2 w (theta - a)`` is formed with the value, in one pass over the parameters, rather than by
    differentiating the elementwise terms: the same gradient in about a third of the time (first derivatives
    only; a second one raises).

    :returns: a scalar tensor of the parameters' dtype and device, differentiable with respect to ``params``
        (zero for empty sequences).
    :raises ValueError: when the sequences have different lengths.
    """
    params, weights, anchors = list(params), list(weights), list(anchors)
    if not len(params) == len(weights) == len(anchors):
        raise ValueError(f"quadratic_penalty: {len(params)} parameters, {len(weights)} weights and {len(anchors)} "
                         f"anchors; give one of each per parameter")
    if not params:
        return torch.zeros(())
    return _QuadraticPenalty.apply(weights, anchors, *params)


class _QuadraticPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weights: list[torch.Tensor], anchors: list[torch.Tensor],
                *params: torch.Tensor) -> torch.Tensor:
        total = params[0].new_zeros(())
        grads = []
        for p, w, a in zip(params, weights, anchors):
            d = p.detach() - a
            g = d * w  # half the gradient, and the value's factor
            total += torch.vdot(g.reshape(-1), d.reshape(-1))  # a copy only for other layouts (channels-last)
            grads.append(g)
        ctx.grads = grads
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        scale = 2 * grad_output
        return (None, None, *(g.mul_(scale) if needed else None for g, needed in zip(grads, ctx.needs_input_grad[2:])))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (parameter names without ``module.``)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _grow(t: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """``t`` zero-padded to ``shape`` (a parameter that grew keeps its old part; new entries get no penalty)."""
    if t.shape == shape:
        return t
    if len(t.shape) != len(shape) or any(a > b for a, b in zip(t.shape, shape)):
        raise ValueError(f"ewc: parameter {name!r} changed shape from {tuple(t.shape)} to {tuple(shape)}; EWC "
                         f"only follows parameters that grow")
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class EWC:
    """Elastic Weight Consolidation (Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting in neural
    networks"): a quadratic penalty keeping important parameters near their past values (see the module
    docstring for the exact terms).

    :param ewc_lambda: weight of the penalty (>= 0).
    :param mode: ``"separate"`` (one term per past experience) or ``"online"`` (one running importance,
        decayed by ``decay_factor`` at each experience, anchored at the last parameters).
    :param decay_factor: online mode only, required there: a number in [0, 1].
    :param keep_importance_data: keep every experience's importances and parameters in
        ``importances`` / ``saved_params`` (for inspection). The penalty never needs them (see the module
        docstring), so by default only the last experience's are kept.
    :raises ValueError: for an option out of its range, or ``decay_factor`` given in separate mode or missing in
        online mode.
    """

    name = "ewc"
    MODES = ("separate", "online")

    def __init__(self, ewc_lambda: float = 1.0, mode: str = "separate", decay_factor: float | None = None,
                 keep_importance_data: bool = False) -> None:
        ewc_lambda = non_negative_number(ewc_lambda, "ewc_lambda", self.name)
        if mode not in self.MODES:
            raise ValueError(f"{self.name}: mode must be one of {self.MODES}, got {mode!r}")
        if mode == "online":
            if decay_factor is None:
                raise ValueError(f"{self.name}: mode='online' needs decay_factor, a number in [0, 1] by which the "
                                 f"importances decay at each experience")
            decay_factor = unit_interval(decay_factor, "decay_factor", self.name)
        elif decay_factor is not None:
            raise ValueError(f"{self.name}: decay_factor applies to mode='online' only, got "
                             f"decay_factor={decay_factor!r} with mode='separate'")
        self.ewc_lambda, self.mode, self.decay_factor = ewc_lambda, mode, decay_factor
        self.keep_importance_data = keep_importance_data
        #: Per experience (the experience's count), importances and parameters after training on it.
        self.importances: dict[int, Tensors] = {}
        self.saved_params: dict[int, Tensors] = {}
        # Folded penalty: A (summed importances), B = sum F theta, C = sum F theta^2 (float64), const (a float).
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._anchor: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._const = 0.0
        self.experiences = 0

    # ------------------------------------------------------------------ the penalty

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if state.epoch == 0:
            self._bind(_unwrap(state.model))

    def _bind(self, model: torch.nn.Module) -> None:
        """Pair each penalised parameter with its importance and anchor, grown to its current shape."""
        self._anchor = []
        if not self._sums:
            return
        params = dict(model.named_parameters())
        for name, sums in self._sums.items():
            if name not in params:
                continue
            p = params[name]
            for key in ("A", "B", "C"):
                sums[key] = _grow(sums[key], p.shape, name).to(p.device)
            a = sums["A"]
            mu = torch.where(a > 0, sums["B"] / a.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a))
            self._anchor.append((p, a.to(p.dtype), mu.to(p.dtype)))

    def penalty(self, model: torch.nn.Module | None = None) -> torch.Tensor | None:
        """The current penalty (times ``ewc_lambda``): a scalar tensor on the parameters' device, differentiable
        with respect to them; None before the first experience ends.

        :param model: bind to this model's parameters first (the plugin binds to the training model itself).
        """
        if model is not None:
            self._bind(model)
        if not self._anchor:
            return None
        total = quadratic_penalty(*zip(*self._anchor))
        return self.ewc_lambda * (total + self._const)

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self._sums and not self._anchor:  # loaded from a checkpoint taken inside an experience
            self._bind(_unwrap(state.model))
        return self.penalty()

    # ------------------------------------------------------------------ importances

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        model = _unwrap(state.model)
        importances = compute_importances(model, state.experience.dataset.train(),  # type: ignore[union-attr]
                                          criterion=state.criterion, batch_size=state.train_mb_size,
                                          device=state.device)
        self.consolidate(model, importances)
        self._bind(model)

    @torch.no_grad()
    def consolidate(self, model: torch.nn.Module, importances: Mapping[str, torch.Tensor]) -> None:
        """Add one experience: ``importances`` (name -> tensor of the parameter's shape, e.g. from
        :func:`compute_importances`) computed for ``model``'s current parameters, which become the new anchor.

        :raises ValueError: when a parameter changed shape other than by growing.
        """
        params = {n: p.detach() for n, p in model.named_parameters() if n in importances}
        e = self.experiences
        self.importances[e] = {n: f.detach().clone() for n, f in importances.items()}
        self.saved_params[e] = {n: p.clone() for n, p in params.items()}
        if not self.keep_importance_data:
            for old in [k for k in self.importances if k != e]:
                del self.importances[old], self.saved_params[old]
        for name, p in params.items():
            f = importances[name].double()
            theta = p.double()
            sums = self._sums.get(name)
            if sums is None or self.mode == "online":
                a = f if sums is None else _grow(sums["A"], p.shape, name).to(f.device) * self.decay_factor + f
                self._sums[name] = {"A": a, "B": a * theta, "C": a * theta.pow(2)}
            else:
                self._sums[name] = {"A": _grow(sums["A"], p.shape, name).to(f.device) + f,
                                    "B": _grow(sums["B"], p.shape, name).to(f.device) + f * theta,
                                    "C": _grow(sums["C"], p.shape, name).to(f.device) + f * theta.pow(2)}
        const = 0.0
        for sums in self._sums.values():
            a, b, c = sums["A"], sums["B"], sums["C"]
            const += float(torch.where(a > 0, c - b.pow(2) / a.clamp_min(1e-300), torch.zeros_like(a)).sum())
        self._const = max(const, 0.0)
        self.experiences += 1

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {n: {k: v.clone() for k, v in s.items()} for n, s in self._sums.items()},
                "const": self._const, "experiences": self.experiences,
                "importances": {e: dict(f) for e, f in self.importances.items()},
                "saved_params": {e: dict(p) for e, p in self.saved_params.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sums = {n: dict(s) for n, s in state["sums"].items()}
        self._const, self.experiences = float(state["const"]), int(state["experiences"])
        self.importances, self.saved_params = dict(state["importances"]), dict(state["saved_params"])
        self._anchor = []
