"""Shared fixtures: the embedded split-digits benchmark (with a validation stream), a small MLP, a strategy
builder and a plugin that records what the loop logs and does."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import clkernel
from clkernel import Strategy


@pytest.fixture(scope="session")
def digits() -> Any:
    """split-digits in 2 experiences of 5 classes, with a stratified 20% validation stream: train, valid, test."""
    return clkernel.load("benchmark", "split-digits", n_experiences=2, seed=0, valid_size=0.2)


def mlp(seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


class Recorder:
    """Records every logged value (name -> list of floats, in order), the learning rate each epoch started with,
    the epochs run per experience and the model's parameters after each epoch."""

    name = "recorder"

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.epoch_lrs: list[float] = []
        self.epochs: dict[int, int] = {}
        self.params: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.final: dict[int, dict[str, torch.Tensor]] = {}  # experience -> weights after its epochs
        #: (training experience, epoch, inside its epochs, name, value) of every logged number
        self.log: list[tuple[int | None, int, bool, str, float]] = []
        self._training: int | None = None
        self._inside = False

    @clkernel.hookimpl
    def before_training_exp(self, state: Any) -> None:
        self._training, self._inside = state.experience.index, True

    @clkernel.hookimpl
    def after_training_exp(self, state: Any) -> None:
        self._inside = False
        self.final[state.experience.index] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}

    @clkernel.hookimpl
    def log_metrics(self, state: Any, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                self.values.setdefault(key, []).append(float(value))
                self.log.append((self._training, state.epoch, self._inside, key, float(value)))

    @clkernel.hookimpl
    def before_training_epoch(self, state: Any) -> None:
        self.epoch_lrs.append(state.optimizer.param_groups[0]["lr"])

    @clkernel.hookimpl
    def after_training_epoch(self, state: Any) -> None:
        self.epochs[state.experience.index] = state.epoch + 1
        self.params[state.experience.index, state.epoch] = {k: v.detach().clone()
                                                            for k, v in state.model.state_dict().items()}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_strategy() -> Callable[..., Strategy]:
    """``make_strategy(plugins, epochs=1, lr=0.05, eval_every=0, mb=32, optimizer="sgd", seed=0)``: an MLP and
    its optimizer, seeded, on the CPU, with a seeded minibatch order."""

    def build(plugins: list[Any], *, epochs: int = 1, lr: float = 0.05, eval_every: int = 0, mb: int = 32,
              optimizer: str = "sgd", seed: int = 0, model: torch.nn.Module | None = None) -> Strategy:
        model = model if model is not None else mlp(seed)
        opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd"
               else torch.optim.Adam(model.parameters(), lr=lr))
        return Strategy(model, opt, plugins=plugins, train_mb_size=mb, eval_mb_size=512, train_epochs=epochs,
                        eval_every=eval_every, device="cpu", generator=torch.Generator().manual_seed(seed))

    return build


@pytest.fixture
def make_mlp() -> Callable[..., torch.nn.Module]:
    """``make_mlp(seed=0)``: the 64-32-10 MLP every test trains, seeded."""
    return mlp
