"""Learning without Forgetting (Li & Hoiem, 2016, "Learning without Forgetting"), with Avalanche's ``LwF``
semantics.

After each experience a frozen copy of the model is kept. On every later training minibatch the current
model's outputs are distilled towards the frozen model's on the classes seen so far: the loss term is
``alpha * KL(softmax(old / T) || softmax(new / T))`` over those output units, averaged over the minibatch
(``batchmean``), with no ``T^2`` factor.

For models that take task labels (multi-head models, task-incremental learning), every past task is distilled
on every sample of the minibatch, as in Li & Hoiem (2016) and Avalanche: for each past task label ``k``, both the
frozen and the current model run on the whole minibatch ``x`` with task label ``k`` (so through head ``k``), the
term is taken over the classes seen for task ``k``, averaged over the minibatch, and the per-task terms are
summed. The samples' own task labels play no part: in task-incremental learning the current samples all belong to
the new task, and it is through the old heads that they carry the old model's knowledge.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

import clkernel
from clkernel import CLDataset, Experience, TrainState, model_forward
from clkernel.validate import non_negative_number, positive_number

__all__ = ["LearningWithoutForgetting", "LwF", "distillation_loss"]


def distillation_loss(output: torch.Tensor, old_output: torch.Tensor, units: torch.Tensor | Sequence[int],
                      temperature: float = 2.0, *, reduction: str = "batchmean") -> torch.Tensor:
    """``KL(softmax(old/T) || softmax(new/T))`` over the output ``units``, with no ``T^2`` factor.

    :param output: the current model's logits, float ``(B, C)``.
    :param old_output: the frozen model's logits for the same samples, ``(B, C')`` with ``C'`` covering ``units``.
    :param units: the output units (class indices) to distil, int64 ``(k,)`` or a list.
    :param temperature: the softmax temperature ``T`` (> 0).
    :param reduction: ``"batchmean"``: a scalar, the mean over samples; ``"none"``: one value per sample, ``(B,)``.
    :raises ValueError: for another reduction.
    """
    units = torch.as_tensor(units, dtype=torch.long, device=output.device)
    log_p = F.log_softmax(output.index_select(1, units) / temperature, dim=1)
    log_q = F.log_softmax(old_output.index_select(1, units) / temperature, dim=1)
    per_sample = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'batchmean' or 'none', got {reduction!r}")


def _check_alpha(alpha: Any, who: str) -> float | list[float]:
    if isinstance(alpha, (list, tuple)):
        if not alpha:
            raise ValueError(f"{who}: alpha must be a number or a non-empty list of numbers (one per experience)")
        return [non_negative_number(a, f"alpha[{i}]", who) for i, a in enumerate(alpha)]
    return non_negative_number(alpha, "alpha", who)


class LearningWithoutForgetting:
    """Learning without Forgetting (Li & Hoiem, 2016) outside any loop: ``update(model, data)`` after training on
    ``data``; then ``penalty(x, output, t, model=model)`` is the distillation term for a minibatch ``x`` whose
    current output is ``output`` (``model``, the current model, is needed only by models that take task labels).

    :param alpha: weight of the term (>= 0): a number, or one number per experience (indexed by the number of
        experiences already seen; the first experience never has a term).
    :param temperature: softmax temperature ``T`` (> 0).
    :param name: names the owner in error messages.
    :raises ValueError: for an ``alpha`` or ``temperature`` out of range, or an empty ``alpha`` list.
    """

    def __init__(self, alpha: float | Sequence[float] = 1.0, temperature: float = 2.0, *, name: str = "lwf") -> None:
        self.name = name
        self.alpha = _check_alpha(alpha, name)
        self.temperature = positive_number(temperature, "temperature", name)
        self.prev_model: torch.nn.Module | None = None
        #: Classes seen so far, by task label.
        self.prev_classes: dict[int, list[int]] = {}
        self.experiences = 0
        self._units: list[tuple[int, torch.Tensor]] = []
        self._union = torch.zeros(0, dtype=torch.long)
        self._pending: Mapping[str, torch.Tensor] | None = None

    def current_alpha(self) -> float:
        """The alpha of the experience being trained (the one after the ``experiences`` already seen).

        :raises ValueError: when ``alpha`` is a list with no value for that experience.
        """
        if isinstance(self.alpha, list):
            if self.experiences >= len(self.alpha):
                raise ValueError(f"{self.name}: alpha has {len(self.alpha)} values, one per experience, but "
                                 f"experience number {self.experiences + 1} is being trained")
            return self.alpha[self.experiences]
        return self.alpha

    def check_stream_length(self, length: int) -> None:
        """A ValueError naming ``alpha`` when it is a list shorter than a stream of ``length`` experiences."""
        if isinstance(self.alpha, list) and len(self.alpha) < length:
            raise ValueError(f"{self.name}: alpha has {len(self.alpha)} values, one per experience, but the stream "
                             f"has {length} experiences")

    @torch.no_grad()
    def update(self, model: torch.nn.Module, data: CLDataset | Experience | Iterable[CLDataset]) -> None:
        """Freeze a copy of ``model`` (trained on ``data``) and add ``data``'s classes to the distilled ones."""
        datasets = [data] if isinstance(data, (CLDataset, Experience)) else list(data)
        for d in datasets:
            dataset = d.dataset if isinstance(d, Experience) else d
            for task, part in dataset.split_by_task().items():
                self.prev_classes[task] = sorted(set(self.prev_classes.get(task, [])) | set(part.classes))
        self.prev_model = copy.deepcopy(model).eval()
        for p in self.prev_model.parameters():
            p.requires_grad_(False)
        self.experiences += 1
        self._units = []

    def _bind(self, device: torch.device) -> tuple[list[tuple[int, torch.Tensor]], torch.Tensor]:
        """Past classes as index tensors on ``device``: per task, and all tasks together."""
        if not self._units or self._units[0][1].device != device:
            self._units = [(task, torch.tensor(classes, dtype=torch.long, device=device))
                           for task, classes in sorted(self.prev_classes.items())]
            self._union = torch.cat([c for _, c in self._units]).unique()
        return self._units, self._union

    def penalty(self, x: Any, output: torch.Tensor, task_labels: torch.Tensor | None = None,
                model: torch.nn.Module | None = None) -> torch.Tensor | None:
        """``alpha *`` the distillation term for minibatch ``x`` (current ``output``); None before any update.

        A model with ``takes_task_labels`` is distilled head by head: for each past task ``k``, the frozen model
        and the current ``model`` both run on all of ``x`` with task label ``k`` (the current one with gradients),
        the term is taken over task ``k``'s past classes, and the per-task terms are summed (Avalanche's
        semantics). ``output`` then only gives the batch size and device. The models are called through
        :func:`clkernel.model_forward`.

        :param x: the minibatch's inputs, ``(B, *input_shape)``, on the model's device.
        :param output: the current model's logits for ``x``, float ``(B, C)``.
        :param task_labels: int64 ``(B,)``, the samples' task labels, handed to :func:`clkernel.model_forward`
            for a model that does not take task labels (which then ignores them); not used for one that does.
        :param model: the current model; required when the model takes task labels (it runs through each old
            head).
        :returns: a scalar tensor, differentiable with respect to ``output`` (or, for a model that takes task
            labels, to ``model``'s parameters); None before any update.
        :raises ValueError: when the model takes task labels and no ``model`` is given.
        """
        if self.prev_model is None:
            return None
        alpha = self.current_alpha()
        units, union = self._bind(output.device)
        if getattr(self.prev_model, "takes_task_labels", False):
            if model is None:
                raise ValueError(f"{self.name}: the model takes task labels; pass the current model to penalty() "
                                 f"(model=...), so that every sample goes through every old head")
            total = output.new_zeros(())
            for task, classes in units:
                labels = torch.full((output.shape[0],), task, dtype=torch.long, device=output.device)
                with torch.no_grad():
                    old = model_forward(self.prev_model, x, labels)
                new = model_forward(model, x, labels)
                total = total + distillation_loss(new, old, classes, self.temperature)
            return alpha * total
        with torch.no_grad():
            old = model_forward(self.prev_model, x, task_labels)
        return alpha * distillation_loss(output, old, union, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        prev = self._pending  # loaded, not yet materialised
        if prev is None and self.prev_model is not None:
            prev = self.prev_model.state_dict()
        return {"prev_model": prev,
                "prev_classes": {t: torch.tensor(c, dtype=torch.long) for t, c in self.prev_classes.items()},
                "experiences": self.experiences}

    def load_state_dict(self, state: Mapping[str, Any], model: torch.nn.Module | None = None) -> None:
        """Load a checkpoint; ``model`` (the live model, copied) gives the frozen model its structure."""
        self.prev_classes = {int(t): c.tolist() for t, c in state["prev_classes"].items()}
        self.experiences = int(state["experiences"])
        self._units = []
        self._pending = state["prev_model"]
        if model is not None:
            self.materialise(model)

    def materialise(self, model: torch.nn.Module) -> None:
        """Rebuild the frozen model that :meth:`load_state_dict` loaded without a model: a frozen copy of
        ``model`` (the live model gives the structure) with the checkpoint's parameters. Does nothing when no
        loaded frozen model waits."""
        pending = self._pending
        if pending is None:
            return
        self.prev_model = copy.deepcopy(model).eval()
        self.prev_model.load_state_dict(pending)
        for p in self.prev_model.parameters():
            p.requires_grad_(False)
        self._pending = None


class LwF:
    """Learning without Forgetting (Li & Hoiem, 2016) as a training plugin: after each experience, freeze a copy
    of the model; on later minibatches, add the distillation term of :class:`LearningWithoutForgetting` to the
    loss (the module docstring gives it).

    :param alpha: weight of the distillation term (>= 0), a number or one per experience (a list at least as long
        as the stream).
    :param temperature: softmax temperature (> 0).
    :raises ValueError: for options out of range; at training, for an ``alpha`` list shorter than the stream, or
        for a model that takes task labels in a distributed run (see below).

    On several processes (``torchrun``) the frozen copy is the same on every rank (the model is), each rank
    distils its own share of the minibatch and DDP averages the gradients: one process's update on the whole
    minibatch. A model that takes task labels is refused there: its distillation runs the current model through
    every old head outside the loop's (DDP) forward pass.
    """

    name = "lwf"

    def __init__(self, alpha: float | Sequence[float] = 1.0, temperature: float = 2.0) -> None:
        self.lwf = LearningWithoutForgetting(alpha, temperature, name=self.name)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        if state.world_size > 1 and getattr(state.model, "takes_task_labels", False):
            raise ValueError(f"{self.name}: with a model that takes task labels (one head per task), LwF runs the "
                             f"current model through every old head outside the loop's forward pass, which "
                             f"DistributedDataParallel cannot reduce (those heads are unused in its forward); run "
                             f"it in one process, without torchrun")
        stream = state.experience.stream  # type: ignore[union-attr]
        if stream is not None:
            self.lwf.check_stream_length(len(stream))
        self.lwf.current_alpha()
        self.lwf.materialise(state.model)

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        self.lwf.materialise(state.model)  # loaded from a checkpoint taken inside an experience (else nothing)
        return self.lwf.penalty(state.mb_x, state.mb_output, state.mb_task, model=state.model)

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self.lwf.update(state.model, state.experience)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return self.lwf.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the frozen model is rebuilt from the live model at the next training experience."""
        self.lwf.load_state_dict(state)
