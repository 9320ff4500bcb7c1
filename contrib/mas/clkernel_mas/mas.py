"""Memory Aware Synapses (Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, 2018, "Memory Aware Synapses:
Learning what (not) to forget", ECCV), as in the paper and the authors' code.

After each experience, the importance of every parameter is the sensitivity of the squared L2 norm of the model's
output to it, averaged over the experience's training inputs; labels play no part (paper, Eq. 2-4)::

    Omega_k = 1/N * sum over minibatches b of | d/d theta_k  sum_{i in b} ||F(x_i)||_2^2 |

With minibatches of one sample this is the paper's per-sample definition ``1/N sum_i |g_k(x_i)|``; with larger
ones it is the authors' code (the gradient of the minibatch's summed squared norm, its magnitude accumulated and
divided by the number of samples). The model runs in eval mode, through :func:`clkernel.model_forward` (a
multi-head model scores each sample on its own task's head). Importances are summed over experiences (the
paper), or kept as a moving average ``alpha * old + (1 - alpha) * new`` (Avalanche's ``MASPlugin``). The
parameters are anchored after each experience, and later experiences get the term (paper, Eq. 5, no 1/2)::

    lambda_reg * sum_k Omega_k * (theta_k - theta_anchor_k)^2

Parameters that grow (a larger classifier head) keep their importance on their old part; new units are free.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import CLDataset, TrainState, iterate_minibatches, model_forward
from clkernel.validate import non_negative_number, positive_int, unit_interval
from clkernel_ewc import quadratic_penalty

__all__ = ["MAS", "mas_importances"]

Tensors = dict[str, torch.Tensor]


def mas_importances(model: torch.nn.Module, dataset: CLDataset, *, batch_size: int = 1,
                    device: torch.device | str | None = None) -> Tensors:
    """The MAS importance of ``model``'s parameters on ``dataset``'s inputs (no labels used):
    ``1/N sum_b |d/d theta sum_{i in b} ||F(x_i)||^2|`` over minibatches ``b`` in dataset order.

    The model runs in eval mode (each module's mode is restored afterwards) and gets each minibatch's task labels
    when it takes them (:func:`clkernel.model_forward`); its gradients are cleared afterwards. Parameters that get
    no gradient (another task's head) have zero importance.

    :param batch_size: samples per gradient; 1 (the default) is the paper's per-sample definition.
    :param device: where minibatches go (default: where the parameters are).
    :returns: parameter name -> importance, a non-negative tensor of the parameter's shape, dtype and device, for
        every parameter that requires grad.
    :raises ValueError: for an empty dataset or a ``batch_size`` that is not a positive integer.
    """
    positive_int(batch_size, "batch_size", "mas_importances")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if device is None:
        device = next(iter(params.values())).device if params else torch.device("cpu")
    importances = {n: torch.zeros_like(p) for n, p in params.items()}
    samples = 0
    with clkernel.eval_mode(model):
        try:
            for x, _, t in iterate_minibatches(dataset, batch_size, shuffle=False):
                model.zero_grad(set_to_none=True)
                out = model_forward(model, x.to(device, non_blocking=True), t.to(device, non_blocking=True))
                out.pow(2).sum().backward()
                for n, p in params.items():
                    if p.grad is not None:
                        importances[n] += p.grad.detach().abs()
                samples += len(t)
        finally:
            model.zero_grad(set_to_none=True)
    if samples == 0:
        raise ValueError("mas_importances got an empty dataset")
    return {n: imp / samples for n, imp in importances.items()}


def _grow(t: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """``t`` zero-padded to ``shape``: a parameter that grew keeps its old part, new entries start at zero."""
    if t.shape == shape:
        return t
    if len(t.shape) != len(shape) or any(a > b for a, b in zip(t.shape, shape)):
        raise ValueError(f"mas: parameter {name!r} changed shape from {tuple(t.shape)} to {tuple(shape)}; MAS only "
                         f"follows parameters that grow")
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class MAS:
    """Memory Aware Synapses (Aljundi et al., 2018) as a training plugin; the module docstring gives the formulas.

    :param lambda_reg: weight of the penalty (>= 0); the paper's lambda.
    :param alpha: ``None`` sums the importances over experiences (the paper and the authors' code); a number in
        [0, 1] keeps ``alpha * old + (1 - alpha) * new`` (Avalanche's ``MASPlugin``, whose default is 0.5).
    :param batch_size: samples per gradient when computing importances (>= 1); default the strategy's training
        minibatch size (as the authors' code and Avalanche); 1 gives the paper's per-sample definition.
    :raises ValueError: for an option out of range.

    Attributes: ``importances`` and ``anchor`` (parameter name -> tensor of the parameter's shape; empty before
    the first experience ends) and ``experiences`` (how many were consolidated).
    """

    name = "mas"

    def __init__(self, lambda_reg: float = 1.0, alpha: float | None = None, batch_size: int | None = None) -> None:
        self.lambda_reg = non_negative_number(lambda_reg, "lambda_reg", self.name)
        self.alpha = None if alpha is None else unit_interval(alpha, "alpha", self.name)
        self.batch_size = None if batch_size is None else positive_int(batch_size, "batch_size", self.name)
        self.importances: Tensors = {}
        self.anchor: Tensors = {}
        self.experiences = 0
        self._penalised: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def _bind(self, model: torch.nn.Module) -> None:
        """Pair each penalised parameter with its importance and anchor, grown and moved to its shape and device."""
        params = dict(model.named_parameters())
        self._penalised = []
        for n in self.importances:
            if n not in params:
                continue
            p = params[n]
            self.importances[n] = _grow(self.importances[n], p.shape, n).to(p.device, p.dtype)
            self.anchor[n] = _grow(self.anchor[n], p.shape, n).to(p.device, p.dtype)
            self._penalised.append((p, self.importances[n], self.anchor[n]))

    def penalty(self, model: torch.nn.Module | None = None) -> torch.Tensor | None:
        """``lambda_reg * sum_k Omega_k (theta_k - anchor_k)^2``: a scalar tensor on the parameters' device,
        differentiable with respect to them; None before the first experience ends.

        :param model: bind to this model's parameters first (the plugin binds to the training model itself).
        """
        if model is not None:
            self._bind(model)
        if not self._penalised:
            return None
        return self.lambda_reg * quadratic_penalty(*zip(*self._penalised))

    @torch.no_grad()
    def consolidate(self, model: torch.nn.Module, importances: Mapping[str, torch.Tensor]) -> None:
        """Add one experience's ``importances`` (name -> tensor of the parameter's shape, e.g. from
        :func:`mas_importances`): summed into the running ones, or averaged with ``alpha``; ``model``'s current
        parameters become the anchor.

        :raises ValueError: when a parameter changed shape other than by growing.
        """
        params = {n: p.detach() for n, p in model.named_parameters() if n in importances}
        for n, p in params.items():
            new = importances[n].detach().to(p.device, p.dtype)
            old = self.importances.get(n)
            if old is None:
                total = new.clone() if self.alpha is None else (1 - self.alpha) * new
            else:
                old = _grow(old, p.shape, n).to(p.device, p.dtype)
                total = old + new if self.alpha is None else self.alpha * old + (1 - self.alpha) * new
            self.importances[n] = total
            self.anchor[n] = p.clone()
        self.experiences += 1
        self._bind(model)

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if state.epoch == 0:
            self._bind(state.model)

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self.importances and not self._penalised:  # resumed inside an experience: no before_training_epoch
            self._bind(state.model)
        return self.penalty()

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        importances = mas_importances(state.model, state.experience.dataset.train(),  # type: ignore[union-attr]
                                      batch_size=self.batch_size or state.train_mb_size, device=state.device)
        self.consolidate(state.model, importances)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"importances": {n: t.detach().clone() for n, t in self.importances.items()},
                "anchor": {n: t.detach().clone() for n, t in self.anchor.items()},
                "experiences": self.experiences}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.importances = {n: t.clone() for n, t in state["importances"].items()}
        self.anchor = {n: t.clone() for n, t in state["anchor"].items()}
        self.experiences = int(state["experiences"])
        self._penalised = []
