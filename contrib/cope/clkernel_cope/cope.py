"""Continual Prototype Evolution, CoPE (De Lange and Tuytelaars, 2021, "Continual Prototype Evolution: Learning Online
from Non-Stationary Data Streams", ICCV).

The network maps inputs to L2-normalised embeddings; every class has a prototype on the unit sphere, and a sample is
classified by its nearest prototype (largest cosine similarity). Training uses no cross-entropy: the
pseudo-prototypical proxy (PPP) loss pulls each embedding towards its class's prototype and towards the other
embeddings of its class in the minibatch (pseudo-prototypes), and pushes it away from the other classes' prototypes
and pseudo-prototypes. After each step the prototypes of the classes in the minibatch follow the embeddings by
momentum::

    p_c <- normalise(alpha * p_c + (1 - alpha) * mean of the minibatch's embeddings of class c)

A class-balanced replay buffer (clkernel-replay's ``class_balanced`` policy) keeps old classes in every minibatch, so
their prototypes keep evolving with the network.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

import clkernel
from clkernel import TrainState
from clkernel.validate import positive_int, positive_number, unit_interval
from clkernel_replay import Replay

__all__ = ["UNSEEN_SCORE", "CoPE", "PrototypeClassifier", "ppp_loss"]

#: The score :class:`PrototypeClassifier` gives a class without a prototype yet: below any cosine similarity.
UNSEEN_SCORE = -2.0


class PrototypeClassifier(torch.nn.Module):
    """A nearest-prototype classifier head: one unit-norm prototype per class, scores are cosine similarities.

    Any strategy can end a model with it; its prototypes are buffers (saved with the model's ``state_dict``), moved
    by :meth:`update` (the CoPE plugin calls it after every step), never by the optimizer.

    :param feature_size: the width ``D`` of the features it receives.
    :param num_classes: the number of classes ``C``.
    :param seed: seeds the initial prototypes: uniform in ``[0, 1)^D``, normalised (the authors' initialisation).
    :raises ValueError: for a size that is not a positive integer.

    ``forward(features)``: features float ``(B, D)`` (any scale: they are normalised) -> scores float ``(B, C)``,
    ``cos(features, p_c)`` for the classes that have a prototype (the boolean buffer ``seen``), :data:`UNSEEN_SCORE` for the others;
    the argmax is the nearest prototype.
    """

    def __init__(self, feature_size: int, num_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        positive_int(feature_size, "feature_size", "PrototypeClassifier")
        positive_int(num_classes, "num_classes", "PrototypeClassifier")
        init = torch.rand(num_classes, feature_size, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("prototypes", F.normalize(init, dim=1))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def feature_size(self) -> int:
        return self.prototypes.shape[1]

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise ValueError(f"PrototypeClassifier: features of shape {tuple(features.shape)}; expected (B, "
                             f"{self.feature_size})")
        scores = F.normalize(features, dim=1) @ self.prototypes.T
        return scores.masked_fill(~self.seen, UNSEEN_SCORE)

    @torch.no_grad()
    def mark_seen(self, targets: torch.Tensor) -> None:
        """Give the classes in ``targets`` (int64, any shape) their prototype (the initial one, if new)."""
        self.seen[targets] = True

    @torch.no_grad()
    def update(self, features: torch.Tensor, targets: torch.Tensor, momentum: float) -> None:
        """Move the prototypes of the classes in ``targets`` towards the mean of their (normalised) features:
        ``p_c <- normalise(momentum * p_c + (1 - momentum) * mean_i{normalise(f_i) : y_i = c})``, and mark them seen.

        :param features: float ``(B, D)``; ``targets``: int64 ``(B,)``; ``momentum`` in ``[0, 1]``.
        """
        f = F.normalize(features.detach().to(self.prototypes.dtype), dim=1)
        sums = torch.zeros_like(self.prototypes).index_add_(0, targets, f)
        counts = torch.zeros(self.num_classes, device=f.device, dtype=f.dtype).index_add_(
            0, targets, torch.ones_like(targets, dtype=f.dtype))
        present = (counts > 0).unsqueeze(1)
        mean = sums / counts.clamp_min(1).unsqueeze(1)
        moved = F.normalize(momentum * self.prototypes + (1 - momentum) * mean, dim=1)
        self.prototypes.copy_(torch.where(present, moved, self.prototypes))
        self.seen |= present.squeeze(1)


def ppp_loss(features: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor, seen: torch.Tensor,
             temperature: float = 0.1) -> torch.Tensor:
    """The pseudo-prototypical proxy loss of CoPE (De Lange and Tuytelaars, 2021).

    With ``f`` the L2-normalised features, ``e(a, b) = exp(a . b / temperature)`` and, for a query ``x`` and a
    class ``c``, ``O(x, c) = sum over the other seen prototypes p_k (k != c) of e(p_k, x)``, the probability that
    ``x`` belongs to ``c`` through the proxy ``r`` (the prototype ``p_c`` or a pseudo-prototype: another sample of
    class ``c`` in the minibatch) is ``P(c | x; r) = e(r, x) / (e(r, x) + O(x, c))``. Then

    - attractor, for sample ``i`` of class ``c``: ``log`` of the mean of ``P(c | x_i; r)`` over the ``n_c`` proxies
      ``r`` (``p_c`` and the ``n_c - 1`` other samples of class ``c``);
    - repellor, for every pair of a sample ``x_j`` and a sample ``x_i`` of another class ``c``:
      ``log(1 - (P(c | x_j; x_i) + P(c | x_j; p_c)) / 2)``;

    and the loss is ``-(sum of attractors + sum of repellors) / B``. Proxies (prototypes and pseudo-prototypes) are
    constants: gradients reach each sample only as a query.

    :param features: float ``(B, D)``; ``targets``: int64 ``(B,)``.
    :param prototypes: float ``(C, D)`` unit-norm; ``seen``: bool ``(C,)``, the classes with a prototype (every
        class in ``targets`` must be seen).
    :returns: a 0-d tensor.
    """
    f = F.normalize(features, dim=1)
    e_fp = torch.exp(f @ prototypes.detach().T / temperature) * seen  # (B, C): e(p_c, x_i), 0 for unseen
    e_ff = torch.exp(f @ f.detach().T / temperature)  # (B, B): row = query (with gradient), column = proxy
    total = e_fp.sum(dim=1, keepdim=True)  # (B, 1)
    own = e_fp.gather(1, targets.unsqueeze(1))  # (B, 1): e(p_{y_i}, x_i)
    same = targets.unsqueeze(1) == targets.unsqueeze(0)
    eye = torch.eye(len(targets), dtype=torch.bool, device=f.device)
    # attractor: proxies of the own class; O(x_i, y_i) = total - own
    others_own = total - own
    p_pseudo = e_ff / (e_ff + others_own)
    n_c = same.sum(dim=1, keepdim=True)
    attract = (own / total + (p_pseudo * (same & ~eye)).sum(dim=1, keepdim=True)) / n_c
    # repellor: query j (row), proxy i (column) of class y_i != y_j; O(x_j, y_i) = total_j - e(p_{y_i}, x_j)
    e_proto_col = e_fp[:, targets]  # (B, B): e(p_{y_i}, x_j)
    p_pseudo_rep = e_ff / (e_ff + total - e_proto_col)
    p_proto_rep = e_proto_col / total
    repel = torch.log1p(-(p_pseudo_rep + p_proto_rep) / 2)
    return -(torch.log(attract).sum() + (repel * ~same).sum()) / len(targets)


class CoPE(Replay):
    """Continual Prototype Evolution (De Lange and Tuytelaars, 2021) as a training plugin.

    - **Embeddings and head.** If the model contains a :class:`PrototypeClassifier`, the embeddings are that head's
      input (read with a forward pre-hook) and the model's output is already class scores. Otherwise the model's
      output is the embedding, and the plugin keeps its own :class:`PrototypeClassifier` (``num_classes`` needed):
      in ``after_forward`` and ``after_eval_forward`` it replaces ``state.mb_output`` with the head's scores, so
      the loop's criterion, metrics and evaluation see class scores.
    - **Loss.** ``loss_terms`` returns :func:`ppp_loss` on the minibatch's embeddings (incoming and replayed). In
      ``before_backward`` the loss becomes the sum of the loss terms alone, dropping the loop's criterion (CoPE
      trains with the PPP loss only; other plugins' terms are kept).
    - **Prototypes.** A class gets its prototype when it first appears in a training minibatch; after every step
      the prototypes of the minibatch's classes move by momentum ``alpha`` (:meth:`PrototypeClassifier.update`).
    - **Replay.** clkernel-replay's :class:`~clkernel_replay.Replay` on a class-balanced buffer: every minibatch
      gets ``batch_size_mem`` buffer samples (default: as many as incoming, as in the paper); the buffer is updated
      after each experience (after every minibatch on an online stream of mini-experiences).

    :param mem_size: buffer size in samples.
    :param alpha: prototype momentum (the paper's 0.99).
    :param temperature: the PPP loss temperature (0.1).
    :param num_classes: classes of the plugin's own head; needed when the model has no :class:`PrototypeClassifier`.
    :param batch_size_mem: replayed samples per minibatch (default: the strategy's ``train_mb_size``).
    :param seed: seeds the buffer, the replay draws and the initial prototypes of the plugin's own head.
    :raises ValueError: for a size that is not a positive integer, ``alpha`` outside ``[0, 1]``, a temperature that
        is not positive; at the first training experience, for a model without a head and no ``num_classes``.
    """

    name = "cope"
    #: The prototypes move with each minibatch's embeddings and the PPP loss spans the whole minibatch: on several
    #: processes each rank would move them with its own share, and they would drift apart.
    supports_distributed = False

    def __init__(self, mem_size: int = 200, alpha: float = 0.99, temperature: float = 0.1,
                 num_classes: int | None = None, batch_size_mem: int | None = None, seed: int | None = None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        self.alpha = unit_interval(alpha, "alpha", self.name)
        self.temperature = positive_number(temperature, "temperature", self.name)
        self.num_classes = None if num_classes is None else positive_int(num_classes, "num_classes", self.name)
        if batch_size_mem is not None:
            positive_int(batch_size_mem, "batch_size_mem", self.name)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        super().__init__(mem_size=mem_size, batch_size_mem=batch_size_mem, storage_policy="class_balanced",
                         seed=seed)
        self.head_seed = seed + 3
        self.head: PrototypeClassifier | None = None  # the plugin's own head (None: not built, or in the model)
        self._in_model: PrototypeClassifier | None = None
        self._hook: Any = None
        self._attached = False  # the head in use is known (set at each training experience, lazily after a load)
        self._capture = False
        self._features: torch.Tensor | None = None

    # ------------------------------------------------------------------ the head

    def classifier(self) -> PrototypeClassifier | None:
        """The head in use: the model's :class:`PrototypeClassifier`, else the plugin's own (None until built)."""
        return self._in_model if self._in_model is not None else self.head

    def _attach(self, model: torch.nn.Module, strict: bool) -> None:
        self._attached = strict
        heads = [m for m in model.modules() if isinstance(m, PrototypeClassifier)]
        if heads:
            if self._in_model is not heads[0]:
                self._detach()
                self._in_model = heads[0]
                self._hook = heads[0].register_forward_pre_hook(lambda module, args: self._keep(args[0]))
            return
        self._detach()
        if strict and self.num_classes is None:
            raise ValueError(f"{self.name}: the model has no PrototypeClassifier head, so the plugin classifies its "
                             f"outputs (embeddings) with a head of its own: give num_classes")

    def _keep(self, features: torch.Tensor) -> None:
        if self._capture:
            self._features = features

    def _detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._in_model = None, None

    def _own_head(self, embeddings: torch.Tensor) -> PrototypeClassifier:
        if embeddings.ndim != 2:
            raise ValueError(f"{self.name}: the model's output (the embedding) must be (B, D), got "
                             f"{tuple(embeddings.shape)}")
        if self.head is None:
            self.head = PrototypeClassifier(embeddings.shape[1], self.num_classes, seed=self.head_seed)  # type: ignore
        if self.head.feature_size != embeddings.shape[1]:
            raise ValueError(f"{self.name}: the model's embeddings have {embeddings.shape[1]} units, the head "
                             f"{self.head.feature_size}")
        return self.head.to(embeddings.device)

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        super().before_training_exp(state)
        self._attach(state.model, strict=True)

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        self._attach(state.model, strict=False)

    @clkernel.hookimpl
    def before_forward(self, state: TrainState) -> None:
        if not self._attached:  # loaded from a checkpoint taken inside an experience
            self._attach(state.model, strict=True)
        self._capture = self._in_model is not None

    @clkernel.hookimpl
    def after_forward(self, state: TrainState) -> None:
        self._capture = False
        if self._in_model is not None:
            embeddings, head = self._features, self._in_model
        else:
            embeddings = state.mb_output
            head = self._own_head(embeddings)
        head.mark_seen(state.mb_y)
        self._features = embeddings
        if self._in_model is None:
            state.mb_output = head(embeddings)

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        head = self.classifier()
        if self._features is None or head is None:
            raise RuntimeError(f"{self.name}: no embeddings were captured in the forward pass")
        return ppp_loss(self._features, state.mb_y, head.prototypes, head.seen, self.temperature)

    @clkernel.hookimpl
    def before_backward(self, state: TrainState) -> None:
        state.loss = sum(state.loss_terms.values())  # type: ignore[assignment]

    @clkernel.hookimpl
    def after_training_iteration(self, state: TrainState) -> None:
        head = self.classifier()
        if head is not None and self._features is not None:
            head.update(self._features, state.mb_y, self.alpha)
        self._features = None

    @clkernel.hookimpl
    def after_eval_forward(self, state: TrainState) -> None:
        if self._in_model is None and self.num_classes is not None:
            state.mb_output = self._own_head(state.mb_output)(state.mb_output)

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        self._detach()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Replay's state, plus the plugin's own head (prototypes and seen classes; None when it has none: the
        model's head is saved with the model)."""
        head = None if self.head is None else {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        return {**super().state_dict(), "head": head}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._attached = False
        head = state.get("head")
        if head is None:
            self.head = None
            return
        self.head = PrototypeClassifier(head["prototypes"].shape[1], head["prototypes"].shape[0],
                                        seed=self.head_seed)
        self.head.load_state_dict(head)
