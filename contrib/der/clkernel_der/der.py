"""Dark Experience Replay: DER and DER++ (Buzzega, Boschini, Porrello, Abati and Calderara, 2020, "Dark Experience
for General Continual Learning: a Strong, Simple Baseline", NeurIPS).

DER keeps a replay buffer of inputs, labels and the logits the model produced for them, and adds to the loss on the
incoming minibatch a term that keeps the current logits on buffer samples close to the stored ones::

    loss = CE(f(x), y) + alpha * MSE(f(x'), z')                    (DER)
         + beta * CE(f(x''), y'')                                  (DER++)

where ``(x', z')`` and ``(x'', y'')`` are two minibatches drawn independently from the buffer. The buffer is one of
clkernel-replay's storage policies (reservoir sampling by default, as in the paper); this module only keeps the
logits that go with its samples.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

import clkernel
from clkernel import CLDataset, Experience, TrainState, distributed
from clkernel.validate import non_negative_number, positive_int
from clkernel_replay import StoragePolicy, make_policy

__all__ = ["DER", "DERpp", "LogitBuffer", "logit_matching_loss"]

_SHIFT = 1 << 32  # origin code = update key * _SHIFT + position in that update's dataset


def logit_matching_loss(output: torch.Tensor, logits: torch.Tensor, width: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """DER's term: the mean squared difference between current outputs and stored logits, over stored units.

    :param output: float ``(B, C)``, the model's current outputs on the buffer samples.
    :param logits: float ``(B, W)`` with ``W <= C``, the stored logits (rows narrower than ``W`` padded).
    :param width: int64 ``(B,)``, how many leading units of each row of ``logits`` were stored (a model whose
        head grew since stored fewer); ``None``: all ``W``.
    :returns: a 0-d tensor, ``sum over stored units (output - logits)^2 / number of stored units``: with every
        row ``C`` units wide, ``F.mse_loss(output, logits)``. Units the model gained after a logit was stored
        are not compared (as Avalanche and Mammoth do for growing heads).
    :raises ValueError: when ``logits`` is wider than ``output`` or the batch sizes differ.
    """
    if logits.shape[0] != output.shape[0] or logits.shape[1] > output.shape[1]:
        raise ValueError(f"stored logits of shape {tuple(logits.shape)} cannot be compared with outputs of shape "
                         f"{tuple(output.shape)}: the model has fewer output units than when they were stored")
    diff = (output[:, :logits.shape[1]] - logits).pow(2)
    if width is None:
        return diff.mean()
    mask = torch.arange(logits.shape[1], device=logits.device) < width.unsqueeze(1)
    return (diff * mask).sum() / mask.sum().clamp(min=1)


class LogitBuffer:
    """A storage policy's buffer plus the logits of its samples: what DER replays. Usable outside the loop.

    :param policy: a :class:`clkernel_replay.StoragePolicy` (it picks the samples; this class keeps their logits).

    After ``update(experience, model)`` every buffer sample has the logits the model gives it then (eval mode,
    eval transforms, no gradient), stored as float32 rows ``(len(self), W)``: ``W`` is the widest row, narrower
    rows (stored before the head grew) are zero-padded and :attr:`width` says how many units each holds.
    Samples already in the buffer keep the logits they were stored with.
    """

    def __init__(self, policy: StoragePolicy) -> None:
        if not isinstance(policy, StoragePolicy):
            raise TypeError(f"LogitBuffer needs a clkernel_replay StoragePolicy, got {type(policy).__name__}")
        self.policy = policy
        self.logits = torch.zeros(0, 0)
        self.width = torch.zeros(0, dtype=torch.long)
        self._origin = torch.zeros(0, 2, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.width)

    @property
    def buffer(self) -> CLDataset | None:
        """The buffer's samples (a CLDataset view, None while empty), aligned with :attr:`logits`."""
        return self.policy.buffer

    @torch.no_grad()
    def update(self, experience: Experience, model: torch.nn.Module, *, device: str | torch.device | None = None,
               batch_size: int = 256) -> None:
        """Update the policy with ``experience`` and record ``model``'s logits for the samples that entered.

        :param device: where the model runs (default: where its first parameter is).
        :param batch_size: samples per forward pass.
        :raises TypeError: when ``experience`` is not an Experience.
        """
        if not isinstance(experience, Experience):
            raise TypeError(f"LogitBuffer.update expects an Experience, got {type(experience).__name__}")
        old_codes = _codes(self._origin)
        self.policy.update(experience, model=model)
        origin = self.policy.state_dict()["origin"]
        codes = _codes(origin)
        # a slot holds an old sample when its code was in the buffer before (it keeps its logits), else a new one
        order = torch.argsort(old_codes)
        at = torch.searchsorted(old_codes[order], codes).clamp(max=max(len(old_codes) - 1, 0))
        is_old = old_codes[order][at] == codes if len(old_codes) else torch.zeros(len(codes), dtype=torch.bool)
        new_pos = origin[~is_old, 1]
        new_logits = self._forward(experience.dataset, new_pos, model, device, batch_size)
        width = max(self.logits.shape[1], new_logits.shape[1])
        logits = torch.zeros(len(codes), width)
        widths = torch.zeros(len(codes), dtype=torch.long)
        old_rows = order[at[is_old]]
        logits[is_old, :self.logits.shape[1]] = self.logits[old_rows]
        widths[is_old] = self.width[old_rows]
        logits[~is_old, :new_logits.shape[1]] = new_logits
        widths[~is_old] = new_logits.shape[1]
        self.logits, self.width, self._origin = logits, widths, origin

    @staticmethod
    def _forward(dataset: CLDataset, positions: torch.Tensor, model: torch.nn.Module,
                 device: str | torch.device | None, batch_size: int) -> torch.Tensor:
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        view, outs = dataset.eval(), []
        with clkernel.eval_mode(model):
            for start in range(0, len(positions), batch_size):
                x, _, t = view.get_batch(positions[start:start + batch_size])
                outs.append(clkernel.model_forward(model, x.to(device), t.to(device)).detach().float().cpu())
        if not outs:
            return torch.zeros(0, 0)
        return torch.cat(outs)

    def state_dict(self) -> dict[str, Any]:
        """The policy's state dict (``"policy"``) and copies of the ``logits``, ``width`` and ``origin`` tensors."""
        return {"policy": self.policy.state_dict(), "logits": self.logits.clone(), "width": self.width.clone(),
                "origin": self._origin.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`state_dict`'s output; the samples come back with :meth:`restore`."""
        self.policy.load_state_dict(state["policy"])
        self.logits, self.width = state["logits"].clone(), state["width"].clone()
        self._origin = state["origin"].clone()

    def restore(self, datasets: Mapping[int, CLDataset]) -> None:
        """Give the samples back after :meth:`load_state_dict` (``{experience.index: experience.dataset}``)."""
        self.policy.restore(datasets)


def _codes(origin: torch.Tensor) -> torch.Tensor:
    return origin[:, 0] * _SHIFT + origin[:, 1]


class DER:
    """Dark Experience Replay (Buzzega et al., 2020) as a training plugin; with ``beta > 0``, DER++.

    On every training minibatch it draws ``batch_size_mem`` buffer samples (uniformly, without replacement within
    a draw, as Mammoth does), runs the model on them and returns ``alpha * MSE(outputs, stored logits)`` from
    ``loss_terms`` (see :func:`logit_matching_loss`); with ``beta > 0`` it draws a second, independent minibatch
    and adds ``beta * CE(outputs, labels)`` on it. The two minibatches share one forward pass. After each
    experience the storage policy is updated with it and the logits of the samples that entered are recorded
    with the model as trained on that experience (as Avalanche does; the paper records them when a sample is
    first seen, in the middle of training).

    :param mem_size: buffer size in samples.
    :param alpha: weight of the logit-matching term (non-negative).
    :param beta: weight of the label term on a second buffer minibatch; 0 is DER, more is DER++.
    :param batch_size_mem: buffer samples per draw (default: the strategy's ``train_mb_size``).
    :param storage_policy: a name understood by :func:`clkernel_replay.make_policy` (``reservoir``, the
        paper's, by default; ``class_balanced`` is Avalanche's), or a StoragePolicy with ``max_size == mem_size``.
    :param seed: seeds the policy and the draws (default: drawn from torch's global generator).
    :raises ValueError: for a size that is not a positive integer, a negative weight, an unknown policy name or a
        policy whose ``max_size`` differs from ``mem_size``.
    """

    name = "der"

    def __init__(self, mem_size: int = 200, alpha: float = 0.1, beta: float = 0.0,
                 batch_size_mem: int | None = None, storage_policy: str | StoragePolicy = "reservoir",
                 seed: int | None = None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        self.alpha = non_negative_number(alpha, "alpha", self.name)
        self.beta = non_negative_number(beta, "beta", self.name)
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
        self.mem_size, self.batch_size_mem = mem_size, batch_size_mem
        self.memory = LogitBuffer(storage_policy)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator().manual_seed(seed + 1)  # not the policy's stream
        self._samples: CLDataset | None = None  # the buffer's train view while training an experience
        self._logits = self._width = None  # the same rows on the device
        self._uniform = True
        # True after load_state_dict until the buffer is ready for training again: a checkpoint taken inside an
        # experience fires no before_training_exp again, so the next minibatch prepares it.
        self._pending = False

    @property
    def buffer(self) -> CLDataset | None:
        """The buffer's samples (None before the first experience ends)."""
        return self.memory.buffer

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        if distributed.is_distributed() and getattr(state.model, "takes_task_labels", False):
            raise ValueError(f"{self.name}: with a model that takes task labels (one head per task), the replayed "
                             f"samples run through old heads outside the loop's forward pass, which "
                             f"DistributedDataParallel cannot reduce (those heads are unused in its forward); run it "
                             f"in one process, without torchrun")
        self._prepare(state)

    def _restore(self, state: TrainState) -> None:
        if self.memory.policy.needs_restore:
            stream = state.experience.stream if state.experience is not None else None
            if stream is None:
                raise RuntimeError(f"{self.name}: the buffer was loaded from a checkpoint and is rebuilt from the "
                                   f"stream of the experience being trained, but that experience has no stream")
            self.memory.restore({exp.index: exp.dataset for exp in stream})

    def _prepare(self, state: TrainState) -> None:
        self._restore(state)
        self._pending = False
        buffer = self.memory.buffer
        self._samples = None if buffer is None else buffer.train()
        if self._samples is not None:
            self._logits = self.memory.logits.to(state.device)
            self._width = self.memory.width.to(state.device)
            self._uniform = bool((self.memory.width == self.memory.logits.shape[1]).all())

    def _draw(self, k: int) -> torch.Tensor:
        n = len(self.memory)
        return torch.randperm(n, generator=self.generator)[:k]

    @clkernel.hookimpl
    def loss_terms(self, state: TrainState) -> torch.Tensor | None:
        if self._pending:  # loaded from a checkpoint taken inside this experience
            self._prepare(state)
        if self._samples is None:
            return None
        k = self.batch_size_mem or state.train_mb_size
        first = self._draw(k)
        idx = torch.cat([first, self._draw(k)]) if self.beta > 0 else first
        x, y, t = self._samples.get_batch(idx)
        device = state.device
        out = clkernel.model_forward(state.model, x.to(device, non_blocking=True), t.to(device, non_blocking=True))
        m = len(first)
        rows = first.to(device, non_blocking=True)
        term = self.alpha * logit_matching_loss(out[:m], self._logits[rows],
                                                None if self._uniform else self._width[rows])
        if self.beta > 0:
            term = term + self.beta * F.cross_entropy(out[m:], y[m:].to(device, non_blocking=True))
        return term

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        self._restore(state)  # a checkpoint taken after the experience's last minibatch left it to be restored
        self.memory.update(state.experience, state.model, device=state.device,  # type: ignore[arg-type]
                           batch_size=state.eval_mb_size)
        self._samples = self._logits = self._width = None
        self._pending = False

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the buffer's samples are rebuilt from the stream at the next training experience or,
        for a checkpoint taken inside one, at its next minibatch."""
        self.memory.load_state_dict(state["memory"])
        self.generator.set_state(state["generator"])
        self._samples = self._logits = self._width = None
        self._pending = True


class DERpp(DER):
    """DER++ (Buzzega et al., 2020): :class:`DER` with the label term on by default (``beta=0.5``)."""

    name = "derpp"

    def __init__(self, mem_size: int = 200, alpha: float = 0.1, beta: float = 0.5,
                 batch_size_mem: int | None = None, storage_policy: str | StoragePolicy = "reservoir",
                 seed: int | None = None) -> None:
        super().__init__(mem_size=mem_size, alpha=alpha, beta=beta, batch_size_mem=batch_size_mem,
                         storage_policy=storage_policy, seed=seed)
