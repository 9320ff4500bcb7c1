"""Dynamic modules: classifiers that grow with new classes or new tasks, and multi-task models routed by task label.

Every module here implements the kernel's adaptation protocol (``adaptation(experience)``, called by the loop
before each training and evaluation experience). Adaptation is idempotent. New parameters are always new
``Parameter`` objects and old ones are never replaced, so :func:`clkernel.update_optimizer` trains the new ones and
keeps the optimizer state (momentum, Adam moments) of the old ones.

Checkpoints: a grown module's ``state_dict`` loads into a freshly built one (the structure is rebuilt from it).

The growing and multi-head classifiers follow Avalanche's ``IncrementalClassifier`` and ``MultiHeadClassifier``
(Lomonaco et al., 2021, "Avalanche: an End-to-End Library for Continual Learning").
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from clkernel import Experience
from clkernel.log import get_logger
from clkernel.validate import non_negative_int, positive_int

__all__ = ["AdaptiveModule", "IncrementalClassifier", "MultiHeadClassifier", "MultiTaskDecorator",
           "MultiTaskModule", "UnknownTaskError", "as_multitask", "classes_by_task"]

log = get_logger("clkernel.models")

#: What a multi-task model does with a task label met at evaluation before any training (see MultiTaskModule).
UNSEEN_TASK_POLICIES = ("fallback", "error")


class UnknownTaskError(ValueError):
    """A multi-task model got a task label it was never trained on (and, for a forward call, never told about)."""


def classes_by_task(experience: Experience) -> dict[int, list[int]]:
    """The classes of each task label of ``experience``: task -> sorted class ids (read from its dataset when it
    mixes several tasks)."""
    tasks = sorted({int(t) for t in experience.task_labels})
    if len(tasks) == 1:
        return {tasks[0]: sorted(int(c) for c in experience.classes)}
    ds = experience.dataset
    return {t: ds.targets[ds.task_labels == t].unique().tolist() for t in tasks}


class AdaptiveModule(nn.Module):
    """Base of this package's dynamic modules: the kernel's ``adaptation(experience)`` runs :meth:`adapt`.

    A parent that adapts its dynamic submodules itself (to give each its own share of the experience) sets their
    ``auto_adapt = False``, which turns the kernel's direct call on them into a no-op. New parameters are created
    on the device and dtype the module was moved to (read from an empty, non-persistent buffer).
    """

    auto_adapt: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def _factory(self) -> dict[str, Any]:
        return {"device": self._anchor.device, "dtype": self._anchor.dtype}

    def adaptation(self, experience: Experience) -> None:
        """The kernel's adaptation protocol: runs :meth:`adapt` unless a parent adapts this module itself."""
        if self.auto_adapt:
            self.adapt(experience)

    def adapt(self, experience: Experience) -> None:
        """Change the structure for ``experience`` (``self.training`` tells training from evaluation)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------- growing head


class IncrementalClassifier(AdaptiveModule):
    """A linear classifier that adds output units when an experience brings unseen classes.

    Output unit ``c`` scores class ``c``; the classifier grows to ``max(class) + 1`` units (never shrinks) and keeps
    the old units' weights. The weights are a list of blocks, one per growth, concatenated in ``forward``: old
    blocks stay the same ``Parameter`` objects, so the optimizer keeps their state.

    With ``masking`` (the default), units of classes not yet seen in a *training* experience output
    ``mask_value``: an untrained unit can never win the argmax nor take probability mass. Evaluation experiences
    grow the classifier too (so outputs are wide enough for their targets) but activate no unit.

    :param in_features: size of each input sample.
    :param initial_out_features: units before any adaptation (all masked until their class is trained).
    :param masking: mask the units of classes never trained.
    :param mask_value: the output of masked units (finite, so a masked target gives a large finite loss, not NaN).
    :param bias: give the units a bias.
    :raises ValueError: for an ``in_features`` that is not a positive integer or an ``initial_out_features``
        that is not an integer >= 0.

    ``forward(x)``: float ``(B, in_features)`` -> logits ``(B, out_features)``.
    """

    def __init__(self, in_features: int, initial_out_features: int = 2, *, masking: bool = True,
                 mask_value: float = -1000.0, bias: bool = True) -> None:
        super().__init__()
        positive_int(in_features, "in_features", "IncrementalClassifier")
        non_negative_int(initial_out_features, "initial_out_features", "IncrementalClassifier")
        self.in_features = in_features
        self.masking = masking
        self.mask_value = float(mask_value)
        self.has_bias = bias
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        #: True for the units whose class has been trained.
        self.register_buffer("active_units", torch.zeros(0, dtype=torch.bool))
        self._all_active = True
        if initial_out_features:
            self._add_units(initial_out_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options: Any) -> IncrementalClassifier:
        """An incremental classifier whose first block is ``linear``'s own parameters (same objects)."""
        clf = cls(linear.in_features, 0, bias=linear.bias is not None, **options)
        clf.weights.append(linear.weight)
        if linear.bias is not None:
            clf.biases.append(linear.bias)
        clf.active_units = torch.zeros(linear.out_features, dtype=torch.bool, device=linear.weight.device)
        clf._anchor = clf._anchor.to(device=linear.weight.device, dtype=linear.weight.dtype)
        clf._all_active = False
        return clf

    @property
    def out_features(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    @property
    def weight(self) -> torch.Tensor:
        """All units' weights, ``(out_features, in_features)``."""
        return self.weights[0] if len(self.weights) == 1 else torch.cat(tuple(self.weights))

    @property
    def bias(self) -> torch.Tensor | None:
        if not self.has_bias:
            return None
        return self.biases[0] if len(self.biases) == 1 else torch.cat(tuple(self.biases))

    def _add_units(self, n: int) -> None:
        linear = nn.Linear(self.in_features, n, bias=self.has_bias, **self._factory)
        self.weights.append(linear.weight)
        if self.has_bias:
            self.biases.append(linear.bias)
        self.active_units = torch.cat([self.active_units, self.active_units.new_zeros(n)])
        self._all_active = False

    @torch.no_grad()
    def grow(self, classes: Iterable[int], *, activate: bool = True) -> None:
        """Make room for ``classes`` (units up to the largest), and mark them trained when ``activate``.

        :raises ValueError: for a negative class id.
        """
        classes = sorted({int(c) for c in classes})
        if not classes:
            return
        if classes[0] < 0:
            raise ValueError(f"IncrementalClassifier: class ids must be >= 0, got {classes[0]}")
        missing = classes[-1] + 1 - self.out_features
        if missing > 0:
            self._add_units(missing)
        if activate:
            self.active_units[torch.tensor(classes, device=self.active_units.device)] = True
        self._all_active = bool(self.active_units.all())

    def adapt(self, experience: Experience) -> None:
        self.grow(experience.classes, activate=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.weights):
            raise RuntimeError("IncrementalClassifier has no output unit yet (initial_out_features=0): adapt it "
                               "to an experience first")
        out = F.linear(x, self.weight, self.bias)
        if self.masking and not self._all_active:
            out = torch.where(self.active_units, out, self.mask_value)
        return out

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        sizes = []
        while f"{prefix}weights.{len(sizes)}" in state_dict:
            sizes.append(state_dict[f"{prefix}weights.{len(sizes)}"].shape[0])
        if sizes and sizes != [w.shape[0] for w in self.weights]:  # rebuild the blocks the checkpoint has
            self.weights = nn.ParameterList(
                nn.Parameter(torch.empty(n, self.in_features, **self._factory)) for n in sizes)
            self.biases = nn.ParameterList(
                nn.Parameter(torch.empty(n, **self._factory)) for n in sizes) if self.has_bias else nn.ParameterList()
            self.active_units = torch.zeros(sum(sizes), dtype=torch.bool, device=self._anchor.device)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._all_active = bool(self.active_units.all())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, masking={self.masking}, "
                f"active={int(self.active_units.sum())}")


# --------------------------------------------------------------------------------------------------- multi-task


class MultiTaskModule(AdaptiveModule):
    """Base of models whose output depends on the task label: ``forward(x, task_labels)``.

    ``forward`` splits the minibatch by task label, calls :meth:`forward_single_task` once per task present, and
    reassembles the outputs in the original sample order (outputs narrower than the widest are padded on the last
    dimension with ``pad_value``). Splitting costs one host synchronisation per minibatch (the task counts).

    Tasks are registered by *training* adaptation (:meth:`add_task` builds their structure). A task label that
    was never trained:

    - met by an evaluation experience: with ``unseen_task="fallback"`` (default), the task is recorded as
      untrained, a warning is logged once, and its samples get :meth:`forward_unseen_task`'s output (for the
      classifiers here: all-zero logits, the same for every class, so never a trained head's answer); with
      ``unseen_task="error"`` adaptation raises :class:`UnknownTaskError`.
    - in a forward call without such an announcement: always :class:`UnknownTaskError`.

    Subclasses set ``takes_task_labels = True`` (inherited), so the kernel's loop calls ``model(x, t)``.
    """

    takes_task_labels = True
    #: Value of the units a task's output lacks, when tasks of different output widths share a minibatch.
    pad_value: float = 0.0
    #: Log a warning when evaluation meets an untrained task (owners turn it off on inner modules).
    warn_untrained: bool = True

    def __init__(self, *, unseen_task: str = "fallback") -> None:
        super().__init__()
        if unseen_task not in UNSEEN_TASK_POLICIES:
            raise ValueError(f"unseen_task must be one of {', '.join(UNSEEN_TASK_POLICIES)}; got {unseen_task!r}")
        self.unseen_task = unseen_task
        self._known: list[int] = []
        self._untrained: list[int] = []

    @property
    def known_tasks(self) -> list[int]:
        """The task labels trained so far, in the order first met."""
        return list(self._known)

    @property
    def untrained_tasks(self) -> list[int]:
        """Task labels met by evaluation before any training: they get the fallback output."""
        return list(self._untrained)

    def adapt(self, experience: Experience) -> None:
        tasks = sorted({int(t) for t in experience.task_labels})
        if self.training:
            for t in tasks:
                if t not in self._known:
                    self.add_task(t, experience)
                    self._known.append(t)
                    if t in self._untrained:
                        self._untrained.remove(t)
            return
        new = [t for t in tasks if t not in self._known and t not in self._untrained]
        if not new:
            return
        if self.unseen_task == "error":
            raise UnknownTaskError(
                f"{type(self).__name__}: evaluation experience {experience.index} has task label(s) {new}, never "
                f"trained (trained tasks: {self._known}); unseen_task='error' forbids evaluating them")
        if self.warn_untrained:
            log.warning("untrained_task", model=type(self).__name__, tasks=new, trained_tasks=self.known_tasks,
                        experience=experience.index,
                        fallback="all-zero outputs (no head or column exists for these tasks yet)")
        self._untrained.extend(new)

    def add_task(self, task: int, experience: Experience) -> None:
        """Build what ``task`` needs (a head, a column): called once, by its first training experience."""

    def forward_single_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """The output for samples ``x`` that all have task label ``task`` (a trained task)."""
        raise NotImplementedError

    def forward_unseen_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """The fallback output for samples of an untrained task met at evaluation; subclasses define it."""
        raise UnknownTaskError(f"{type(self).__name__} has no output for task {task}, which was never trained "
                               f"(trained tasks: {self._known}), and defines no fallback (forward_unseen_task)")

    def _forward_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if task in self._known:
            return self.forward_single_task(x, task)
        if task in self._untrained:
            return self.forward_unseen_task(x, task)
        raise UnknownTaskError(
            f"{type(self).__name__} got task label {task}, which it was never trained on (trained tasks: "
            f"{self._known}). Train that task first, or evaluate it through a clkernel Strategy, which announces "
            f"each experience's tasks and gives untrained ones the documented fallback output")

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor | int) -> torch.Tensor:
        """The outputs for ``x`` ``(B, ...)``, each sample through its task: ``task_labels`` is int64 ``(B,)``, a
        0-d tensor or an int (one task for all). Returns ``(B, *out)``, in the samples' order.

        :raises UnknownTaskError: for a task neither trained nor announced by an evaluation experience.
        :raises ValueError: when ``task_labels`` has not one label per sample.
        """
        if isinstance(task_labels, int):
            return self._forward_task(x, task_labels)
        if task_labels.dim() == 0:
            return self._forward_task(x, int(task_labels))
        if task_labels.shape[0] != x.shape[0]:
            raise ValueError(f"{type(self).__name__}: {task_labels.shape[0]} task labels for {x.shape[0]} samples")
        tasks, counts = torch.unique(task_labels, sorted=True, return_counts=True)
        tasks, counts = torch.stack((tasks, counts)).tolist()  # the one host sync: the split's sizes
        if len(tasks) == 1:
            return self._forward_task(x, tasks[0])
        order = torch.argsort(task_labels, stable=True)
        outs = [self._forward_task(chunk, t) for chunk, t in zip(x[order].split(counts), tasks)]
        width = max(o.shape[-1] for o in outs)
        outs = [o if o.shape[-1] == width else F.pad(o, (0, width - o.shape[-1]), value=self.pad_value)
                for o in outs]
        return torch.cat(outs)[torch.argsort(order)]

    # checkpoints: the task registry travels in the state dict; restore_tasks rebuilds the structure
    def get_extra_state(self) -> dict[str, list[int]]:
        return {"known_tasks": list(self._known), "untrained_tasks": list(self._untrained)}

    def set_extra_state(self, state: dict[str, list[int]]) -> None:
        self._known = [int(t) for t in state["known_tasks"]]
        self._untrained = [int(t) for t in state["untrained_tasks"]]
        self.restore_tasks()

    def restore_tasks(self) -> None:
        """Rebuild the structure for ``known_tasks`` after a checkpoint load, before the parameters load."""


class MultiHeadClassifier(MultiTaskModule):
    """One :class:`IncrementalClassifier` head per task label, created by the task's first training experience.

    Each head grows with its own task's classes and (with ``masking``) masks the units of classes its task never
    trained, so targets may be global class ids or per-task ones. Outputs of heads of different widths in one
    minibatch are padded with ``mask_value``. A first head exists before any training (so an optimizer can be
    built on a fresh model); the first task trained gets it.

    :param in_features: size of each input sample.
    :param initial_out_features: units of a new head (use the benchmark's ``num_classes`` for equal widths).
    :param unseen_task: ``"fallback"`` (all-zero outputs for tasks met at evaluation before training, with a
        warning) or ``"error"``; see :class:`MultiTaskModule`.
    """

    def __init__(self, in_features: int, initial_out_features: int = 2, *, masking: bool = True,
                 mask_value: float = -1000.0, unseen_task: str = "fallback") -> None:
        super().__init__(unseen_task=unseen_task)
        self.in_features = in_features
        self.initial_out_features = initial_out_features
        self.masking = masking
        self.mask_value = float(mask_value)
        self.pad_value = self.mask_value
        self.heads = nn.ModuleDict()
        self.pending: IncrementalClassifier | None = self._new_head()

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options: Any) -> MultiHeadClassifier:
        """A multi-head classifier whose first head (for the first task trained) is ``linear`` itself."""
        mhc = cls(linear.in_features, linear.out_features, **options)
        mhc.pending = IncrementalClassifier.from_linear(linear, masking=mhc.masking, mask_value=mhc.mask_value)
        mhc.pending.auto_adapt = False
        mhc._anchor = mhc._anchor.to(device=linear.weight.device, dtype=linear.weight.dtype)
        return mhc

    def _new_head(self) -> IncrementalClassifier:
        head = IncrementalClassifier(self.in_features, self.initial_out_features, masking=self.masking,
                                     mask_value=self.mask_value)
        head.auto_adapt = False
        return head.to(**self._factory)

    @property
    def out_features(self) -> int:
        """The widest head's units: the width of every output."""
        heads = list(self.heads.values()) or ([self.pending] if self.pending is not None else [])
        return max((h.out_features for h in heads), default=self.initial_out_features)

    def head(self, task: int) -> IncrementalClassifier:
        """The head of ``task``."""
        key = str(task)
        if key not in self.heads:
            raise UnknownTaskError(f"MultiHeadClassifier has no head for task {task} (heads: {list(self.heads)})")
        return self.heads[key]

    def add_task(self, task: int, experience: Experience) -> None:
        if self.pending is not None:
            head, self.pending = self.pending, None
        else:
            head = self._new_head()
        self.heads[str(task)] = head

    def adapt(self, experience: Experience) -> None:
        super().adapt(experience)
        for task, classes in classes_by_task(experience).items():
            if str(task) in self.heads:
                self.heads[str(task)].grow(classes, activate=self.training)

    def forward_single_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.head(task)(x)

    def forward_unseen_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.out_features, device=x.device, dtype=self._anchor.dtype)

    def restore_tasks(self) -> None:
        old = dict(self.heads)
        self.heads = nn.ModuleDict()
        for t in self._known:
            head = old.get(str(t))
            if head is None:
                head, self.pending = (self.pending, None) if self.pending is not None else (self._new_head(), None)
            self.heads[str(t)] = head
        if not self._known and self.pending is None:
            self.pending = self._new_head()


class MultiTaskDecorator(MultiTaskModule):
    """A single-head model turned multi-head: its classifier becomes a :class:`MultiHeadClassifier`.

    The backbone (the model with its classifier replaced by ``nn.Identity``) runs once on the whole minibatch;
    only the heads are split by task. The first task trained gets the original classifier as its head.
    """

    def __init__(self, model: nn.Module, classifier_name: str, *, masking: bool = True, mask_value: float = -1000.0,
                 unseen_task: str = "fallback") -> None:
        super().__init__(unseen_task=unseen_task)
        try:
            old = model.get_submodule(classifier_name)
        except AttributeError:
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(f"as_multitask: {type(model).__name__} has no submodule {classifier_name!r} (its "
                             f"linear layers: {', '.join(names) or 'none'})") from None
        if not isinstance(old, nn.Linear):
            raise TypeError(f"as_multitask: {classifier_name!r} of {type(model).__name__} is a "
                            f"{type(old).__name__}, expected a torch.nn.Linear classifier")
        parent_name, _, leaf = classifier_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, nn.Identity())
        self.classifier_name = classifier_name
        self.backbone = model
        self.classifier = MultiHeadClassifier.from_linear(old, masking=masking, mask_value=mask_value,
                                                          unseen_task=unseen_task)
        self.classifier.auto_adapt = False
        self.classifier.warn_untrained = False
        self.pad_value = self.classifier.pad_value

    def adapt(self, experience: Experience) -> None:
        super().adapt(experience)
        self.classifier.adapt(experience)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output, flattened to ``(batch, features)``."""
        return self.backbone(x).flatten(1)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor | int) -> torch.Tensor:
        return self.classifier(self.features(x), task_labels)

    def forward_single_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.classifier.forward_single_task(self.features(x), task)

    def forward_unseen_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.classifier.forward_unseen_task(x, task)


def as_multitask(model: nn.Module, classifier_name: str, **options: Any) -> MultiTaskDecorator:
    """Convert a single-head model into a multi-head one: the ``nn.Linear`` at ``classifier_name`` (a dotted path,
    e.g. ``"classifier"`` or ``"head.2"``) becomes a :class:`MultiHeadClassifier`. Modifies ``model`` in place.

    Options: ``masking``, ``mask_value``, ``unseen_task`` (see :class:`MultiHeadClassifier`).
    """
    return MultiTaskDecorator(model, classifier_name, **options)
