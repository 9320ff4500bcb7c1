"""iCaRL (Rebuffi, Kolesnikov, Sperl and Lampert, 2017, "iCaRL: Incremental Classifier and Representation
Learning", CVPR) as a training plugin.

Three parts, each as in the paper:

- **Exemplars** (a memory of ``mem_size`` samples, ``mem_size / classes seen`` per class): after each experience,
  the exemplars of a new class are picked by *herding*: the ``k``-th exemplar is the sample ``x`` that brings the
  mean of the picked features closest to the class mean,
  ``p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||`` with L2-normalised features ``phi``; a class's
  set shrinks by dropping its last exemplars. The memory is clkernel-replay's :class:`~clkernel_replay.ParametricBuffer`
  grouped by class with a :class:`~clkernel_replay.HerdingSelection` on this package's features.
- **Representation learning**: each experience trains on its data plus the exemplars, with binary cross-entropy
  over the classes seen so far (:func:`icarl_loss`): a new class's target is one-hot, an old class's target is the
  previous model's sigmoid output on the same sample (distillation). This replaces the loop's criterion.
- **Classification** by the nearest mean of exemplars (:class:`~clkernel_icarl.NCMClassifier`): after each
  experience the exemplars' mean (normalised) features are computed with the model as trained; at evaluation the
  model's outputs are replaced by the classifier's scores on the features.

The features ``phi(x)`` are the input of the model's classifier (its final linear layer), read with a forward
pre-hook during the model's own forward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from clkernel_replay import (
    ClosestToCenterSelection,
    HerdingSelection,
    ParametricBuffer,
    RandomSelection,
)
from torch import nn

import clkernel
from clkernel import CLDataset, TrainState, iterate_minibatches, model_forward
from clkernel.validate import positive_int, positive_number
from clkernel_icarl.ncm import NCMClassifier, class_means

__all__ = ["SELECTIONS", "ICaRL", "classifier_features", "exemplar_memory", "find_classifier", "icarl_loss"]


def find_classifier(model: nn.Module, classifier: str | None = None, owner: str = "icarl") -> nn.Module:
    """The model's classifier: the submodule named ``classifier`` (a dotted path) when given, else the submodule
    called ``classifier`` (every model of clkernel-models has one), else the model's last ``torch.nn.Linear``.

    :raises ValueError: naming the model and its submodules when there is no such submodule, or no Linear layer.
    """
    if classifier is not None:
        try:
            return model.get_submodule(classifier)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n][:20]
            raise ValueError(f"{owner}: {type(model).__name__} has no submodule {classifier!r} to take as its "
                             f"classifier; its submodules: {', '.join(names) or 'none'}") from None
    own = getattr(model, "classifier", None)
    if isinstance(own, nn.Module):
        return own
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{owner}: {type(model).__name__} has no submodule named 'classifier' and no torch.nn.Linear "
                         f"layer; set classifier=NAME to the submodule whose input are the features")
    return linears[-1]


class _Tap:
    """A forward pre-hook keeping the first input of its module, flattened to ``(B, F)``, while armed."""

    def __init__(self) -> None:
        self.armed = False
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.armed:
            self.value = args[0].flatten(1)


@torch.no_grad()
def classifier_features(model: nn.Module, dataset: CLDataset, *, classifier: str | None = None,
                        batch_size: int = 256, device: torch.device | str | None = None) -> torch.Tensor:
    """The features of every sample of ``dataset`` (eval transforms): the input of the model's classifier
    (:func:`find_classifier`), float32 ``(len(dataset), F)`` on the CPU, in dataset order.

    The model runs in eval mode without gradients (its modes are restored), on ``device`` (default: where its
    parameters are), with the samples' task labels (:func:`clkernel.model_forward`).

    :raises ValueError: when the model has no classifier, or its forward pass does not call it.
    """
    module = find_classifier(model, classifier)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    tap = _Tap()
    tap.armed = True
    handle = module.register_forward_pre_hook(tap)
    rows = []
    try:
        with clkernel.eval_mode(model):
            for x, _y, t in iterate_minibatches(dataset.eval(), batch_size, shuffle=False):
                tap.value = None
                model_forward(model, x.to(device), t.to(device))
                if tap.value is None:
                    raise ValueError(f"the forward pass of {type(model).__name__} did not call its classifier "
                                     f"{type(module).__name__}")
                rows.append(tap.value.float().cpu())
    finally:
        handle.remove()
    return torch.cat(rows) if rows else torch.zeros(0, 0)


#: Exemplar selections :func:`exemplar_memory` knows.
SELECTIONS = ("herding", "closest_to_center", "random")


def _normalised_classifier_features(selection: Any, dataset: CLDataset, model: nn.Module | None) -> torch.Tensor:
    if model is None:
        raise ValueError("exemplar selection on classifier features needs the model: update(..., model=model)")
    feats = classifier_features(model, dataset, classifier=selection.classifier, batch_size=selection.batch_size)
    return F.normalize(feats, dim=1)


class _Herding(HerdingSelection):
    """Herding on the L2-normalised inputs of the model's classifier."""

    def __init__(self, classifier: str | None) -> None:
        super().__init__(normalize=True)
        self.classifier = classifier

    def features(self, dataset: CLDataset, model: nn.Module | None) -> torch.Tensor:
        return _normalised_classifier_features(self, dataset, model)


class _ClosestToCenter(ClosestToCenterSelection):
    """The samples nearest the class mean of the L2-normalised inputs of the model's classifier."""

    def __init__(self, classifier: str | None) -> None:
        super().__init__(normalize=True)
        self.classifier = classifier

    def features(self, dataset: CLDataset, model: nn.Module | None) -> torch.Tensor:
        return _normalised_classifier_features(self, dataset, model)


def exemplar_memory(mem_size: int, selection: str = "herding", classifier: str | None = None,
                    seed: int | None = None, *, owner: str = "icarl") -> ParametricBuffer:
    """iCaRL's exemplar memory: a clkernel-replay :class:`~clkernel_replay.ParametricBuffer` of ``mem_size``
    samples split evenly over the classes seen, each class keeping the first samples of the order ``selection``
    gives, computed on the L2-normalised inputs of the model's classifier (:func:`classifier_features`) when
    ``policy.update(experience, model=model)`` runs: ``herding`` (Rebuffi et al., 2017), ``closest_to_center`` or
    ``random`` (seeded by ``seed``).

    :param owner: names the plugin in error messages.
    :raises ValueError: for a ``mem_size`` that is not a positive integer or an unknown ``selection``.
    """
    positive_int(mem_size, "mem_size", owner)
    if selection not in SELECTIONS:
        raise ValueError(f"{owner}: selection {selection!r} is unknown; choose one of {', '.join(SELECTIONS)}")
    if selection == "random":
        strategy: Any = RandomSelection(seed)
    elif selection == "herding":
        strategy = _Herding(classifier)
    else:
        strategy = _ClosestToCenter(classifier)
    return ParametricBuffer(mem_size, groupby="class", selection=strategy, seed=seed)


def icarl_loss(output: torch.Tensor, targets: torch.Tensor, units: torch.Tensor,
               old_output: torch.Tensor | None = None, old_units: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """iCaRL's classification and distillation loss: binary cross-entropy with logits over the output ``units``,
    averaged over samples and units::

        mean_{i, c in units} BCE(sigmoid(output[i, c]), target[i, c])
        target[i, c] = 1 if targets[i] == c else 0           c a new class
        target[i, c] = sigmoid(old_output[i, c] / T)          c in old_units (distillation)

    :param output: the model's logits, float ``(B, C)``.
    :param targets: int64 ``(B,)``.
    :param units: int64 ``(U,)``, the classes seen so far (old and new), each ``< C``.
    :param old_output: the previous model's logits for the same samples, ``(B, C')``; None before it exists.
    :param old_units: int64 ``(O,)``, the classes the previous model learned (a subset of ``units``, each ``< C'``).
    :param temperature: ``T``, dividing the previous model's logits (1 in the paper; van de Ven & Tolias's
        reproduction uses 2).
    :returns: a 0-d tensor, differentiable with respect to ``output``.
    :raises ValueError: when a unit is not an output of the model.
    """
    if len(units) and int(units.max()) >= output.shape[1]:
        raise ValueError(f"icarl: the model has {output.shape[1]} outputs but classes up to {int(units.max())} were "
                         f"seen; give the model an output unit per class")
    logits = output.index_select(1, units)
    target = (targets.unsqueeze(1) == units.unsqueeze(0)).to(logits.dtype)
    if old_output is not None and old_units is not None and len(old_units):
        where = torch.searchsorted(units, old_units)
        target[:, where] = torch.sigmoid(old_output.index_select(1, old_units).to(logits.dtype) / temperature)
    return F.binary_cross_entropy_with_logits(logits, target)


class ICaRL:
    """iCaRL (Rebuffi et al., 2017) as a training plugin: herding exemplars replayed with the experience, sigmoid
    distillation from the previous model, nearest-mean-of-exemplars classification (the module docstring gives
    each part).

    :param mem_size: exemplars in all (the paper's ``K``), split evenly over the classes seen.
    :param selection: how a new class's exemplars are picked: ``herding`` (the paper's), ``closest_to_center``
        (the samples nearest the class mean) or ``random``.
    :param classifier: dotted name of the submodule whose input are the features (default: see
        :func:`find_classifier`).
    :param nme: classify by the nearest mean of exemplars at evaluation (the paper's iCaRL); False keeps the
        network's outputs (the paper's "hybrid1").
    :param temperature: divides the previous model's logits before the sigmoid of the distillation targets (1, the
        paper's; van de Ven & Tolias's reproduction uses 2).
    :param seed: seeds the random selection (default: drawn from torch's global generator).
    :raises ValueError: for a ``mem_size`` that is not a positive integer, a ``temperature`` that is not
        positive, an unknown ``selection``, or a
        ``classifier`` that is not a non-empty string; at training, for a model without that classifier.

    The loss is :func:`icarl_loss` over the classes seen so far, returned from ``loss_terms``; ``before_backward``
    then drops the loop's criterion from ``state.loss`` (other plugins' terms are kept). Models that take task
    labels are not supported (iCaRL is a class-incremental method).
    """

    name = "icarl"

    def __init__(self, mem_size: int = 2000, selection: str = "herding", classifier: str | None = None,
                 nme: bool = True, temperature: float = 1.0, seed: int | None = None) -> None:
        if classifier is not None and (not isinstance(classifier, str) or not classifier):
            raise ValueError(f"{self.name}: classifier must be the name of a submodule, got {classifier!r}")
        self.policy = exemplar_memory(mem_size, selection, classifier, seed, owner=self.name)
        self.mem_size, self.selection, self.classifier, self.nme = mem_size, selection, classifier, bool(nme)
        self.temperature = positive_number(temperature, "temperature", self.name)
        self.ncm = NCMClassifier()
        self.prev_model: nn.Module | None = None
        self.prev_classes: list[int] = []
        self._pending: Mapping[str, torch.Tensor] | None = None  # loaded previous-model weights
        self._units: torch.Tensor | None = None
        self._old_units: torch.Tensor | None = None
        self._tap = _Tap()
        self._handle: Any = None

    @property
    def buffer(self) -> CLDataset | None:
        """The exemplars (None before the first experience ends)."""
        return self.policy.buffer

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
        find_classifier(state.model, self.classifier, self.name)  # fail now, naming the option, not mid-epoch
        seen = sorted(set(self.prev_classes) | set(exp.classes))  # type: ignore[union-attr]
        self._units = torch.tensor(seen, dtype=torch.long, device=state.device)
        self._old_units = torch.tensor(self.prev_classes, dtype=torch.long, device=state.device)
        buffer = self.policy.buffer
        if buffer is not None:
            state.dataset = state.dataset.concat(buffer.train())  # type: ignore[union-attr]

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self._units is None:
            return None
        old = None
        if self.prev_model is not None:
            with torch.no_grad():
                old = model_forward(self.prev_model, state.mb_x, state.mb_task)
        return icarl_loss(state.mb_output, state.mb_y, self._units, old, self._old_units, self.temperature)

    @clkernel.hookimpl
    def before_backward(self, state: TrainState) -> None:
        if self._units is not None:  # iCaRL's loss replaces the criterion's cross-entropy
            state.loss = sum(state.loss_terms.values())  # type: ignore[assignment]

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        model, exp = state.model, state.experience
        self.policy.update(exp, model=model)  # type: ignore[arg-type]
        self.ncm = NCMClassifier()
        buffer = self.policy.buffer
        if buffer is not None:
            feats = classifier_features(model, buffer, classifier=self.classifier, batch_size=state.eval_mb_size,
                                        device=state.device)
            self.ncm.update_class_means(*class_means(feats, buffer.targets.to(torch.long)))
        self.prev_classes = sorted(set(self.prev_classes) | set(exp.classes))  # type: ignore[union-attr]
        self._freeze(copy.deepcopy(model))
        self._pending = None
        self._units = self._old_units = None

    # ------------------------------------------------------------------ evaluation

    def _detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._tap.armed, self._tap.value = False, None

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        self._detach()
        if self.nme and bool(self.ncm.known.any()):
            self.ncm.to(state.device)
            self._handle = find_classifier(state.model, self.classifier, self.name).register_forward_pre_hook(
                self._tap)

    @clkernel.hookimpl
    def before_eval_forward(self, state: TrainState) -> None:
        if self._handle is not None:
            self._tap.armed, self._tap.value = True, None

    @clkernel.hookimpl
    def after_eval_forward(self, state: TrainState) -> None:
        if self._handle is None:
            return
        self._tap.armed = False
        features, self._tap.value = self._tap.value, None
        if features is None:
            raise ValueError(f"{self.name}: the evaluation forward pass did not call the model's classifier")
        scores = self.ncm(features)
        width = state.mb_output.shape[1]
        if scores.shape[1] < width:
            scores = F.pad(scores, (0, width - scores.shape[1]), value=self.ncm.mask_value)
        state.mb_output = scores

    @clkernel.hookimpl
    def after_eval(self, state: TrainState) -> None:
        self._detach()

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        self._detach()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        prev = self._pending
        if prev is None and self.prev_model is not None:
            prev = self.prev_model.state_dict()
        return {"policy": self.policy.state_dict(),
                "prev_model": None if prev is None else {k: v.clone() for k, v in prev.items()},
                "prev_classes": torch.tensor(self.prev_classes, dtype=torch.long),
                "ncm": {k: v.clone() for k, v in self.ncm.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the exemplars are rebuilt from the stream and the previous model from the live model
        at the next training experience."""
        self.policy.load_state_dict(state["policy"])
        self._pending = state["prev_model"]
        self.prev_model = None
        self.prev_classes = [int(c) for c in state["prev_classes"].tolist()]
        self.ncm = NCMClassifier()
        self.ncm.load_state_dict(state["ncm"])
