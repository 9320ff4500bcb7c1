"""ER-ACE and ER-AML (Caccia, Aljundi, Asadi, Tuytelaars, Pineau and Belilovsky, 2022, "New Insights on Reducing
Abrupt Representation Change in Online Continual Learning", ICLR).

When new classes arrive, plain experience replay pushes the new samples' features towards the old classes' (the
cross-entropy on new data lowers the old classes' logits), and the old representations change abruptly. Both
methods treat incoming and replayed data asymmetrically:

- **ER-ACE** (asymmetric cross-entropy): the incoming minibatch is trained with a cross-entropy restricted to the
  classes present in it (the other logits are masked); a replayed minibatch with the full cross-entropy::

      L = CE(mask(f(x_in)), y_in) + CE(f(x_bf), y_bf)

- **ER-AML** (asymmetric metric learning): the incoming minibatch gets no cross-entropy, but a supervised
  contrastive loss pulling each sample's (L2-normalised) features towards a buffer sample of its class and away
  from one of another class; the replayed minibatch gets the full cross-entropy.

The buffer is one of clkernel-replay's storage policies; it is updated with each experience *before* it is trained
on (as Avalanche's ER_ACE and ER_AML do), so replay draws hold the current classes too, as an online buffer would.
Until one experience has been trained, both plugins leave training to plain cross-entropy.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

import clkernel
from clkernel import CLDataset, TrainState, distributed
from clkernel.validate import positive_int, positive_number
from clkernel_replay import StoragePolicy, make_policy

__all__ = ["ERACE", "ERAML", "asymmetric_logits", "supervised_contrastive_loss"]


def asymmetric_logits(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ACE's masking: the logits of classes absent from ``targets`` set to the dtype's lowest finite value, so a
    cross-entropy on them is taken over the classes present in the minibatch only (Caccia et al., 2022).

    :param output: float ``(B, C)`` logits.
    :param targets: int64 ``(B,)`` class ids in ``0..C-1``.
    :returns: float ``(B, C)``, a new tensor in the autograd graph (masked units get no gradient).

    No device synchronisation: the mask is built by scattering, not with ``unique``.
    """
    present = torch.zeros(output.shape[1], dtype=torch.bool, device=output.device)
    present[targets] = True
    return output.masked_fill(~present, torch.finfo(output.dtype).min)


def _global_targets(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets``; on several processes, class ids whose set is the classes present in the global minibatch (one
    all-reduce, no device synchronisation: absent classes are replaced by a present one, ``targets[0]``)."""
    if not distributed.is_distributed():
        return targets
    present = torch.zeros(output.shape[1], device=output.device)
    present[targets] = 1.0
    distributed.all_reduce_sum(present)
    return torch.where(present > 0, torch.arange(output.shape[1], device=output.device), targets[0])


def supervised_contrastive_loss(anchors: torch.Tensor, anchor_labels: torch.Tensor, features: torch.Tensor,
                                labels: torch.Tensor, temperature: float = 0.1,
                                base_temperature: float = 0.07) -> torch.Tensor:
    """AML's loss on incoming data: supervised contrastive (Khosla et al., 2020) between anchors and features.

    For anchor ``i``: ``s_ij = a_i . f_j / temperature``, ``log p_ij = s_ij - log sum_k exp(s_ik)``, and
    ``loss_i = -(temperature / base_temperature) * mean of log p_ij over the j with labels[j] == anchor_labels[i]``;
    the result is the mean over anchors (anchors with no positive count zero).

    :param anchors: float ``(A, D)``, L2-normalised features of incoming samples.
    :param anchor_labels: int64 ``(A,)``.
    :param features: float ``(F, D)``, L2-normalised features of buffer samples (positives and negatives).
    :param labels: int64 ``(F,)``.
    :returns: a 0-d tensor (0 when there is no anchor).
    """
    if len(anchors) == 0:
        return features.sum() * 0.0
    sim = anchors @ features.T / temperature
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (anchor_labels.unsqueeze(1) == labels.unsqueeze(0)).to(log_prob.dtype)
    mean_pos = (positive * log_prob).sum(1) / positive.sum(1).clamp(min=1)
    return -(temperature / base_temperature) * mean_pos.mean()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=1, keepdim=True) + 1e-5)


class _AsymmetricReplay:
    """What ER-ACE and ER-AML share: the storage policy, updated before each experience, and uniform draws."""

    name = "er-asym"

    def __init__(self, mem_size: int, batch_size_mem: int | None, storage_policy: str | StoragePolicy,
                 seed: int | None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        if batch_size_mem is not None:
            positive_int(batch_size_mem, "batch_size_mem", self.name)
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
        self._samples: CLDataset | None = None  # the buffer's train view, while replay is on

    @property
    def buffer(self) -> CLDataset | None:
        """The buffer's samples (None before the first experience starts)."""
        return self.storage_policy.buffer

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        if distributed.is_distributed() and getattr(state.model, "takes_task_labels", False):
            raise ValueError(f"{self.name}: with a model that takes task labels (one head per task), the replayed "
                             f"samples run through old heads outside the loop's forward pass, which "
                             f"DistributedDataParallel cannot reduce (those heads are unused in its forward); run it "
                             f"in one process, without torchrun")
        self._start(state, update=True)

    @clkernel.hookimpl
    def before_train_dataset_adaptation(self, state: TrainState) -> None:
        if state.resuming:  # a checkpoint taken inside the experience: the buffer already holds its data
            self._start(state, update=False)

    def _start(self, state: TrainState, *, update: bool) -> None:
        """Ready replay for the experience being trained: give a loaded buffer its samples back, add the
        experience to it (``update``; not when resuming inside it, where the checkpoint already holds it) and
        turn replay on once an experience has been trained."""
        policy = self.storage_policy
        if policy.needs_restore:
            stream = state.experience.stream if state.experience is not None else None
            if stream is None:
                raise RuntimeError(f"{self.name}: the buffer was loaded from a checkpoint and is rebuilt from the "
                                   f"stream of the experience being trained, but that experience has no stream")
            policy.restore({exp.index: exp.dataset for exp in stream})
        if update:
            policy.update(state.experience, model=state.model)  # type: ignore[arg-type]
        self._samples = policy.buffer.train() if state.experiences_trained > 0 else None  # type: ignore[union-attr]

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self._samples = None

    def _draw(self, state: TrainState) -> torch.Tensor:
        k = self.batch_size_mem or state.train_mb_size
        return torch.randperm(len(self._samples), generator=self.generator)[:k]  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return {"storage_policy": self.storage_policy.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the buffer's samples are rebuilt from the stream at the next training experience or,
        for a checkpoint taken inside one, when it resumes (``before_train_dataset_adaptation`` with
        ``state.resuming``)."""
        self.storage_policy.load_state_dict(state["storage_policy"])
        self.generator.set_state(state["generator"])


class ERACE(_AsymmetricReplay):
    """ER-ACE (Caccia et al., 2022): asymmetric cross-entropy on incoming data, full cross-entropy on replay.

    Once an experience has been trained: in ``after_forward`` the logits of the classes absent from the minibatch
    the loop trains on are masked (:func:`asymmetric_logits`), so the loop's criterion is the cross-entropy over
    the classes present; ``loss_terms`` draws ``batch_size_mem`` buffer samples (uniformly, without replacement
    within a draw), runs the model on them and returns their full cross-entropy. The two add, as in the paper and
    Mammoth (Avalanche averages them). With the ``replay`` plugin too, its samples are part of the minibatch the
    loop trains on, and count as present.

    On several processes (``torchrun``) the mask keeps the classes present in the global minibatch (one all-reduce
    per iteration), and every rank replays the same ``batch_size_mem`` buffer samples: DDP's average of the
    gradients is one process's on the global minibatch plus those samples.

    :param mem_size: buffer size in samples.
    :param batch_size_mem: replayed samples per iteration (default: the strategy's ``train_mb_size``).
    :param storage_policy: a name understood by :func:`clkernel_replay.make_policy` (``reservoir``, the paper's,
        by default; ``class_balanced`` is Avalanche's), or a StoragePolicy with ``max_size == mem_size``.
    :param seed: seeds the policy and the draws (default: drawn from torch's global generator).
    :raises ValueError: for a size that is not a positive integer, an unknown policy name, or a policy whose
        ``max_size`` differs from ``mem_size``.
    """

    name = "er-ace"

    def __init__(self, mem_size: int = 200, batch_size_mem: int | None = None,
                 storage_policy: str | StoragePolicy = "reservoir", seed: int | None = None) -> None:
        super().__init__(mem_size, batch_size_mem, storage_policy, seed)

    @clkernel.hookimpl
    def after_forward(self, state: TrainState) -> None:
        if self._samples is not None:
            state.mb_output = asymmetric_logits(state.mb_output, _global_targets(state.mb_output, state.mb_y))

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self._samples is None:
            return None
        x, y, t = self._samples.get_batch(self._draw(state))
        device = state.device
        out = clkernel.model_forward(state.model, x.to(device, non_blocking=True), t.to(device, non_blocking=True))
        return F.cross_entropy(out, y.to(device, non_blocking=True))


class ERAML(_AsymmetricReplay):
    """ER-AML (Caccia et al., 2022): a supervised contrastive loss on incoming data, cross-entropy on replay.

    Once an experience has been trained, on every iteration: for each incoming sample, one buffer sample of the
    same class (a positive) and one of another class (a negative; of the same task label when
    ``same_task_neg``) are drawn at random; the features of the incoming samples (from the loop's forward pass) and
    of the positives and negatives (one extra forward pass, with ``batch_size_mem`` replayed samples) are
    L2-normalised, and :func:`supervised_contrastive_loss` is taken between them. Incoming samples without a
    positive or a negative in the buffer are left out. ``loss_terms`` returns that loss plus the replayed samples'
    cross-entropy; in ``before_backward`` the loss becomes the sum of the loss terms alone, dropping the
    criterion's cross-entropy on incoming data, as the method prescribes (other plugins' terms are kept).

    :param temperature: the contrastive temperature (Avalanche: 0.1).
    :param base_temperature: scales the loss by ``temperature / base_temperature`` (0.07).
    :param same_task_neg: draw negatives among buffer samples of the incoming sample's task label.
    :param feature_layer: name of the submodule (``model.named_modules()``) whose output are the features; default:
        the input of the model's last ``torch.nn.Linear`` (the classifier's input).
    :param mem_size: as :class:`ERACE`.
    :param batch_size_mem: as :class:`ERACE`.
    :param storage_policy: as :class:`ERACE`.
    :param seed: as :class:`ERACE`.
    :raises ValueError: as :class:`ERACE`, or for a temperature that is not positive; in ``before_training_exp``,
        for a ``feature_layer`` the model lacks (or a model with no Linear layer), naming the option.
    """

    name = "er-aml"
    #: Its contrastive loss compares each incoming sample with every positive and negative of the minibatch: on
    #: several processes each rank would see only its share of them.
    supports_distributed = False

    def __init__(self, mem_size: int = 200, batch_size_mem: int | None = None, temperature: float = 0.1,
                 base_temperature: float = 0.07, same_task_neg: bool = True, feature_layer: str | None = None,
                 storage_policy: str | StoragePolicy = "reservoir", seed: int | None = None) -> None:
        super().__init__(mem_size, batch_size_mem, storage_policy, seed)
        self.temperature = positive_number(temperature, "temperature", self.name)
        self.base_temperature = positive_number(base_temperature, "base_temperature", self.name)
        self.same_task_neg, self.feature_layer = bool(same_task_neg), feature_layer
        self._hook: Any = None
        self._capture = False
        self._features: torch.Tensor | None = None
        self._labels = self._tasks = torch.zeros(0, dtype=torch.long)  # the buffer's, while replay is on

    def _attach(self, model: torch.nn.Module) -> None:
        if self.feature_layer is not None:
            modules = dict(model.named_modules())
            if self.feature_layer not in modules:
                names = [n for n in modules if n][:12]
                raise ValueError(f"{self.name}: feature_layer {self.feature_layer!r} is not a submodule of the "
                                 f"model; its submodules: {', '.join(names)}")
            self._hook = modules[self.feature_layer].register_forward_hook(
                lambda module, args, output: self._keep(output))
            return
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError(f"{self.name}: the model has no torch.nn.Linear layer whose input could serve as the "
                             f"features; set feature_layer to the name of the submodule giving them")
        self._hook = linears[-1].register_forward_pre_hook(lambda module, args: self._keep(args[0]))

    def _keep(self, features: torch.Tensor) -> None:
        if self._capture:
            self._features = features.reshape(features.shape[0], -1)

    def _detach_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._features = None

    def _start(self, state: TrainState, *, update: bool) -> None:
        super()._start(state, update=update)
        self._detach_hook()
        if self._samples is not None:
            self._attach(state.model)
            self._labels = self._samples.targets
            self._tasks = self._samples.task_labels

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        super().after_training_exp(state)
        self._detach_hook()

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        self._detach_hook()

    @clkernel.hookimpl
    def before_forward(self, state: TrainState) -> None:
        self._capture = self._samples is not None

    @clkernel.hookimpl
    def after_forward(self, state: TrainState) -> None:
        self._capture = False

    def _pick(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One column per row of ``valid`` (B, N), uniformly among the True ones; and which rows had any."""
        has = valid.any(1)
        weights = torch.where(has.unsqueeze(1), valid, torch.ones_like(valid)).to(torch.float64)
        return torch.multinomial(weights, 1, generator=self.generator).squeeze(1), has

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self._samples is None:
            return None
        hidden_in = self._features
        if hidden_in is None:
            raise RuntimeError(f"{self.name}: no features were captured in the forward pass (the feature layer did "
                               f"not run)")
        y_in, t_in = state.mb_y.cpu(), state.mb_task.cpu()
        same = y_in.unsqueeze(1) == self._labels.unsqueeze(0)
        other = ~same
        if self.same_task_neg:
            other &= t_in.unsqueeze(1) == self._tasks.unsqueeze(0)
        pos, has_pos = self._pick(same)
        neg, has_neg = self._pick(other)
        replay = self._draw(state)
        k, b = len(replay), len(pos)
        x, y, t = self._samples.get_batch(torch.cat([replay, pos, neg]))
        device = state.device
        self._capture = True
        try:
            out = clkernel.model_forward(state.model, x.to(device, non_blocking=True),
                                         t.to(device, non_blocking=True))
            hidden = self._features
        finally:
            self._capture = False
        y = y.to(device, non_blocking=True)
        ce = F.cross_entropy(out[:k], y[:k])
        valid = (has_pos & has_neg).to(device)
        pos_h, neg_h = _normalize(hidden[k:k + b][valid]), _normalize(hidden[k + b:][valid])  # type: ignore[index]
        metric = supervised_contrastive_loss(
            _normalize(hidden_in[valid]), state.mb_y[valid], torch.cat([pos_h, neg_h]),
            torch.cat([y[k:k + b][valid], y[k + b:][valid]]), self.temperature, self.base_temperature)
        return metric + ce

    @clkernel.hookimpl
    def before_backward(self, state: TrainState) -> None:
        if self._samples is not None:  # the incoming data's cross-entropy is not part of AML's loss
            state.loss = sum(state.loss_terms.values())  # type: ignore[assignment]
