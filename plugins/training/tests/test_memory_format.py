"""channels-last: the model's convolution weights and the images reach the forward pass as channels-last, the
optimizer keeps updating the same parameters (same names, same objects), the results match a run without the
plugin to float rounding, other inputs and 2-D weights are left alone, and the plugin passes the conformance kit."""

from __future__ import annotations

from typing import Any

import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream
from clkernel.testing import check_training_plugin
from clkernel_training import ChannelsLast, to_channels_last


def images(seed: int = 0) -> Benchmark:
    """192 random 3x8x8 images of 4 classes (class c brighter in channel c % 3), 2 experiences of 2 classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(4).repeat(48)
    x = torch.rand(192, 3, 8, 8, generator=g)
    x[torch.arange(192), y % 3] += 0.5
    data = CLDataset.from_tensors(x, y)
    stream = lambda name: Stream(name, [Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(2)])
    return Benchmark({"train": stream("train"), "test": stream("test")})


def cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4))


class Layouts:
    """Whether each forward pass saw channels-last images and a channels-last convolution weight."""

    name = "layouts"

    def __init__(self) -> None:
        self.seen: set[tuple[str, bool, bool]] = set()

    def _record(self, state: Any, phase: str) -> None:
        weight = state.model[0].weight
        self.seen.add((phase, state.mb_x.is_contiguous(memory_format=torch.channels_last),
                       weight.is_contiguous(memory_format=torch.channels_last)))

    @clkernel.hookimpl
    def after_forward(self, state: Any) -> None:
        self._record(state, "train")

    @clkernel.hookimpl
    def after_eval_forward(self, state: Any) -> None:
        self._record(state, "eval")


def train(plugins: list[Any]) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    model = cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = clkernel.Strategy(model, optimizer, plugins=plugins, train_mb_size=16, eval_mb_size=64,
                                 train_epochs=2, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, images(), eval_streams=("test",))
    return model, optimizer, results


def test_forward_passes_see_channels_last_and_results_match_a_contiguous_run():
    layouts = Layouts()
    model, optimizer, _ = train([ChannelsLast(), layouts])
    assert layouts.seen == {("train", True, True), ("eval", True, True)}
    assert optimizer.param_groups[0]["params"] == list(model.parameters())  # the same objects, still updated
    reference, _, _ = train([])
    assert list(model.state_dict()) == list(reference.state_dict())
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-3, atol=1e-4, msg=name)  # float rounding


def test_other_tensors_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 1), torch.nn.Flatten(), torch.nn.Linear(3 * 8, 2))
    linear = model[2].weight.clone()
    to_channels_last(model)  # model.to(memory_format=torch.channels_last) raises on the 5-D weight
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model[2].weight.is_contiguous() and torch.equal(model[2].weight, linear)
    flat = torch.rand(4, 10)
    state = clkernel.TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(),
                                torch.device("cpu"), 4, 1, 4)
    state.mb = (flat, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    ChannelsLast().before_forward(state)
    assert state.mb[0] is flat


def test_conformance_kit():
    results = check_training_plugin(name="channels-last", model=lambda: torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 10)))
    assert [r.status for r in results] == ["passed"] * 4
