"""The loop: dynamic modules and the optimizer update, plain torch datasets, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from clkernel import CLDataset, Experience, Naive, Stream, update_optimizer


class GrowingHead(torch.nn.Module):
    """A dynamic module: one more output unit for every new class an experience brings."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.heads = torch.nn.ParameterList()
        self.adapted = []

    def adaptation(self, experience: Experience) -> None:
        self.adapted.append((experience.index, self.training))
        while len(self.heads) <= max(experience.classes):
            self.heads.append(torch.nn.Parameter(torch.zeros(self.features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.stack(list(self.heads)).T


def two_experiences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g)
    y = torch.tensor([0, 1] * 4 + [2, 3] * 4)
    ds = CLDataset.from_tensors(x, y)
    return Stream("train", [Experience(0, ds.subset(range(8))), Experience(1, ds.subset(range(8, 16)))])


def test_dynamic_module_new_parameters_are_trained_and_old_ones_keep_momentum():
    model = torch.nn.Sequential(GrowingHead(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if list(model.parameters()) else None
    head = model[0]
    head.heads.append(torch.nn.Parameter(torch.zeros(3)))  # a first unit so the optimizer has a parameter
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = Naive(model, optimizer, train_mb_size=4, device="cpu")
    stream = two_experiences()
    strategy.train(stream[0])
    assert len(head.heads) == 2 and head.adapted == [(0, True)]
    old = head.heads[0]
    momentum_before = optimizer.state[old]["momentum_buffer"].clone()
    strategy.train(stream[1])
    assert len(head.heads) == 4
    params = optimizer.param_groups[0]["params"]
    assert all(any(p is q for q in params) for p in head.heads)
    new = head.heads[3]
    assert not torch.equal(new.detach(), torch.zeros(3)), "the new unit was not trained"
    assert "momentum_buffer" in optimizer.state[new]
    # the old unit's momentum buffer is the same one, carried on (not reset to the first new gradient)
    assert optimizer.state[old]["momentum_buffer"] is not None
    assert not torch.equal(optimizer.state[old]["momentum_buffer"], momentum_before)
    strategy.eval(stream)
    assert head.adapted[-2:] == [(0, False), (1, False)]


def test_update_optimizer_drops_parameters_that_left_the_model():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(a, b)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    model[1] = torch.nn.Identity()
    update_optimizer(optimizer, model)
    assert [p for g in optimizer.param_groups for p in g["params"]] == list(a.parameters())
    assert set(optimizer.state) == set(a.parameters())


def test_plain_torch_datasets_train_and_evaluate():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g))
    model = torch.nn.Linear(3, 2)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=5, device="cpu")
    strategy.train(data)
    strategy.eval([Experience(0, data)])
    assert strategy.state.iteration == 3


def test_takes_task_labels_models_receive_t():
    class TaskModel(torch.nn.Module):
        takes_task_labels = True

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.seen = []

        def forward(self, x, t):
            self.seen.append(t.clone())
            return self.lin(x)

    model = TaskModel()
    ds = CLDataset.from_tensors(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.tensor([5, 5, 6, 6]))
    Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=4, device="cpu").train(ds)
    assert sorted(model.seen[0].tolist()) == [5, 5, 6, 6]


def test_bad_input_names_the_object_and_what_was_expected():
    model = torch.nn.Linear(3, 2)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    with pytest.raises(TypeError, match="train\\(\\) expects an Experience.*got int"):
        strategy.train(5)
    with pytest.raises(TypeError, match="got a str among them"):
        strategy.train(["experience"])
    with pytest.raises(ValueError, match="no experiences"):
        strategy.eval([])
    too_many_classes = CLDataset.from_tensors(torch.randn(4, 3), torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"output of shape \(4, 2\).*targets of shape \(4,\).*largest class id 7"):
        strategy.train(too_many_classes)
