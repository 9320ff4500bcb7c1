"""Weight Aligning (Zhao, Xiao, Gan, Zhang and Xia, 2020, "Maintaining Discrimination and Fairness in Class
Incremental Learning", CVPR) as a training plugin.

Class-incremental training with exemplars leaves the classifier biased towards the new classes: their weight vectors
grow larger than the old classes'. WA keeps the old classes discriminated among themselves with knowledge
distillation, and makes old and new classes fair by aligning the norms of the classifier's weight vectors after each
experience:

- **Training** (each experience, on its data plus the exemplars, with ``n`` old and ``m`` new classes)::

      loss = (1 - lambda) * CE(f(x), y) + lambda * KD_T(f(x), f_prev(x))       lambda = n / (n + m)

  where ``KD_T`` is the distillation term of clkernel-lwf (:func:`clkernel_lwf.distillation_loss`:
  ``KL(softmax(f_prev/T) || softmax(f/T))`` over the old classes' outputs, averaged over the minibatch; the soft
  cross-entropy of PyCIL and FACIL differs from it by a constant, with the same gradient).
- **Weight aligning** (after each experience)::

      gamma = mean_{c old} ||W_c|| / mean_{c new} ||W_c||,        W_c <- gamma * W_c  for every new class c

  (:func:`weight_align`), so the mean norm of the new classes' weight vectors equals the old classes'.

The exemplars are iCaRL's (herding on the classifier's normalised inputs, ``mem_size`` in all, split evenly over
the classes seen; :func:`clkernel_icarl.exemplar_memory`), as in the paper.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from clkernel_icarl import exemplar_memory, find_classifier
from clkernel_lwf import distillation_loss
from torch import nn

import clkernel
from clkernel import CLDataset, TrainState, model_forward
from clkernel.validate import positive_number, unit_interval

__all__ = ["WA", "classifier_rows", "weight_align"]


def classifier_rows(classifier: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The classifier's output rows as ``(weight, bias)`` parameter blocks, in output order: one block
    ``(C, F)`` (and ``(C,)`` or None) for a ``torch.nn.Linear`` or any module whose ``weight`` is a Parameter; one
    block per growth for a module holding ``weights`` / ``biases`` parameter lists (clkernel-models'
    ``IncrementalClassifier``).

    :raises ValueError: naming the module when it has neither.
    """
    weight = getattr(classifier, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.dim() == 2:
        bias = getattr(classifier, "bias", None)
        return [(weight, bias if isinstance(bias, torch.Tensor) else None)]
    weights = getattr(classifier, "weights", None)
    if isinstance(weights, nn.ParameterList) and all(w.dim() == 2 for w in weights):
        biases = getattr(classifier, "biases", None)
        biases = list(biases) if isinstance(biases, nn.ParameterList) and len(biases) == len(weights) else None
        return [(w, biases[i] if biases is not None else None) for i, w in enumerate(weights)]
    raise ValueError(f"{type(classifier).__name__} has no weight matrix (a 'weight' Parameter of shape (classes, "
                     f"features), or 'weights' blocks) to align")


@torch.no_grad()
def weight_align(classifier: nn.Module, old_classes: Sequence[int] | torch.Tensor,
                 new_classes: Sequence[int] | torch.Tensor, *, bias: bool = False) -> float:
    """Weight Aligning (Zhao et al., 2020): scale the new classes' weight vectors (rows of the classifier's weight)
    by ``gamma = mean_{c in old} ||W_c||_2 / mean_{c in new} ||W_c||_2``, in place, so that both groups have the
    same mean norm.

    :param classifier: see :func:`classifier_rows`.
    :param old_classes, new_classes: output rows (class ids), each non-empty.
    :param bias: scale the new classes' biases by ``gamma`` too (FACIL's ``--apply-to-bias``; the paper, PyCIL and
        the default leave biases alone).
    :returns: ``gamma``.
    :raises ValueError: for an empty group, a class the classifier has no row for, a class in both groups, or a
        zero mean norm of the new classes.
    """
    blocks = classifier_rows(classifier)
    rows = sum(w.shape[0] for w, _ in blocks)
    old = torch.as_tensor(old_classes, dtype=torch.long).flatten().unique()
    new = torch.as_tensor(new_classes, dtype=torch.long).flatten().unique()
    if not len(old) or not len(new):
        raise ValueError(f"weight_align needs old and new classes, got {old.tolist()} and {new.tolist()}")
    both = torch.cat([old, new])
    if int(both.min()) < 0 or int(both.max()) >= rows:
        raise ValueError(f"weight_align: the classifier has {rows} output rows; classes {both.tolist()} were given")
    if len(torch.cat([old, new]).unique()) < len(old) + len(new):
        raise ValueError(f"weight_align: classes {sorted(set(old.tolist()) & set(new.tolist()))} are both old and new")
    norms = torch.cat([w.detach() for w, _ in blocks]).norm(dim=1)
    mean_new = norms[new].mean()
    if float(mean_new) == 0.0:
        raise ValueError("weight_align: the new classes' weight vectors are all zero")
    gamma = norms[old].mean() / mean_new
    start = 0
    for w, b in blocks:
        local = new[(new >= start) & (new < start + w.shape[0])] - start
        if len(local):
            w[local] *= gamma.to(w.dtype)
            if bias and b is not None:
                b[local] *= gamma.to(b.dtype)
        start += w.shape[0]
    return float(gamma)


class WA:
    """Weight Aligning (Zhao et al., 2020) as a training plugin: exemplars, distillation weighted by the share of
    old classes, and the new classes' weight norms aligned after each experience (the module docstring gives the
    formulas).

    :param mem_size: exemplars in all (the paper: 2000), split evenly over the classes seen.
    :param temperature: the distillation temperature ``T`` (> 0; the paper: 2).
    :param kd_lambda: the distillation weight ``lambda`` in ``[0, 1]``; None: ``old classes / classes seen``, the
        paper's adaptive weight.
    :param selection: how exemplars are picked: ``herding`` (iCaRL's, the paper's), ``closest_to_center``,
        ``random``.
    :param classifier: dotted name of the linear head whose rows are aligned and whose input are the exemplar
        features (default: the submodule named ``classifier``, else the model's last ``torch.nn.Linear``).
    :param align: align the weight norms after each experience; False leaves distillation with exemplars alone
        (the paper's "KD" baseline).
    :param align_bias: scale the new classes' biases by ``gamma`` too.
    :param clip_weights: after every optimizer step, clip the head's weights to be non-negative (an option of
        FACIL's WA, not PyCIL's).
    :param seed: seeds the random selection (default: drawn from torch's global generator).
    :raises ValueError: for an option out of range or an unknown ``selection``; at training, for a model without
        that classifier.

    The distillation term is returned from ``loss_terms``; ``before_backward`` then scales the loop's criterion by
    ``1 - lambda`` (other plugins' terms are kept as they are). The first experience trains with the criterion
    alone. ``gammas`` lists the factor applied after each experience that had old classes.
    """

    name = "wa"

    def __init__(self, mem_size: int = 2000, temperature: float = 2.0, kd_lambda: float | None = None,
                 selection: str = "herding", classifier: str | None = None, align: bool = True,
                 align_bias: bool = False, clip_weights: bool = False, seed: int | None = None) -> None:
        if classifier is not None and (not isinstance(classifier, str) or not classifier):
            raise ValueError(f"{self.name}: classifier must be the name of a submodule, got {classifier!r}")
        self.policy = exemplar_memory(mem_size, selection, classifier, seed, owner=self.name)
        self.temperature = positive_number(temperature, "temperature", self.name)
        self.kd_lambda = None if kd_lambda is None else unit_interval(kd_lambda, "kd_lambda", self.name)
        self.mem_size, self.selection, self.classifier = mem_size, selection, classifier
        self.align, self.align_bias, self.clip_weights = bool(align), bool(align_bias), bool(clip_weights)
        self.prev_model: nn.Module | None = None
        self.prev_classes: list[int] = []
        #: The ``gamma`` of every alignment so far.
        self.gammas: list[float] = []
        self._pending: Mapping[str, torch.Tensor] | None = None
        self._old_units: torch.Tensor | None = None
        self._lambda = 0.0
        self._head: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    @property
    def buffer(self) -> CLDataset | None:
        """The exemplars (None before the first experience ends)."""
        return self.policy.buffer

    def current_lambda(self, classes: Sequence[int]) -> float:
        """``lambda`` for an experience bringing ``classes``: ``kd_lambda``, or ``n / (n + m)`` with ``n`` the
        classes seen before that are not in ``classes`` and ``n + m`` all the classes seen with them."""
        if self.kd_lambda is not None:
            return self.kd_lambda
        seen = set(self.prev_classes) | set(classes)
        old = set(self.prev_classes) - set(classes)
        return len(old) / len(seen) if seen else 0.0

    # ------------------------------------------------------------------ training

    def _materialise(self, model: nn.Module) -> None:
        if self._pending is not None:
            prev = copy.deepcopy(model)
            prev.load_state_dict(self._pending)
            self._freeze(prev)
            self._pending = None

    def _freeze(self, model: nn.Module) -> None:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.prev_model = model

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        exp = state.experience
        if self.policy.needs_restore:  # loaded from a checkpoint: the exemplars come back from the stream
            if exp is None or exp.stream is None:
                raise RuntimeError(f"{self.name}: the exemplars were loaded from a checkpoint and are rebuilt from "
                                   f"the stream of the experience being trained, but that experience has no stream")
            self.policy.restore({e.index: e.dataset for e in exp.stream})
        self._materialise(state.model)
        head = find_classifier(state.model, self.classifier, self.name)
        try:
            self._head = classifier_rows(head)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        self._lambda = self.current_lambda(exp.classes)  # type: ignore[union-attr]
        self._old_units = None
        if self.prev_model is not None and self.prev_classes:
            self._old_units = torch.tensor(self.prev_classes, dtype=torch.long, device=state.device)
        buffer = self.policy.buffer
        if buffer is not None:
            state.dataset = state.dataset.concat(buffer.train())  # type: ignore[union-attr]

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self._old_units is None:
            return None
        with torch.no_grad():
            old = model_forward(self.prev_model, state.mb_x, state.mb_task)  # type: ignore[arg-type]
        return self._lambda * distillation_loss(state.mb_output, old, self._old_units, self.temperature)

    @clkernel.hookimpl
    def before_backward(self, state: TrainState) -> None:
        if self._old_units is not None:  # (1 - lambda) * criterion + the terms
            criterion = state.loss - sum(state.loss_terms.values())  # type: ignore[operator]
            state.loss = state.loss - self._lambda * criterion  # type: ignore[operator]

    @clkernel.hookimpl
    def after_update(self, state: TrainState) -> None:
        if self.clip_weights:
            with torch.no_grad():
                for w, _ in self._head:
                    w.clamp_(min=0)

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        model, exp = state.model, state.experience
        new = sorted(set(exp.classes))  # type: ignore[union-attr]
        old = [c for c in self.prev_classes if c not in new]
        if self.align and old and new:
            self.gammas.append(weight_align(find_classifier(model, self.classifier, self.name), old, new,
                                            bias=self.align_bias))
        self.policy.update(exp, model=model)  # type: ignore[arg-type]
        self.prev_classes = sorted(set(self.prev_classes) | set(new))
        self._freeze(copy.deepcopy(model))
        self._pending = None
        self._old_units, self._head = None, []

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        prev = self._pending
        if prev is None and self.prev_model is not None:
            prev = self.prev_model.state_dict()
        return {"policy": self.policy.state_dict(),
                "prev_model": None if prev is None else {k: v.clone() for k, v in prev.items()},
                "prev_classes": torch.tensor(self.prev_classes, dtype=torch.long),
                "gammas": torch.tensor(self.gammas, dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the exemplars are rebuilt from the stream and the previous model from the live model
        at the next training experience."""
        self.policy.load_state_dict(state["policy"])
        self._pending = state["prev_model"]
        self.prev_model = None
        self.prev_classes = [int(c) for c in state["prev_classes"].tolist()]
        self.gammas = [float(g) for g in state["gammas"].tolist()]
