"""LUCIR (Hou, Pan, Loy, Wang and Lin, 2019, "Learning a Unified Classifier Incrementally via Rebalancing", CVPR).

Three components against the imbalance between old and new classes in class-incremental learning with exemplars:

- **Cosine normalisation** (:class:`CosineLinear`): logits ``sigma * cos(theta_c, f(x))``, a learnable scale
  ``sigma`` times the cosine between each class embedding and the features, so that old and new classes' logits have
  comparable magnitudes.
- **Less-forget constraint** (:func:`less_forget_loss`): ``lambda * (1 - cos(f(x), f_old(x)))``, averaged over the
  minibatch, keeps the normalised features close to the previous model's; ``lambda = lambda_base *
  sqrt(|C_old| / |C_new|)`` (the authors' code and PyCIL; the paper writes the ratio the other way up). The old
  classes' embeddings are kept fixed.
- **Inter-class separation** (:func:`margin_ranking_loss`): for each sample of an old class, the cosine to its
  own class embedding must exceed the ``K`` largest cosines to new-class embeddings by a margin ``m``:
  ``mean over (sample, k) of max(0, m - cos(theta_y, f) + cos(theta_k, f))`` (``K = 2``, ``m = 0.5``).

The loss is the criterion (cross-entropy on the cosine logits) plus the two terms. Exemplars of old classes are
replayed with every minibatch (a clkernel-replay storage policy keeps them).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

import clkernel
from clkernel import TrainState, distributed
from clkernel.validate import non_negative_number, positive_int
from clkernel_replay import BufferSampler, StoragePolicy, make_policy

__all__ = ["LUCIR", "CosineLinear", "CosineMLP", "cosine_head", "find_cosine_classifier", "less_forget_loss",
           "margin_ranking_loss"]


class CosineLinear(nn.Module):
    """A cosine-normalised classifier (Hou et al., 2019; Avalanche's ``CosineLinear``): ``logits = sigma *
    normalize(x) @ normalize(W).T``, every class embedding (row of ``W``) and every feature vector of unit norm.
    A model component any strategy can use in place of ``nn.Linear``.

    :param in_features: feature size ``D``.
    :param out_features: number of classes ``C``.
    :param sigma: learn the scale ``sigma`` (initialised to 1); False: the plain cosine.
    :raises ValueError: for a size that is not a positive integer.

    ``forward(x)``: float ``(B, D)`` -> ``(B, C)``; :meth:`cosine` gives the cosines before the scale.
    """

    def __init__(self, in_features: int, out_features: int, sigma: bool = True) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features", "CosineLinear")
        self.out_features = positive_int(out_features, "out_features", "CosineLinear")
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.sigma = nn.Parameter(torch.ones(1)) if sigma else None
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """The cosines ``(B, C)`` between the features ``x`` ``(B, D)`` and every class embedding."""
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cosine(x)
        return out if self.sigma is None else self.sigma * out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sigma={self.sigma is not None}"


def cosine_head(model: nn.Module, name: str = "classifier", sigma: bool = True) -> nn.Module:
    """Replace ``model``'s ``nn.Linear`` submodule ``name`` (a dotted path) by a freshly initialised
    :class:`CosineLinear` of the same sizes, in place; returns ``model``. Build the optimizer afterwards.

    :raises ValueError: when there is no such submodule or it is not an ``nn.Linear``.
    """
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"cosine_head: {type(model).__name__} has no submodule {name!r}") from None
    if not isinstance(old, nn.Linear):
        raise ValueError(f"cosine_head: submodule {name!r} of {type(model).__name__} is a {type(old).__name__}, "
                         f"not an nn.Linear")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    head = CosineLinear(old.in_features, old.out_features, sigma=sigma).to(old.weight.device)
    setattr(parent, child, head)
    return model


class CosineMLP(nn.Module):
    """A multi-layer perceptron with a cosine-normalised classifier, for LUCIR: ``hidden_layers`` x (Linear, ReLU,
    Dropout), then :class:`CosineLinear`. With ``last_relu=False`` (LUCIR's choice, which removes the last ReLU of
    the feature extractor) the last hidden layer's ReLU is left out, so features can be negative.

    ``forward(x)``: float ``(B, ...)`` with ``input_size`` values per sample (flattened) -> ``(B, num_classes)``.

    :raises ValueError: for a size that is not a positive integer or a ``drop_rate`` outside [0, 1).
    """

    def __init__(self, num_classes: int = 10, input_size: int = 784, hidden_size: int = 512,
                 hidden_layers: int = 1, drop_rate: float = 0.0, last_relu: bool = False) -> None:
        super().__init__()
        for what, value in (("num_classes", num_classes), ("input_size", input_size), ("hidden_size", hidden_size),
                            ("hidden_layers", hidden_layers)):
            positive_int(value, what, "CosineMLP")
        if not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
            raise ValueError(f"CosineMLP: drop_rate must be a number in [0, 1), got {drop_rate!r}")
        layers: list[nn.Module] = []
        for i in range(hidden_layers):
            layers.append(nn.Linear(input_size if i == 0 else hidden_size, hidden_size))
            if last_relu or i < hidden_layers - 1:
                layers.append(nn.ReLU())
            if drop_rate > 0:
                layers.append(nn.Dropout(drop_rate))
        self.input_size = input_size
        self.features = nn.Sequential(*layers)
        self.classifier = CosineLinear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.input_size:
            raise ValueError(f"CosineMLP expects {self.input_size} values per sample (input_size), got input of "
                             f"shape {tuple(x.shape)} once flattened")
        return self.classifier(self.features(x))


def find_cosine_classifier(model: nn.Module, owner: str = "lucir") -> CosineLinear:
    """The last :class:`CosineLinear` submodule of ``model`` (its input are the features).

    :raises ValueError: naming the model when it has none.
    """
    found = [m for m in model.modules() if isinstance(m, CosineLinear)]
    if not found:
        raise ValueError(f"{owner}: {type(model).__name__} has no cosine-normalised classifier (CosineLinear); "
                         f"LUCIR needs one: use the cosine-mlp model (--model cosine-mlp), or replace a linear "
                         f"classifier with clkernel_lucir.cosine_head(model, 'classifier')")
    return found[-1]


def less_forget_loss(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """``mean over samples of 1 - cos(f, f_old)``: LUCIR's less-forget constraint (without its ``lambda``).

    :param features: float ``(B, D)``, the current model's features; ``old_features`` the previous model's.
    :returns: a 0-d tensor, differentiable with respect to ``features``.
    """
    return (1.0 - F.cosine_similarity(features, old_features.detach(), dim=1)).mean()


def margin_ranking_loss(cosines: torch.Tensor, targets: torch.Tensor, old_classes: torch.Tensor,
                        new_classes: torch.Tensor, margin: float = 0.5, k: int = 2, *,
                        all_ranks: bool = False) -> torch.Tensor | None:
    """LUCIR's inter-class separation term: for every sample whose target is an old class, ``max(0, margin -
    cos_y + cos_j)`` for each of the ``k`` new classes ``j`` with the largest cosines, averaged over those pairs
    (as ``torch.nn.MarginRankingLoss``).

    :param cosines: float ``(B, C)``, cosines between the samples' features and every class embedding.
    :param targets: int64 ``(B,)``.
    :param old_classes: int64 ``(n,)``; ``new_classes`` int64 ``(m,)`` (``k`` is capped at ``m``).
    :param all_ranks: in a distributed run (:func:`clkernel.distributed.is_distributed`), average over the pairs of
        the global minibatch: every rank must call it (one all-reduce of the pair count), and it returns this
        rank's share times the number of ranks, so that DDP's average of the ranks' gradients is the gradient of
        the global minibatch's average. Nothing changes in one process.
    :returns: a 0-d tensor (0 when no sample belongs to an old class), or None when there is no old or no new
        class.
    """
    if not len(new_classes) or not len(old_classes):
        return None
    is_old = torch.isin(targets, old_classes)
    # computed on every sample and masked: no data-dependent shapes, so no device sync per minibatch
    positive = cosines.gather(1, targets.view(-1, 1))
    negatives = cosines.index_select(1, new_classes).topk(min(k, len(new_classes)), dim=1).values
    hinge = (margin - positive + negatives).clamp(min=0) * is_old.unsqueeze(1)
    pairs = is_old.sum() * negatives.shape[1]
    if all_ranks and distributed.is_distributed():
        total = distributed.all_reduce_sum(pairs.to(hinge.dtype))
        return hinge.sum() * distributed.world_size() / total.clamp(min=1)
    return hinge.sum() / pairs.clamp(min=1)


class _Capture:
    """A forward pre-hook keeping the flattened input of the module it is registered on, while armed."""

    def __init__(self, armed: bool = False) -> None:
        self.armed, self.value = armed, None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.armed:
            self.value = args[0].flatten(1)


class LUCIR:
    """LUCIR (Hou et al., 2019) as a training plugin; the module docstring gives the method.

    The model must have a :class:`CosineLinear` classifier (the last one found is used; its input are the
    features): the ``cosine-mlp`` model, or any model after :func:`cosine_head`. The features and cosines of the
    current model are read from the loop's own forward pass (a forward pre-hook on the classifier); the frozen
    previous model runs once per minibatch. From the second experience, the loss gets
    ``lambda_base * sqrt(n_old / n_new) * less_forget + lambda_mr * margin_ranking``; with ``freeze_old`` the old
    classes' embeddings are put back after every optimizer step (the authors' code trains them at learning rate 0).
    ``mem_size`` exemplars (``storage_policy``) are kept after each experience and ``batch_size_mem`` of them are
    appended to every training minibatch.

    :param mem_size: exemplar memory in samples.
    :param lambda_base: weight base of the less-forget constraint (5 in the paper for CIFAR-100, 10 for ImageNet).
    :param lambda_mr: weight of the margin ranking term (1 in the paper).
    :param margin: the margin ``m`` (0.5).
    :param k: number of hard new-class negatives per old sample (2).
    :param freeze_old: keep the old classes' embeddings fixed during later experiences.
    :param batch_size_mem: exemplars per minibatch (default: the strategy's ``train_mb_size``).
    :param storage_policy: a :func:`clkernel_replay.make_policy` name (default ``class_balanced``; the paper
        uses herding: ``herding``, on the model's outputs).
    :param seed: seeds the memory and its draws (default: drawn from torch's generator).
    :raises ValueError: for an option out of range or an unknown policy; at training, for a model without a
        :class:`CosineLinear`.
    """

    name = "lucir"

    def __init__(self, mem_size: int = 200, lambda_base: float = 5.0, lambda_mr: float = 1.0, margin: float = 0.5,
                 k: int = 2, freeze_old: bool = True, batch_size_mem: int | None = None,
                 storage_policy: str = "class_balanced", seed: int | None = None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        self.lambda_base = non_negative_number(lambda_base, "lambda_base", self.name)
        self.lambda_mr = non_negative_number(lambda_mr, "lambda_mr", self.name)
        self.margin = non_negative_number(margin, "margin", self.name)
        self.k = positive_int(k, "k", self.name)
        self.freeze_old = bool(freeze_old)
        if batch_size_mem is not None:
            positive_int(batch_size_mem, "batch_size_mem", self.name)
        if not isinstance(storage_policy, str):
            raise TypeError(f"{self.name}: storage_policy must be a policy name, got {type(storage_policy).__name__}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        try:
            self.memory: StoragePolicy = make_policy(storage_policy, mem_size, seed)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        self.mem_size, self.batch_size_mem, self.storage_policy = mem_size, batch_size_mem, storage_policy
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.prev_model: nn.Module | None = None
        self.old_classes: list[int] = []
        self._pending: Mapping[str, torch.Tensor] | None = None
        self._sampler: BufferSampler | None = None
        self._orders: list[torch.Tensor] | None = None
        self._capture, self._prev_capture = _Capture(), _Capture(armed=True)
        self._handle: Any = None
        self._classifier: CosineLinear | None = None
        self._old = self._new = torch.zeros(0, dtype=torch.long)
        self._frozen: torch.Tensor | None = None
        self._lambda = 0.0

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._orders = None
        self._start(state)

    def _start(self, state: TrainState) -> None:
        if self.memory.needs_restore:
            stream = state.experience.stream if state.experience is not None else None
            if stream is None:
                raise RuntimeError(f"{self.name}: the memory was loaded from a checkpoint and is rebuilt from the "
                                   f"stream of the experience being trained, but that experience belongs to no "
                                   f"stream")
            self.memory.restore({exp.index: exp.dataset for exp in stream})
        self._classifier = find_cosine_classifier(state.model, self.name)
        self._detach_hook()
        self._handle = self._classifier.register_forward_pre_hook(self._capture)
        self._materialise(state.model)
        device = state.device
        new = sorted(set(int(c) for c in state.experience.classes) - set(self.old_classes))  # type: ignore
        self._old = torch.tensor(self.old_classes, dtype=torch.long, device=device)
        self._new = torch.tensor(new, dtype=torch.long, device=device)
        self._lambda = self.lambda_base * math.sqrt(len(self.old_classes) / len(new)) if new else self.lambda_base
        self._frozen = None
        if self.freeze_old and self.old_classes:
            if int(self._old.max()) >= self._classifier.out_features:
                raise ValueError(f"{self.name}: class {int(self._old.max())} has no unit in the classifier "
                                 f"({self._classifier.out_features} units)")
            self._frozen = self._classifier.weight.detach()[self._old].clone()
        buffer = self.memory.buffer
        self._sampler = None if buffer is None else BufferSampler(
            buffer.train(), self.batch_size_mem or state.train_mb_size, generator=self.generator)
        if self._sampler is not None and self._orders is not None:
            self._sampler.orders = list(self._orders)
        self._orders = None

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
    def before_forward(self, state: TrainState) -> None:
        self._capture.armed, self._capture.value = True, None

    @clkernel.hookimpl
    def after_forward(self, state: TrainState) -> None:
        self._capture.armed = False

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self.prev_model is None or not len(self._old):
            return None
        features = self._capture.value
        if features is None:
            raise ValueError(f"{self.name}: the forward pass of {type(state.model).__name__} did not call its "
                             f"CosineLinear classifier")
        with torch.no_grad():
            clkernel.model_forward(self.prev_model, state.mb_x, state.mb_task)
        term = self._lambda * less_forget_loss(features, self._prev_capture.value)  # type: ignore[arg-type]
        if self.lambda_mr > 0:
            ranking = margin_ranking_loss(self._classifier.cosine(features), state.mb_y, self._old,  # type: ignore
                                          self._new, self.margin, self.k, all_ranks=True)
            if ranking is not None:
                term = term + self.lambda_mr * ranking
        return term

    @clkernel.hookimpl
    def after_update(self, state: TrainState) -> None:
        if self._frozen is not None:
            with torch.no_grad():
                self._classifier.weight.index_copy_(0, self._old, self._frozen)  # type: ignore[union-attr]

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        if self._sampler is not None:
            self._sampler.close()  # the generator as if the sampler had read nothing ahead
        self._detach_hook()
        self.memory.update(state.experience, model=state.model)  # type: ignore[arg-type]
        self.old_classes = sorted(set(self.old_classes) | set(int(c) for c in state.experience.classes))  # type: ignore
        self._freeze_copy(state.model.state_dict(), state.model)
        self._sampler = self._orders = None
        self._frozen = None

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        self._detach_hook()

    def _detach_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _freeze_copy(self, params: Mapping[str, torch.Tensor], model: nn.Module) -> None:
        """The previous model: a frozen copy of ``model`` with ``params``, its classifier's input captured."""
        self._detach_hook()  # never copy the live model's hook
        prev = copy.deepcopy(model).eval()
        prev.load_state_dict(params)
        for p in prev.parameters():
            p.requires_grad_(False)
        find_cosine_classifier(prev, self.name).register_forward_pre_hook(self._prev_capture)
        self.prev_model = prev

    def _materialise(self, model: nn.Module) -> None:
        if self._pending is not None:
            handle_was = self._handle
            self._handle = None
            if handle_was is not None:
                handle_was.remove()
            self._freeze_copy(self._pending, model)
            self._pending = None
            self._handle = self._classifier.register_forward_pre_hook(self._capture)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors: the memory's policy state (no data), the previous model's parameters, the old classes,
        the generator and, inside an experience, the exemplar sampler's remaining draws."""
        prev = self._pending if self._pending is not None else (
            None if self.prev_model is None else self.prev_model.state_dict())
        orders, generator = (self._orders, self.generator.get_state()) if self._sampler is None \
            else self._sampler.state()
        return {"memory": self.memory.state_dict(),
                "prev_model": None if prev is None else {k: v.clone() for k, v in prev.items()},
                "old_classes": torch.tensor(self.old_classes, dtype=torch.long),
                "generator": generator,
                "orders": None if orders is None else [o.clone() for o in orders]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the memory is rebuilt from the stream, and the previous model from the live one, at
        the next training experience (or minibatch, for a checkpoint taken inside one)."""
        self.memory.load_state_dict(state["memory"])
        self._pending = None if state["prev_model"] is None else {k: v.clone() for k, v in state["prev_model"].items()}
        self.prev_model = None
        self.old_classes = [int(c) for c in state["old_classes"].tolist()]
        self.generator.set_state(state["generator"])
        orders = state.get("orders")
        self._sampler, self._orders = None, None if orders is None else [o.clone() for o in orders]

    def __getstate__(self) -> dict[str, Any]:  # a hook handle cannot be copied or pickled
        return {**self.__dict__, "_handle": None}

