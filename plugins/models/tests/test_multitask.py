"""MultiTaskModule routing, MultiHeadClassifier, as_multitask, and untrained task labels."""

from __future__ import annotations

import pytest
import structlog
import torch
from torch import nn

from clkernel import CLDataset, Experience, Naive
from clkernel_models import (MTSimpleMLP, MultiHeadClassifier, MultiTaskModule, SimpleMLP, UnknownTaskError,
                             as_multitask)


class PerTask(MultiTaskModule):
    """Task t: a distinct linear map to t + 2 outputs, so both the values and the widths tell the tasks apart."""

    def __init__(self) -> None:
        super().__init__()
        self.maps = nn.ModuleDict()
        self.calls: list[tuple[int, int]] = []

    def add_task(self, task: int, experience: Experience) -> None:
        self.maps[str(task)] = nn.Linear(3, task + 2)

    def forward_single_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        self.calls.append((task, len(x)))
        return self.maps[str(task)](x)


def experience(index: int, task: int, n: int = 4, classes: list[int] | None = None) -> Experience:
    y = torch.tensor((classes or [0, 1]) * n)[:n]
    return Experience(index, CLDataset.from_tensors(torch.randn(n, 3), y, task))


def test_a_minibatch_mixing_three_tasks_comes_back_in_the_original_order():
    torch.manual_seed(0)
    model = PerTask()
    for i, t in enumerate((5, 0, 2)):
        model.adaptation(experience(i, t))
    x = torch.randn(9, 3, requires_grad=True)
    t = torch.tensor([2, 0, 5, 5, 2, 0, 0, 5, 2])
    out = model(x, t)
    assert out.shape == (9, 7)
    assert sorted(model.calls) == [(0, 3), (2, 3), (5, 3)]  # one call per task, not per sample
    for i in range(9):
        task = int(t[i])
        expected = model.maps[str(task)](x[i:i + 1])[0]
        assert torch.allclose(out[i, :task + 2], expected)
        assert (out[i, task + 2:] == 0.0).all()  # padding of narrower outputs
    out.sum().backward()
    assert x.grad is not None and all(m.weight.grad is not None for m in model.maps.values())


def test_multi_head_classifier_routes_each_sample_to_its_task_head():
    torch.manual_seed(0)
    mhc = MultiHeadClassifier(3, 2)
    mhc.adaptation(experience(0, 1, classes=[0, 1]))
    mhc.adaptation(experience(1, 7, classes=[2, 3]))
    mhc.adaptation(experience(2, 4, classes=[4, 5]))
    assert mhc.known_tasks == [1, 7, 4]
    assert [mhc.head(t).out_features for t in (1, 7, 4)] == [2, 4, 6]
    x, t = torch.randn(6, 3), torch.tensor([4, 1, 7, 7, 1, 4])
    out = mhc(x, t)
    assert out.shape == (6, 6)
    for i in range(6):
        head = mhc.head(int(t[i]))
        assert torch.allclose(out[i, :head.out_features], head(x[i:i + 1])[0])
    # units outside a task's classes never win: masked inside a head, padded with the mask value beyond it
    assert (out[0, :4] == -1000.0).all() and (out[1, 2:] == -1000.0).all() and (out[2, :2] == -1000.0).all()


def test_a_task_never_seen_in_a_forward_call_is_a_clear_error():
    mhc = MultiHeadClassifier(3, 2)
    mhc.adaptation(experience(0, 0))
    mhc.adaptation(experience(1, 1))
    with pytest.raises(UnknownTaskError, match=r"task label 9.*trained tasks: \[0, 1\]"):
        mhc(torch.randn(4, 3), torch.tensor([0, 9, 1, 0]))
    with pytest.raises(UnknownTaskError, match="task label 9"):
        mhc(torch.randn(4, 3), torch.tensor([9, 9, 9, 9]))  # even alone in the minibatch: never another head
    with pytest.raises(UnknownTaskError, match="no head for task 3"):
        mhc.forward_single_task(torch.randn(2, 3), 3)


def test_evaluating_an_untrained_task_gives_the_documented_fallback_with_a_warning(make_benchmark, accuracy):
    bench = make_benchmark(n_exp=3, task_labels=True)
    torch.manual_seed(0)
    model = MTSimpleMLP(6, input_size=8, hidden_size=16, drop_rate=0.0)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[accuracy], train_mb_size=16,
                     train_epochs=3, device="cpu")
    strategy.train(bench.train_stream[0])
    with structlog.testing.capture_logs() as logs:
        strategy.eval(bench.test_stream)
        strategy.eval(bench.test_stream)  # warned once per task, not per evaluation
    warnings = [e for e in logs if e["event"] == "untrained_task"]
    assert len(warnings) == 2 and [w["tasks"] for w in warnings] == [[1], [2]]
    assert warnings[0]["model"] == "MTSimpleMLP"
    assert model.untrained_tasks == [1, 2] and model.known_tasks == [0]
    assert accuracy.results[0] > 0.9
    for k in (1, 2):  # all-zero logits: the same score for every class, no head's answer
        assert (accuracy.outputs[k] == 0).all()
    strategy.train(bench.train_stream[1])  # training the task later replaces the fallback
    assert model.known_tasks == [0, 1] and model.untrained_tasks == [2]
    strategy.eval(bench.test_stream[1])
    assert accuracy.results[1] > 0.9


def test_unseen_task_error_policy_stops_the_evaluation(make_benchmark):
    bench = make_benchmark(n_exp=2, task_labels=True)
    model = MTSimpleMLP(4, input_size=8, hidden_size=16, unseen_task="error")
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=16, device="cpu")
    strategy.train(bench.train_stream[0])
    with pytest.raises(UnknownTaskError, match=r"task label\(s\) \[1\], never trained"):
        strategy.eval(bench.test_stream)
    with pytest.raises(ValueError, match="unseen_task must be one of"):
        MultiHeadClassifier(3, unseen_task="ignore")


def test_multi_head_model_learns_a_task_incremental_benchmark(make_benchmark, accuracy):
    bench = make_benchmark(n_exp=4, task_labels=True)
    torch.manual_seed(0)
    model = MTSimpleMLP(8, input_size=8, hidden_size=32, drop_rate=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = Naive(model, optimizer, plugins=[accuracy], train_mb_size=16, train_epochs=3, device="cpu")
    for exp in bench.train_stream:
        strategy.train(exp)
    strategy.eval(bench.test_stream)
    assert model.known_tasks == [0, 1, 2, 3]
    assert sorted(model.classifier.heads) == ["0", "1", "2", "3"]
    assert all(acc > 0.9 for acc in accuracy.results.values()), accuracy.results
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in model.parameters())


def test_an_experience_with_several_tasks_gives_each_head_its_own_classes():
    y, t = torch.tensor([0, 1, 5, 6, 0, 5]), torch.tensor([0, 0, 3, 3, 0, 3])
    mhc = MultiHeadClassifier(3, 2)
    mhc.adaptation(Experience(0, CLDataset.from_tensors(torch.randn(6, 3), y, t)))
    assert mhc.head(0).active_units.nonzero().flatten().tolist() == [0, 1]
    assert mhc.head(3).active_units.nonzero().flatten().tolist() == [5, 6]


def test_as_multitask_turns_the_classifier_into_heads_starting_from_the_old_one():
    torch.manual_seed(0)
    model = SimpleMLP(num_classes=4, input_size=6, hidden_size=8, drop_rate=0.0)
    old = model.classifier
    mt = as_multitask(model, "classifier")
    assert isinstance(mt, MultiTaskModule) and mt.takes_task_labels
    assert isinstance(model.classifier, nn.Identity)
    mt.adaptation(experience(0, 3, classes=[0, 1]))
    mt.adaptation(experience(1, 8, classes=[2, 3]))
    assert mt.classifier.head(3).weights[0] is old.weight and mt.classifier.head(3).biases[0] is old.bias
    x, t = torch.randn(5, 6), torch.tensor([8, 3, 3, 8, 8])
    out = mt(x, t)
    feats = mt.backbone(x)
    assert torch.allclose(out[1, :2], old(feats[1:2])[0, :2]) and (out[1, 2:] == -1000.0).all()
    assert torch.allclose(out[0], mt.classifier.head(8)(feats[0:1])[0])


def test_as_multitask_names_the_culprit():
    with pytest.raises(ValueError, match=r"no submodule 'head'.*features\.0, classifier"):
        as_multitask(SimpleMLP(input_size=4, hidden_size=4), "head")
    with pytest.raises(TypeError, match="'features' of SimpleMLP is a Sequential, expected a torch.nn.Linear"):
        as_multitask(SimpleMLP(input_size=4, hidden_size=4), "features")
    seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    mt = as_multitask(seq, "2")
    assert isinstance(seq[2], nn.Identity) and mt.classifier.out_features == 3


def test_adaptation_is_idempotent_and_a_trained_model_loads_into_a_fresh_one():
    torch.manual_seed(0)
    model = MTSimpleMLP(None, input_size=3, hidden_size=8, drop_rate=0.0)
    exps = [experience(0, 0), experience(1, 2, classes=[2, 3]), experience(2, 5, classes=[1, 4])]
    for exp in exps:
        model.adaptation(exp)
        params = [id(p) for p in model.parameters()]
        state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        model.adaptation(exp)
        assert [id(p) for p in model.parameters()] == params
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor))
    model.eval()
    model.adaptation(experience(3, 9))  # an untrained task, recorded for the fallback
    fresh = MTSimpleMLP(None, input_size=3, hidden_size=8)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x, t = torch.randn(8, 3), torch.tensor([0, 2, 5, 9, 5, 2, 0, 9])
    assert torch.equal(fresh(x, t), model(x, t))
    assert fresh.known_tasks == [0, 2, 5] and fresh.untrained_tasks == [9]
    assert fresh.classifier.pending is None and sorted(fresh.classifier.heads) == ["0", "2", "5"]


def test_a_module_without_a_fallback_refuses_untrained_tasks_at_evaluation():
    model = PerTask()
    model.adaptation(experience(0, 0))
    model.eval()
    model.adaptation(experience(1, 4))
    with pytest.raises(UnknownTaskError, match="no output for task 4.*defines no fallback"):
        model(torch.randn(2, 3), torch.tensor([4, 0]))


def test_new_heads_follow_the_dtype_the_module_was_moved_to():
    mhc = MultiHeadClassifier(3, 2).double()
    for i in range(3):
        mhc.adaptation(experience(i, i, classes=[0, 5]))
    assert len(mhc.heads) == 3 and all(p.dtype == torch.float64 for p in mhc.parameters())
    assert mhc(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 0])).dtype == torch.float64
    mhc.eval()
    mhc.adaptation(experience(3, 8))
    assert mhc(torch.randn(2, 3, dtype=torch.float64), 8).dtype == torch.float64
