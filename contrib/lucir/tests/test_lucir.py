"""LUCIR: the cosine classifier, the less-forget constraint, the margin ranking loss and the plugin's term against
hand-worked values; frozen old embeddings; composition with replay and the default metrics; options; the gain over
Naive on split-digits."""

from __future__ import annotations

import math
import types

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Strategy
from clkernel_lucir import LUCIR, CosineLinear, CosineMLP, cosine_head, less_forget_loss, margin_ranking_loss

R = 1 / math.sqrt(2)


def test_cosine_linear_by_hand():
    head = CosineLinear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        head.sigma.fill_(2.0)
    x = torch.tensor([[3.0, 4.0]])
    # x / |x| = (0.6, 0.8); rows (1, 0) and (1, 1) / sqrt(2): cosines 0.6 and 1.4 / sqrt(2)
    torch.testing.assert_close(head.cosine(x), torch.tensor([[0.6, 1.4 * R]]))
    torch.testing.assert_close(head(x), torch.tensor([[1.2, 2.8 * R]]))
    assert CosineLinear(2, 2, sigma=False).sigma is None


def test_cosine_head_replaces_a_linear_classifier():
    model = clkernel.load("model", "simple-mlp", num_classes=3, input_size=4, hidden_size=5)
    cosine_head(model, "classifier")
    assert isinstance(model.classifier, CosineLinear) and model(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="has no submodule 'head'"):
        cosine_head(model, "head")
    with pytest.raises(ValueError, match="is a CosineLinear, not an nn.Linear"):
        cosine_head(model, "classifier")


def test_less_forget_loss_by_hand():
    # orthogonal features: 1 - 0; parallel ones: 1 - 1; mean 0.5
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    old = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert float(less_forget_loss(f, old).detach()) == pytest.approx(0.5)


def test_margin_ranking_loss_by_hand():
    # old classes 0, 1; new 2, 3, 4; k = 2, m = 0.5. Sample 0 (class 0): own 0.9, hardest new 0.6 and 0.5 ->
    # hinges 0.2 and 0.1; sample 1 belongs to a new class: no pair; sample 2 (class 1): own 0.2, hardest new
    # 0.1 and 0.0 -> 0.4 and 0.3. Mean over the 4 pairs: 0.25.
    cos = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.6],
                        [0.0, 0.0, 0.0, 0.9, 0.0],
                        [0.0, 0.2, -0.1, 0.1, 0.0]])
    old, new = torch.tensor([0, 1]), torch.tensor([2, 3, 4])
    loss = margin_ranking_loss(cos, torch.tensor([0, 3, 1]), old, new, margin=0.5, k=2)
    assert float(loss) == pytest.approx(0.25)
    assert float(margin_ranking_loss(cos, torch.tensor([3, 3, 4]), old, new)) == 0.0  # no old sample
    assert margin_ranking_loss(cos, torch.tensor([0, 1, 1]), old, torch.zeros(0, dtype=torch.long)) is None


def test_margin_ranking_loss_on_two_processes_averages_over_the_global_minibatch(monkeypatch):
    # The by-hand case over two ranks: rank 0 holds samples 0 and 2 (4 pairs, hinges 0.2 + 0.1 + 0.4 + 0.3),
    # rank 1 samples 1 and 3, of new classes (no pair). The all-reduce adds the other rank's pair count; each rank
    # returns 2 * its hinge sum / 4 pairs, and DDP's average of the two is the global mean, 0.25 (averaging the
    # per-rank means would give (0.25 + 0) / 2).
    import clkernel.distributed as dist

    cos = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.6],
                        [0.0, 0.0, 0.0, 0.9, 0.0],
                        [0.0, 0.2, -0.1, 0.1, 0.0],
                        [0.0, 0.0, 0.0, 0.0, 0.9]])
    targets, old, new = torch.tensor([0, 3, 1, 4]), torch.tensor([0, 1]), torch.tensor([2, 3, 4])
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    terms = []
    for rows, others in (([0, 2], 0.0), ([1, 3], 4.0)):
        monkeypatch.setattr(dist, "all_reduce_sum", lambda t, others=others: t.add_(others))
        terms.append(float(margin_ranking_loss(cos[rows], targets[rows], old, new, all_ranks=True)))
    assert terms == [pytest.approx(2 * 1.0 / 4), 0.0]
    assert sum(terms) / 2 == pytest.approx(0.25)


def _model():
    # features = identity(x); classifier rows (1, 0), (0, 1), (1, 1), (-1, 0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), CosineLinear(2, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]))
    return model


def _exp(index, classes):
    y = torch.tensor(classes).repeat_interleave(3)
    return Experience(index, CLDataset.from_tensors(torch.randn(len(y), 2), y))


def test_the_plugins_term_by_hand():
    # after experience 0 (classes 0, 1) the previous model's features are x itself; in experience 1 (classes 2, 3)
    # the current feature layer rotates by 90 degrees: x = (1, 0) -> f = (0, 1), f_old = (1, 0).
    #   less-forget: lambda = 5 * sqrt(2 / 2) = 5, times 1 - cos(f, f_old) = 1
    #   margin ranking (y = 0, an old class): cosines of f with the rows: (0, 1, 1/sqrt 2, 0); own 0, hardest new
    #   classes 2 and 3: 1/sqrt 2 and 0 -> (0.5 + 1/sqrt 2 + 0.5) / 2
    model = _model()
    plugin = LUCIR(mem_size=4, seed=0)
    state = types.SimpleNamespace(model=model, device=torch.device("cpu"), experience=_exp(0, [0, 1]),
                                  train_mb_size=4, eval_mb_size=4)
    plugin.before_training_exp(state)
    plugin.after_training_exp(state)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    state.experience = _exp(1, [2, 3])
    plugin.before_training_exp(state)
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    state.mb_x, state.mb_y, state.mb_task = x, y, torch.tensor([0])
    plugin.before_forward(state)
    state.mb_output = model(x)
    plugin.after_forward(state)
    expected = 5 * 1.0 + (0.5 + R + 0.5) / 2
    assert float(plugin.loss_terms(state).detach()) == pytest.approx(expected, rel=1e-6)
    plugin.after_training_exp(state)


def test_old_class_embeddings_stay_fixed_and_new_ones_train(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    torch.manual_seed(0)
    model = CosineMLP(num_classes=4, input_size=8, hidden_size=16)
    plugin = LUCIR(mem_size=20, seed=0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), plugins=[plugin],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    strategy.train(bench.train_stream[0])
    before = model.classifier.weight.detach().clone()
    strategy.train(bench.train_stream[1])
    after = model.classifier.weight.detach()
    assert torch.equal(after[:2], before[:2])  # classes 0 and 1, despite momentum carried over
    assert not torch.equal(after[2:], before[2:])


def test_a_model_without_a_cosine_classifier_is_refused(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    model = blobs.make_model(num_classes=4)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[LUCIR(seed=0)], device="cpu")
    with pytest.raises(clkernel.PluginError, match="has no cosine-normalised classifier.*cosine-mlp"):
        strategy.train(bench.train_stream[0])


def test_composes_with_replay_and_the_default_metrics(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    torch.manual_seed(0)
    model = CosineMLP(num_classes=bench.num_classes, input_size=8, hidden_size=32)
    probe = blobs.Probe()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[clkernel.load("plugin", "replay", mem_size=30, seed=0), LUCIR(mem_size=30, seed=0),
                                 probe, clkernel.load("metric", "default")],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0
    per_exp = len(probe.loss_terms) // 3
    assert all("lucir" not in t for t in probe.loss_terms[:per_exp])
    # >= 0 up to rounding: at an experience's first minibatch the model is its frozen copy and 1 - cos is ~ -6e-9
    assert all(t["lucir"] >= -1e-6 and math.isfinite(t["lucir"]) for t in probe.loss_terms[per_exp:])


@pytest.mark.parametrize("kwargs, match", [
    ({"mem_size": 0}, "lucir: mem_size must be a positive integer"),
    ({"lambda_base": -1}, "lucir: lambda_base must be a non-negative number"),
    ({"lambda_mr": -1}, "lucir: lambda_mr must be a non-negative number"),
    ({"margin": -0.1}, "lucir: margin must be a non-negative number"),
    ({"k": 0}, "lucir: k must be a positive integer"),
    ({"batch_size_mem": 0}, "lucir: batch_size_mem must be a positive integer"),
    ({"storage_policy": "fifo"}, "lucir: storage_policy 'fifo' is unknown"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LUCIR(**kwargs)


def test_registered_names():
    assert isinstance(clkernel.load("plugin", "lucir", k=3), LUCIR)
    model = clkernel.load("model", "cosine-mlp", num_classes=4, input_size=6, hidden_size=5)
    assert isinstance(model.classifier, CosineLinear) and model(torch.randn(2, 6)).shape == (2, 4)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.features)  # LUCIR: no ReLU on the features
    with pytest.raises(ValueError, match="CosineMLP expects 6 values per sample"):
        model(torch.randn(2, 5))


def _final_accuracy(plugins, seed):
    bench = clkernel.load("benchmark", "split-digits", seed=seed)
    torch.manual_seed(seed)
    model = CosineMLP(num_classes=10, input_size=64, hidden_size=128)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=32, train_epochs=3,
                        device="cpu", generator=torch.Generator().manual_seed(seed))
    return clkernel.run(strategy, bench)["acc_stream/eval/test"]


def test_lucir_beats_naive_on_split_digits():
    # measured (README): naive 0.192, LUCIR (memory 200) 0.899 with seed 0, the same cosine MLP
    naive = _final_accuracy([], 0)
    lucir = _final_accuracy([LUCIR(mem_size=200, seed=0)], 0)
    assert naive < 0.3
    assert lucir > naive + 0.5, (naive, lucir)
