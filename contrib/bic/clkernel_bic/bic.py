"""Bias Correction (BiC; Wu, Chen, Wang, Ye, Liu, Guo and Fu, 2019, "Large Scale Incremental Learning", CVPR).

A class-incremental learner trained on new data and exemplars is biased towards the new classes: they have many
more training samples. BiC trains in two stages per experience:

1. **Stage 1** on the experience's data (minus a held-out part) plus replayed exemplars, with the loss::

       L = (1 - lambda) * CE(o, y) + lambda * L_d,    lambda = n / (n + m)

   where ``n`` is the number of old classes, ``m`` of new ones, and the distillation term over the old classes is
   ``L_d = mean over samples of  - sum_{k <= n} softmax(o_old / T)_k * log softmax(o / T)_k`` (``o_old``: the frozen
   previous model's logits, with its bias correction; ``T = 2``).
2. **Stage 2**: with the model frozen, a two-parameter bias layer on the new classes' logits,
   ``q_k = alpha * o_k + beta`` for new classes ``k`` (old classes unchanged), is trained with cross-entropy on a
   small validation set that stage 1 never saw: a class-balanced part of the memory (held-out samples of the old
   classes) and the same number of held-out samples of each new class.

At evaluation the outputs go through the latest bias layer. As in the authors' code (and Avalanche's ``BiCPlugin``),
only the latest layer is applied: earlier corrections live on in the model through distillation from the
corrected previous model.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import clkernel
from clkernel import CLDataset, Experience, TrainState
from clkernel.validate import positive_int, positive_number, unit_interval
from clkernel_replay import BufferSampler, ClassBalancedBuffer, StoragePolicy, make_policy

__all__ = ["BiC", "BiasLayer", "bic_distillation_loss", "fit_bias_layer"]


class BiasLayer(nn.Module):
    """BiC's bias-correction layer (Wu et al., 2019): ``q_k = alpha * o_k + beta`` on the output units ``classes``,
    every other unit passed through unchanged. A model component: put it after any classifier
    (``nn.Sequential(model, layer)``) or apply it to logits.

    :param classes: the output units (class ids) it corrects; none: the identity.
    :param alpha: initial scale (1: the identity).
    :param beta: initial shift (0: the identity).
    :raises ValueError: for a negative class id.

    ``forward(logits)``: float ``(B, C)`` -> ``(B, C)``, differentiable with respect to ``alpha`` and ``beta``.
    Raises ValueError when a corrected class id is ``>= C``. ``state_dict()`` holds ``alpha``, ``beta`` (shape
    ``(1,)``) and the ``classes`` (int64); it loads into a layer built with other classes.
    """

    def __init__(self, classes: Sequence[int] | torch.Tensor = (), alpha: float = 1.0, beta: float = 0.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor([float(alpha)]))
        self.beta = nn.Parameter(torch.tensor([float(beta)]))
        self.register_buffer("classes", self._as_classes(classes))

    @staticmethod
    def _as_classes(classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(classes, dtype=torch.long).reshape(-1).unique()
        if len(out) and int(out[0]) < 0:
            raise ValueError(f"BiasLayer: class ids must be >= 0, got {int(out[0])}")
        return out

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not len(self.classes):
            return logits
        if logits.dim() != 2 or int(self.classes[-1]) >= logits.shape[1]:
            raise ValueError(f"BiasLayer corrects class {int(self.classes[-1])}, but the logits have shape "
                             f"{tuple(logits.shape)} (expected (batch, classes) with more units)")
        mask = torch.zeros(logits.shape[1], dtype=logits.dtype, device=logits.device)
        mask[self.classes.to(logits.device)] = 1.0
        return logits + mask * ((self.alpha - 1.0) * logits + self.beta)

    @torch.no_grad()
    def reset(self, classes: Sequence[int] | torch.Tensor) -> None:
        """Correct ``classes`` from now on, starting again from the identity (``alpha = 1``, ``beta = 0``)."""
        self.classes = self._as_classes(classes).to(self.alpha.device)
        self.alpha.fill_(1.0)
        self.beta.fill_(0.0)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        key = prefix + "classes"
        if key in state_dict:  # the number of corrected classes may differ from this layer's
            self.classes = torch.empty_like(state_dict[key], device=self.alpha.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (f"classes={self.classes.tolist()}, alpha={float(self.alpha.detach()):.4f}, "
                f"beta={float(self.beta.detach()):.4f}")


def bic_distillation_loss(output: torch.Tensor, old_output: torch.Tensor, units: torch.Tensor | Sequence[int],
                          temperature: float = 2.0) -> torch.Tensor:
    """BiC's distillation term: ``mean over samples of - sum_k softmax(old/T)_k * log softmax(new/T)_k`` over the
    output ``units`` (the old classes), with no ``T^2`` factor (Wu et al., 2019, eq. 2; as the authors' code).

    :param output: the current model's logits, float ``(B, C)``.
    :param old_output: the frozen previous model's logits (bias-corrected), ``(B, C')`` covering ``units``.
    :param units: int64 ``(n,)`` or a list: the old classes' output units.
    :param temperature: ``T > 0``.
    :returns: a 0-d tensor, differentiable with respect to ``output``.
    """
    units = torch.as_tensor(units, dtype=torch.long, device=output.device)
    target = F.softmax(old_output.index_select(1, units) / temperature, dim=1)
    log_p = F.log_softmax(output.index_select(1, units) / temperature, dim=1)
    return -(target * log_p).sum(dim=1).mean()


def fit_bias_layer(layer: BiasLayer, logits: torch.Tensor, targets: torch.Tensor, *,
                   units: torch.Tensor | Sequence[int] | None = None, epochs: int = 200, lr: float = 0.1,
                   batch_size: int = 32, momentum: float = 0.9, generator: torch.Generator | None = None) -> float:
    """BiC's stage 2: train ``layer``'s ``alpha`` and ``beta`` with cross-entropy on fixed ``logits`` (the frozen
    model's outputs on a validation set). SGD with ``momentum``, learning rate divided by 10 after 1/4, 1/2 and 3/4
    of the epochs (Avalanche's milestones 50, 100, 150 of 200), shuffled minibatches.

    :param logits: float ``(N, C)``; ``targets`` int64 ``(N,)``, class ids.
    :param units: the output units the softmax runs over (default all ``C``); every target must be among them.
    :param generator: shuffles the minibatches (default: torch's global generator).
    :returns: the mean loss of the last epoch (``nan`` for no sample).
    :raises ValueError: when the shapes disagree or a target is not among ``units``.
    """
    positive_int(epochs, "epochs", "fit_bias_layer")
    positive_int(batch_size, "batch_size", "fit_bias_layer")
    if logits.dim() != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"fit_bias_layer: logits must be (N, C) and targets (N,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if len(targets) == 0:
        return float("nan")
    logits, targets = logits.detach(), targets.to(logits.device)
    if units is not None:
        units = torch.as_tensor(units, dtype=torch.long, device=logits.device).unique()
        where = torch.searchsorted(units, targets).clamp(max=len(units) - 1)
        if not bool((units[where] == targets).all()):
            missing = sorted(set(targets.tolist()) - set(units.tolist()))
            raise ValueError(f"fit_bias_layer: targets {missing} are not among the units {units.tolist()}")
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=momentum)
    milestones = sorted({max(1, epochs * k // 4) for k in (1, 2, 3)})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    last = float("nan")
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator).to(logits.device)
            total = logits.new_zeros(())
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                out = layer(logits[idx])
                y = targets[idx]
                if units is not None:
                    out, y = out.index_select(1, units), torch.searchsorted(units, y)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total = total + loss.detach() * len(idx)
            scheduler.step()
            last = total
    return float(last) / len(targets)


def _quotas(classes: list[int], total: int) -> dict[int, int]:
    """``total`` samples split evenly over the sorted ``classes``, the first ones getting one more when it does
    not divide (the split of clkernel-replay's class-balanced buffer)."""
    base, extra = divmod(total, len(classes)) if classes else (0, 0)
    return {c: base + (i < extra) for i, c in enumerate(sorted(classes))}


class BiC:
    """Bias Correction (Wu et al., 2019) as a training plugin; the module docstring gives the method.

    The memory of ``mem_size`` samples is split in two: ``round(val_fraction * mem_size)`` samples form the
    class-balanced validation set of stage 2 (held out from training), the rest are the exemplars replayed in
    stage 1 (``batch_size_mem`` of them appended to every training minibatch) and kept by ``storage_policy`` (any
    clkernel-replay policy name). Before each experience, ``val_size / classes seen`` random samples of each new
    class are held out of its training data; after it, the held-out samples join the validation memory, which
    keeps as many per class for every class seen.

    The distillation term comes from ``loss_terms`` as ``lambda * (L_d - criterion(output, y))``, so that the
    loss the loop optimises is ``(1 - lambda) * criterion + lambda * L_d`` whatever the criterion. Stage 2 runs
    after each experience that brings new classes (from the second on) on the frozen model's logits, computed
    once (eval mode and transforms), over the units of the classes seen so far; at every evaluation the outputs
    go through the bias layer (:attr:`bias_layer`).

    :param mem_size: total memory in samples (exemplars plus validation set).
    :param val_fraction: the part of the memory held out for stage 2, in (0, 1) (the paper's 1:9 split: 0.1).
    :param temperature: distillation temperature ``T`` (> 0).
    :param lamb: ``None`` (the paper's): ``lambda = n / (n + m)``; a number in [0, 1]: that lambda throughout.
    :param stage2_epochs: epochs of stage 2 (Avalanche's 200).
    :param stage2_lr: stage 2's SGD learning rate (momentum 0.9; divided by 10 at 1/4, 1/2, 3/4 of the epochs).
    :param batch_size_mem: exemplars appended to each minibatch (default: the strategy's ``train_mb_size``);
        stage 2's minibatch size is ``train_mb_size``.
    :param storage_policy: a :func:`clkernel_replay.make_policy` name for the exemplars (default
        ``class_balanced``; ``herding`` is iCaRL's choice, which the paper follows).
    :param seed: seeds the held-out draws, the exemplar draws and stage 2 (default: drawn from torch's generator).
    :raises ValueError: for an option out of range, an unknown policy, or a memory whose validation part or
        exemplar part would be empty.
    """

    name = "bic"

    def __init__(self, mem_size: int = 200, val_fraction: float = 0.1, temperature: float = 2.0,
                 lamb: float | None = None, stage2_epochs: int = 200, stage2_lr: float = 0.1,
                 batch_size_mem: int | None = None, storage_policy: str = "class_balanced",
                 seed: int | None = None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        val_fraction = unit_interval(val_fraction, "val_fraction", self.name, include_one=False)
        self.val_size = round(val_fraction * mem_size)
        if self.val_size < 1 or self.val_size >= mem_size:
            raise ValueError(f"{self.name}: val_fraction={val_fraction} of mem_size={mem_size} leaves "
                             f"{self.val_size} validation and {mem_size - self.val_size} exemplar samples; both "
                             f"need at least one")
        self.temperature = positive_number(temperature, "temperature", self.name)
        self.lamb = None if lamb is None else unit_interval(lamb, "lamb", self.name)
        self.stage2_epochs = positive_int(stage2_epochs, "stage2_epochs", self.name)
        self.stage2_lr = positive_number(stage2_lr, "stage2_lr", self.name)
        if batch_size_mem is not None:
            positive_int(batch_size_mem, "batch_size_mem", self.name)
        if not isinstance(storage_policy, str):
            raise TypeError(f"{self.name}: storage_policy must be a policy name, got {type(storage_policy).__name__}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        try:
            self.exemplars: StoragePolicy = make_policy(storage_policy, mem_size - self.val_size, seed)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        self.validation = ClassBalancedBuffer(self.val_size, seed=seed + 1)
        self.mem_size, self.val_fraction, self.batch_size_mem = mem_size, val_fraction, batch_size_mem
        self.storage_policy = storage_policy
        self.generator = torch.Generator().manual_seed(seed + 2)
        #: The correction applied at evaluation (the identity until the first stage 2).
        self.bias_layer = BiasLayer()
        self.prev_model: nn.Module | None = None
        self.old_classes: list[int] = []  # classes of the experiences trained before the current one
        self.heldout: dict[int, torch.Tensor] = {}  # experience index -> held-out positions in its dataset
        self._prev_bias = BiasLayer()  # the correction of the previous model's outputs
        self._pending: Mapping[str, torch.Tensor] | None = None  # a loaded previous model, not rebuilt yet
        self._sampler: BufferSampler | None = None
        self._orders: list[torch.Tensor] | None = None
        self._units: torch.Tensor | None = None
        self._lambda = 0.0

    # ------------------------------------------------------------------ the held-out split

    def _hold_out(self, experience: Experience) -> torch.Tensor:
        """Positions of ``experience.dataset`` held out for stage 2 (drawn once per experience index)."""
        if experience.index in self.heldout:
            return self.heldout[experience.index]
        targets = experience.dataset.targets
        seen = sorted(set(self.old_classes) | set(int(c) for c in targets.unique().tolist()))
        quota = _quotas(seen, self.val_size)
        parts = []
        for c in sorted(set(targets.unique().tolist()) - set(self.old_classes)):
            members = (targets == c).nonzero().flatten()
            take = min(quota[c], len(members) - 1)  # at least one sample of the class stays to train on
            if take > 0:
                parts.append(members[torch.randperm(len(members), generator=self.generator)[:take]])
        held = torch.cat(parts).sort().values if parts else torch.zeros(0, dtype=torch.long)
        self.heldout[experience.index] = held
        return held

    def _train_part(self, dataset: CLDataset, index: int) -> CLDataset:
        """``dataset`` without the samples held out of experience ``index``."""
        keep = torch.ones(len(dataset), dtype=torch.bool)
        keep[self.heldout.get(index, torch.zeros(0, dtype=torch.long))] = False
        return dataset.subset(keep.nonzero().flatten())

    def _restore(self, state: TrainState) -> None:
        if not (self.exemplars.needs_restore or self.validation.needs_restore):
            return
        stream = state.experience.stream if state.experience is not None else None
        if stream is None:
            raise RuntimeError(f"{self.name}: the memory was loaded from a checkpoint and is rebuilt from the stream "
                               f"of the experience being trained, but that experience belongs to no stream")
        datasets = {exp.index: exp.dataset for exp in stream}
        self.exemplars.restore(lambda k: self._train_part(datasets[k], k))
        self.validation.restore(lambda k: datasets[k].subset(self.heldout[k]))

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._orders = None
        self._start(state)

    def _start(self, state: TrainState) -> None:
        self._restore(state)
        self._materialise(state.model)
        exp = state.experience
        self._hold_out(exp)  # type: ignore[arg-type]
        new = set(int(c) for c in exp.classes) - set(self.old_classes)  # type: ignore[union-attr]
        n, m = len(self.old_classes), len(new)
        self._lambda = self.lamb if self.lamb is not None else (n / (n + m) if n + m else 0.0)
        self._units = torch.tensor(self.old_classes, dtype=torch.long, device=state.device)
        buffer = self.exemplars.buffer
        self._sampler = None if buffer is None else BufferSampler(
            buffer.train(), self.batch_size_mem or state.train_mb_size, generator=self.generator)
        if self._sampler is not None and self._orders is not None:  # resumed inside the experience
            self._sampler.orders = list(self._orders)
        self._orders = None

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        exp = state.experience
        if len(self.heldout.get(exp.index, ())):  # type: ignore[union-attr]
            state.dataset = self._train_part(state.dataset, exp.index)  # type: ignore[arg-type, union-attr]

    @clkernel.hookimpl
    def before_training_iteration(self, state: TrainState) -> None:
        if self._orders is not None:  # loaded from a checkpoint taken inside this experience
            self._start(state)
        if self._sampler is None:
            return
        x, y, t = state.mb  # type: ignore[misc]
        bx, by, bt = self._sampler.draw()
        device = state.device
        state.mb = (torch.cat([x, bx.to(device, non_blocking=True)]), torch.cat([y, by.to(device, non_blocking=True)]),
                    torch.cat([t, bt.to(device, non_blocking=True)]))

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self.prev_model is None or self._units is None or not len(self._units) or self._lambda == 0:
            return None
        with torch.no_grad():
            old = self._prev_bias(clkernel.model_forward(self.prev_model, state.mb_x, state.mb_task))
        distill = bic_distillation_loss(state.mb_output, old, self._units, self.temperature)
        return self._lambda * (distill - state.criterion(state.mb_output, state.mb_y))

    @clkernel.hookimpl
    def after_eval_forward(self, state: TrainState) -> None:
        if len(self.bias_layer.classes):
            with torch.no_grad():
                state.mb_output = self.bias_layer.to(state.mb_output.device)(state.mb_output)

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        if self._sampler is not None:
            self._sampler.close()  # the generator as if the sampler had read nothing ahead
        exp: Experience = state.experience  # type: ignore[assignment]
        held = self._hold_out(exp)
        self.exemplars.update(self._train_part(exp.dataset, exp.index), key=exp.index, model=state.model)
        if len(held):
            self.validation.update(exp.dataset.subset(held), key=exp.index)
        new = sorted(set(int(c) for c in exp.classes) - set(self.old_classes))
        if self.old_classes and new and self.validation.buffer is not None:
            self.stage2(state.model, new, sorted(set(self.old_classes) | set(new)), device=state.device,
                        batch_size=state.train_mb_size)
        self.old_classes = sorted(set(self.old_classes) | set(new))
        self.prev_model = copy.deepcopy(state.model).eval()
        for p in self.prev_model.parameters():
            p.requires_grad_(False)
        self._prev_bias = copy.deepcopy(self.bias_layer)
        self._sampler = self._orders = None

    def stage2(self, model: nn.Module, new_classes: Sequence[int], units: Sequence[int], *,
               device: torch.device | str = "cpu", batch_size: int = 32) -> float:
        """Train a fresh bias layer on ``new_classes`` with the validation memory and the frozen ``model``'s
        logits over ``units``; it becomes :attr:`bias_layer`. Returns stage 2's last-epoch loss."""
        val = self.validation.buffer
        if val is None:
            raise RuntimeError(f"{self.name}: stage 2 needs a validation memory, and it is empty")
        logits, targets = _logits(model, val, device)
        self.bias_layer.to(device).reset(new_classes)
        return fit_bias_layer(self.bias_layer, logits, targets, units=units, epochs=self.stage2_epochs,
                              lr=self.stage2_lr, batch_size=batch_size, generator=self.generator)

    def _materialise(self, model: nn.Module) -> None:
        if self._pending is None:
            return
        self.prev_model = copy.deepcopy(model).eval()
        self.prev_model.load_state_dict(self._pending)
        for p in self.prev_model.parameters():
            p.requires_grad_(False)
        self._pending = None

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors: both memories' policy states (no data), the held-out positions per experience, the
        previous model's parameters, both bias layers, the old classes, the generator and, inside an experience,
        the exemplar sampler's remaining draws."""
        prev = self._pending if self._pending is not None else (
            None if self.prev_model is None else self.prev_model.state_dict())
        orders, generator = (self._orders, self.generator.get_state()) if self._sampler is None \
            else self._sampler.state()
        return {"exemplars": self.exemplars.state_dict(), "validation": self.validation.state_dict(),
                "heldout": {k: v.clone() for k, v in self.heldout.items()},
                "prev_model": None if prev is None else {k: v.clone() for k, v in prev.items()},
                "bias_layer": {k: v.clone() for k, v in self.bias_layer.state_dict().items()},
                "prev_bias": {k: v.clone() for k, v in self._prev_bias.state_dict().items()},
                "old_classes": torch.tensor(self.old_classes, dtype=torch.long),
                "generator": generator,
                "orders": None if orders is None else [o.clone() for o in orders]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the memories' samples are rebuilt from the stream, and the previous model from the
        live model, at the next training experience (or minibatch, for a checkpoint taken inside one)."""
        self.exemplars.load_state_dict(state["exemplars"])
        self.validation.load_state_dict(state["validation"])
        self.heldout = {int(k): v.clone() for k, v in state["heldout"].items()}
        self._pending = None if state["prev_model"] is None else {k: v.clone() for k, v in state["prev_model"].items()}
        self.prev_model = None
        self.bias_layer.load_state_dict(state["bias_layer"])
        self._prev_bias.load_state_dict(state["prev_bias"])
        self.old_classes = [int(c) for c in state["old_classes"].tolist()]
        self.generator.set_state(state["generator"])
        orders = state.get("orders")
        self._sampler, self._orders = None, None if orders is None else [o.clone() for o in orders]


@torch.no_grad()
def _logits(model: nn.Module, dataset: CLDataset, device: torch.device | str, batch_size: int = 256,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s outputs on ``dataset`` (eval mode and transforms) and its targets, on ``device``."""
    outs, ys = [], []
    with clkernel.eval_mode(model):
        for x, y, t in clkernel.iterate_minibatches(dataset.eval(), batch_size, shuffle=False):
            outs.append(clkernel.model_forward(model, x.to(device), t.to(device)).float())
            ys.append(y.to(device))
    return torch.cat(outs), torch.cat(ys)

