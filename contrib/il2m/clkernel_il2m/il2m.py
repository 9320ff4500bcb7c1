"""IL2M (Belouadah and Popescu, 2019, "IL2M: Class Incremental Learning With Dual Memory", ICCV) as a training plugin.

IL2M fine-tunes the model on each experience plus a bounded memory of exemplars (plain cross-entropy, no
distillation) and keeps a second memory of statistics:

- for each class, ``mu_init(c)``: its mean score on its own training samples after the experience that brought it
  (the "initial" statistics, when all its data was available);
- for each experience ``s`` that brought classes, ``conf(s)``: the model's mean top-1 score on the training samples
  of those new classes (its confidence in that state);
- after the latest experience ``N``, for each old class, ``mu_N(c)``: its mean score on its exemplars.

A prediction biased towards the new classes is rectified (the paper's Eq. 1): when the top-1 class of a sample is a
class of experience ``N``, the score of every old class ``c`` (first learned in experience ``s(c)``) becomes::

    score(c) * mu_init(c) / mu_N(c) * conf(N) / conf(s(c))

and the sample is classified again; a sample whose top-1 class is old keeps its scores. Scores are the model's raw
outputs (``score="logits"``, as in the authors' code and FACIL) or their softmax (``score="softmax"``). Statistics
are computed with the model in eval mode on the training samples with their eval transforms, after training; the
top-1 score is taken over the classes seen so far.

The exemplars are iCaRL's memory (:func:`clkernel_icarl.exemplar_memory`): ``mem_size`` in all, split evenly over
the classes seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from clkernel_icarl import exemplar_memory
from torch import nn

import clkernel
from clkernel import CLDataset, TrainState, iterate_minibatches, model_forward
from clkernel.log import get_logger

__all__ = ["IL2M", "rectify_scores"]

SCORES = ("logits", "softmax")

log = get_logger("clkernel.il2m")


def rectify_scores(scores: torch.Tensor, new_classes: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """IL2M's rectification (Belouadah & Popescu, 2019, Eq. 1): rows whose top-1 class is new get their scores
    multiplied by ``factors``; the other rows are returned as they are.

    :param scores: float ``(B, C)``.
    :param new_classes: bool ``(C,)``, True for the classes of the latest experience.
    :param factors: float ``(C,)``, ``mu_init(c) / mu_N(c) * conf(N) / conf(s(c))`` for old classes, 1 for the
        others.
    :returns: float ``(B, C)``, a new tensor.
    :raises ValueError: when ``new_classes`` or ``factors`` does not have ``C`` entries.
    """
    if new_classes.shape != (scores.shape[1],) or factors.shape != (scores.shape[1],):
        raise ValueError(f"rectify_scores: scores have {scores.shape[1]} classes but new_classes has shape "
                         f"{tuple(new_classes.shape)} and factors {tuple(factors.shape)}")
    rectify = new_classes[scores.argmax(dim=1)].unsqueeze(1)
    return torch.where(rectify, scores * factors.to(scores.dtype), scores)


class IL2M:
    """IL2M (Belouadah & Popescu, 2019) as a training plugin: exemplars replayed with each experience, class and
    model statistics after it, and old-class scores rectified at evaluation (the module docstring gives the rule).

    :param mem_size: exemplars in all, split evenly over the classes seen.
    :param score: what is rectified: ``logits``, the model's raw outputs (the authors'), or ``softmax``, its
        probabilities (the evaluated outputs are then the logs of the rectified probabilities,
        ``log_softmax + log(factor)``).
    :param selection: how exemplars are picked: ``herding`` (iCaRL's), ``random``, ``closest_to_center``.
    :param classifier: dotted name of the submodule whose input are the herding features (default: the submodule
        named ``classifier``, else the model's last ``torch.nn.Linear``).
    :param rectify: rectify the scores at evaluation; False evaluates the fine-tuned model as it is (the paper's
        "FT" baseline with the same memory; the statistics are still kept).
    :param seed: seeds the random selection (default: drawn from torch's global generator).
    :raises ValueError: for an option out of range, or an unknown ``score`` or ``selection``.

    With raw logits a ratio of mean scores is meaningful only when both are positive: an old class whose initial or
    current mean score is not positive is left unrectified (factor 1), and when the latest confidence is not
    positive nothing is rectified (an ``il2m_no_rectification`` warning is logged); ``score="softmax"`` has no
    such case.
    Training itself is the loop's (cross-entropy on the experience plus the exemplars); the plugin adds no loss term.
    """

    name = "il2m"

    def __init__(self, mem_size: int = 2000, score: str = "logits", selection: str = "herding",
                 classifier: str | None = None, rectify: bool = True, seed: int | None = None) -> None:
        if score not in SCORES:
            raise ValueError(f"{self.name}: score {score!r} is unknown; choose one of {', '.join(SCORES)}")
        if classifier is not None and (not isinstance(classifier, str) or not classifier):
            raise ValueError(f"{self.name}: classifier must be the name of a submodule, got {classifier!r}")
        self.policy = exemplar_memory(mem_size, selection, classifier, seed, owner=self.name)
        self.mem_size, self.score, self.selection, self.classifier = mem_size, score, selection, classifier
        self.rectify = bool(rectify)
        #: Per class (by class id): mean score when the class was new, mean score on its exemplars after the latest
        #: experience (float64), and the index in :attr:`confidence` of the experience that brought it (-1: none).
        self.init_means = torch.zeros(0, dtype=torch.float64)
        self.current_means = torch.zeros(0, dtype=torch.float64)
        self.first_state = torch.zeros(0, dtype=torch.long)
        #: The model's mean top-1 score on the new classes' samples, per experience that brought classes.
        self.confidence: list[float] = []
        #: The classes the latest experience brought (predictions on them are rectified).
        self.new_classes: list[int] = []
        self._factors: torch.Tensor | None = None
        self._is_new: torch.Tensor | None = None

    @property
    def buffer(self) -> CLDataset | None:
        """The exemplars (None before the first experience ends)."""
        return self.policy.buffer

    @property
    def seen(self) -> list[int]:
        """Every class with initial statistics."""
        return (self.first_state >= 0).nonzero().flatten().tolist()

    def factors(self, num_classes: int | None = None) -> torch.Tensor:
        """float64 ``(C,)``: the rectification factor of every class after the latest experience (1 for the new
        classes, for classes never seen, and for old classes without exemplars or, with logits, with a mean score
        that is not positive); ``C`` is ``num_classes`` or the number of classes with statistics."""
        size = max(num_classes or 0, len(self.first_state))
        out = torch.ones(size, dtype=torch.float64)
        if not self.new_classes or not self.confidence:
            return out
        n = len(self.first_state)
        old = (self.first_state >= 0) & (self.first_state < len(self.confidence) - 1)
        old &= ~torch.isin(torch.arange(n), torch.tensor(self.new_classes, dtype=torch.long))
        old &= (self.init_means > 0) & (self.current_means > 0)
        if self.confidence[-1] <= 0:
            return out
        conf = torch.tensor(self.confidence, dtype=torch.float64)
        states = self.first_state.clamp(min=0)
        valid = old & (conf[states] > 0)
        ratio = self.init_means / torch.where(valid, self.current_means, torch.ones_like(self.current_means))
        factor = ratio * conf[-1] / conf[states]
        out[:n] = torch.where(valid, factor, out[:n])
        return out

    # ------------------------------------------------------------------ training

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        exp = state.experience
        if self.policy.needs_restore:  # loaded from a checkpoint: the exemplars come back from the stream
            if exp is None or exp.stream is None:
                raise RuntimeError(f"{self.name}: the exemplars were loaded from a checkpoint and are rebuilt from "
                                   f"the stream of the experience being trained, but that experience has no stream")
            self.policy.restore({e.index: e.dataset for e in exp.stream})
        buffer = self.policy.buffer
        if buffer is not None:
            state.dataset = state.dataset.concat(buffer.train())  # type: ignore[union-attr]

    @torch.no_grad()
    def _scores(self, model: nn.Module, dataset: CLDataset, device: torch.device, batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 scores ``(N, C)`` and int64 targets ``(N,)`` of ``dataset`` (eval transforms, eval mode)."""
        rows, targets = [], []
        with clkernel.eval_mode(model):
            for x, y, t in iterate_minibatches(dataset.eval(), batch_size, shuffle=False):
                out = model_forward(model, x.to(device), t.to(device)).float()
                rows.append((F.softmax(out, dim=1) if self.score == "softmax" else out).double().cpu())
                targets.append(y.long())
        return torch.cat(rows), torch.cat(targets)

    def _grow(self, size: int) -> None:
        extra = size - len(self.first_state)
        if extra > 0:
            self.init_means = torch.cat([self.init_means, torch.zeros(extra, dtype=torch.float64)])
            self.current_means = torch.cat([self.current_means, torch.zeros(extra, dtype=torch.float64)])
            self.first_state = torch.cat([self.first_state, torch.full((extra,), -1, dtype=torch.long)])

    @staticmethod
    def _class_means(scores: torch.Tensor, targets: torch.Tensor, classes: Sequence[int]) -> dict[int, float]:
        return {c: float(scores[targets == c, c].mean()) for c in classes if bool((targets == c).any())}

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        model, exp = state.model, state.experience
        old = self.seen
        scores, targets = self._scores(model, exp.dataset, state.device, state.eval_mb_size)  # type: ignore[union-attr]
        width = scores.shape[1]
        if int(targets.max()) >= width:
            raise ValueError(f"{self.name}: the model has {width} outputs but the experience holds class "
                             f"{int(targets.max())}")
        self._grow(width)
        new = sorted(c for c in set(targets.tolist()) if c not in old)
        if new:  # the initial statistics of the new classes and the model's confidence in this state
            for c, mean in self._class_means(scores, targets, new).items():
                self.init_means[c] = mean
                self.first_state[c] = len(self.confidence)
            seen = torch.tensor(sorted(set(old) | set(new)), dtype=torch.long)
            on_new = torch.isin(targets, torch.tensor(new, dtype=torch.long))
            self.confidence.append(float(scores[on_new][:, seen].max(dim=1).values.mean()))
        self.new_classes = new
        buffer = self.policy.buffer  # the exemplars this experience trained with: old classes' current statistics
        self.current_means.zero_()
        if buffer is not None and old:
            b_scores, b_targets = self._scores(model, buffer, state.device, state.eval_mb_size)
            for c, mean in self._class_means(b_scores, b_targets, old).items():
                self.current_means[c] = mean
        self.policy.update(exp, model=model)  # type: ignore[arg-type]
        self._factors = self._is_new = None
        if new and self.confidence[-1] <= 0:
            log.warning("il2m_no_rectification", experience=exp.index,  # type: ignore[union-attr]
                        confidence=self.confidence[-1], reason="the model's mean top-1 raw score on the new "
                        "classes is not positive, so score ratios mean nothing: no score is rectified after this "
                        "experience; score='softmax' avoids it")

    # ------------------------------------------------------------------ evaluation

    @clkernel.hookimpl
    def after_eval_forward(self, state: TrainState) -> None:
        if not self.rectify or not self.new_classes or len(self.confidence) < 2:
            return
        out = state.mb_output
        width = out.shape[1]
        if self._factors is None or len(self._factors) != width or self._factors.device != out.device:
            self._factors = self.factors(width)[:width].to(out.device, torch.float32)
            is_new = torch.zeros(width, dtype=torch.bool)
            is_new[[c for c in self.new_classes if c < width]] = True
            self._is_new = is_new.to(out.device)
        if self.score == "softmax":  # log(p * factor), from log_softmax: no log(0) for underflowing probabilities
            rectify = self._is_new[out.argmax(dim=1)].unsqueeze(1)  # type: ignore[index]
            state.mb_output = F.log_softmax(out.float(), dim=1) + rectify * self._factors.log()
        else:
            state.mb_output = rectify_scores(out, self._is_new, self._factors)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "init_means": self.init_means.clone(),
                "current_means": self.current_means.clone(), "first_state": self.first_state.clone(),
                "confidence": torch.tensor(self.confidence, dtype=torch.float64),
                "new_classes": torch.tensor(self.new_classes, dtype=torch.long)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the exemplars are rebuilt from the stream at the next training experience."""
        self.policy.load_state_dict(state["policy"])
        self.init_means = state["init_means"].clone()
        self.current_means = state["current_means"].clone()
        self.first_state = state["first_state"].clone()
        self.confidence = [float(c) for c in state["confidence"].tolist()]
        self.new_classes = [int(c) for c in state["new_classes"].tolist()]
        self._factors = self._is_new = None
