"""Cumulative and Joint training: the reference points of continual learning, as training plugins."""

from __future__ import annotations

from typing import Any, Mapping

import torch

import clkernel
from clkernel import CLDataset, Experience, TrainState, adapt_model
from clkernel.log import get_logger

__all__ = ["Cumulative", "Joint"]

log = get_logger("clkernel.replay")


class Cumulative:
    """Cumulative training: each experience trains on the data of every experience seen so far (its own
    included), the train views concatenated (no data copied)."""

    name = "cumulative"

    def __init__(self) -> None:
        self._seen: list[Experience] = []
        self._pending: list[int] | None = None

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        exp = state.experience
        if self._pending is not None:
            self._seen = _from_stream(exp, self._pending, self.name)  # type: ignore[arg-type]
            self._pending = None
        if not any(e is exp for e in self._seen):
            self._seen.append(exp)  # type: ignore[arg-type]
        others = [e.dataset.train() for e in self._seen if e is not exp]
        state.dataset = state.dataset.concat(*others) if others else state.dataset  # type: ignore[union-attr]

    @property
    def dataset(self) -> CLDataset | None:
        """Everything seen so far (None before the first experience)."""
        if not self._seen:
            return None
        first, *rest = (e.dataset.train() for e in self._seen)
        return first.concat(*rest) if rest else first

    def state_dict(self) -> dict[str, Any]:
        seen = self._pending if self._pending is not None else [e.index for e in self._seen]
        return {"experiences": torch.tensor(seen, dtype=torch.long)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint; the experiences are found again in the stream of the next training experience."""
        self._seen, self._pending = [], state["experiences"].tolist()


class Joint:
    """Joint training, the upper bound: at the first training experience of a stream, train on the
    concatenation of every experience of that stream (``experience.stream``), once.

    Later experiences of a stream already trained on are skipped: their epochs run no minibatch (other plugins
    still see their events) and a ``joint_skip`` log line says so. The loop of ``clkernel run``
    (``train(exp); eval(test_stream)`` per experience) therefore trains once on the whole stream and then only
    evaluates. Streams are told apart by name. Dynamic modules (growing heads) are adapted to the joint data's
    classes before training (:func:`clkernel.adapt_model`, which also gives the optimizer their new parameters).

    :raises ValueError: (at training) when the experience belongs to no stream.
    """

    name = "joint"

    def __init__(self) -> None:
        self._trained: list[str] = []  # names of the streams trained on
        self._skip = False

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        exp: Experience = state.experience  # type: ignore[assignment]
        if exp.stream is None:
            raise ValueError(f"{self.name} trains on the whole stream of an experience, but experience "
                             f"{exp.index} belongs to no stream: build experiences inside a clkernel.Stream")
        self._skip = exp.stream.name in self._trained
        if self._skip:
            log.info("joint_skip", experience=exp.index, stream=exp.stream.name,
                     reason="already trained on the whole stream")

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state: TrainState) -> None:
        if self._skip:
            return
        stream = state.experience.stream  # type: ignore[union-attr]
        first, *rest = (e.dataset.train() for e in stream)  # type: ignore[union-attr]
        state.dataset = first.concat(*rest) if rest else first
        joint = Experience(state.experience.index, state.dataset)  # type: ignore[union-attr]
        adapt_model(state.model, joint, optimizer=state.optimizer, device=state.device)

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if self._skip:
            state.dataloader = ()

    @clkernel.hookimpl
    def after_training_epoch(self, state: TrainState) -> None:
        if self._skip:
            state.stop_training = True

    @clkernel.hookimpl
    def after_training_exp(self, state: TrainState) -> None:
        if not self._skip:
            self._trained.append(state.experience.stream.name)  # type: ignore[union-attr]

    def state_dict(self) -> dict[str, Any]:
        return {"trained_streams": list(self._trained)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._trained = list(state["trained_streams"])


def _from_stream(exp: Experience, indices: list[int], who: str) -> list[Experience]:
    if exp.stream is None:
        raise RuntimeError(f"{who}: loaded from a checkpoint, it finds past experiences in the stream of the "
                           f"experience being trained, but that experience belongs to no stream")
    by_index = {e.index: e for e in exp.stream}
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise KeyError(f"{who}: experiences {missing} of the checkpoint are not in stream {exp.stream.name!r}")
    return [by_index[i] for i in indices]
