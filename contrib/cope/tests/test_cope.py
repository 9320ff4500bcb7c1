"""CoPE: the PPP loss and the prototype head against hand-worked values and an independent implementation, the plugin
with its own head and with a head inside the model, options, and the gain on split-digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clkernel
from clkernel import Strategy
from clkernel_cope import UNSEEN_SCORE, CoPE, PrototypeClassifier, ppp_loss

E = math.e


def test_ppp_loss_two_samples_by_hand():
    # x_a = p_0 = (1, 0) of class 0, x_b = p_1 = (0, 1) of class 1, temperature 1.
    # attractor of each: e^1 / (e^1 + e^0); repellor of each pair: 1 - (1/(1+e) + 1/(1+e)) / 2 = e / (1 + e)
    # loss = -(2 log(e/(e+1)) + 2 log(e/(e+1))) / 2 = 2 log(1 + e^-1)
    loss = ppp_loss(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([True, True]), temperature=1.0)
    assert float(loss) == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)


def test_ppp_loss_with_a_pseudo_prototype_by_hand():
    # prototypes p0 = (1, 0), p1 = (0, 1); x1 = (1, 0) and x2 = (0.6, 0.8) of class 0, x3 = (0, 1) of class 1; T = 1
    # dot products: x1.p0 = 1, x1.p1 = 0, x2.p0 = .6, x2.p1 = .8, x3.p0 = 0, x3.p1 = 1, x1.x2 = .6, x1.x3 = 0,
    # x2.x3 = .8. P(c | x; r) = e^(r.x) / (e^(r.x) + sum of e^(p_k.x) over the other prototypes k != c).
    e = math.exp
    att1 = (E / (E + 1) + e(.6) / (e(.6) + 1)) / 2  # proxies of class 0 for x1: p0 and x2
    att2 = (e(.6) / (e(.6) + e(.8)) + e(.6) / (e(.6) + e(.8))) / 2  # for x2: p0 and x1
    att3 = E / (E + 1)  # x3 is alone in class 1: p1 only
    rep = [
        1 / (1 + E),  # query x1, class 1 through x3 and p1: (1/(1+e) + 1/(1+e)) / 2
        e(.8) / (e(.8) + e(.6)),  # query x2, class 1 through x3 and p1
        1 / (1 + E),  # query x3, class 0 through x1 and p0
        (e(.8) / (e(.8) + E) + 1 / (1 + E)) / 2,  # query x3, class 0 through x2 and p0
    ]
    expected = -(math.log(att1) + math.log(att2) + math.log(att3) + sum(math.log(1 - r) for r in rep)) / 3
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    loss = ppp_loss(x * 3, torch.tensor([0, 0, 1]), torch.eye(2), torch.ones(2, dtype=torch.bool), temperature=1.0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)  # features are normalised first: x * 3 is x


def _reference_ppp(x, y, protos, temperature):
    """The PPP loss written class by class, as Avalanche's PPPloss computes it (an independent implementation)."""
    total = 0.0
    for c in y.unique().tolist():
        bc, bk = x[y == c], x[y != c]
        pc, pk = protos[c:c + 1], torch.cat([protos[:c], protos[c + 1:]])
        m = torch.cat([bc, pc, pk]).detach()
        split = len(m) - len(pk)
        d = torch.exp(m @ bc.T / temperature).masked_fill(torch.eye(len(m), len(bc), dtype=torch.bool), 0)
        num, den = d[:split], d[split:].sum(0)
        attract = ((num / (num + den)).sum(0) / len(bc)).log().sum()
        repel = 0.0
        if len(bk):
            d = torch.exp(m @ bk.T / temperature)
            num, den = d[:split], d[split:].sum(0, keepdim=True)
            p = num / (num + den)
            repel = torch.log(1 - (p[:-1] + p[-1:]) / 2).sum()
        total = total - attract - repel
    return total / len(y)


def test_ppp_loss_and_its_gradient_match_a_class_by_class_implementation():
    torch.manual_seed(0)
    features = torch.randn(12, 5)
    y = torch.randint(0, 3, (12,))
    protos = F.normalize(torch.rand(3, 5), dim=1)
    mine, ref = features.clone().requires_grad_(), features.clone().requires_grad_()
    loss = ppp_loss(mine, y, protos, torch.ones(3, dtype=torch.bool), temperature=0.1)
    expected = _reference_ppp(F.normalize(ref, dim=1), y, protos, 0.1)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(mine.grad, ref.grad, atol=1e-5, rtol=1e-4)


def test_prototype_classifier_by_hand():
    head = PrototypeClassifier(2, 3, seed=0)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    head.mark_seen(torch.tensor([0, 1]))
    scores = head(torch.tensor([[3.0, 4.0]]))  # normalised (0.6, 0.8): cosines 0.6 and 0.8; class 2 unseen
    torch.testing.assert_close(scores, torch.tensor([[0.6, 0.8, UNSEEN_SCORE]]))
    # momentum 0.5 with the class-0 features (0, 2) and (0, 5): their normalised mean is (0, 1), so
    # p0 <- normalise(0.5 (1, 0) + 0.5 (0, 1)) = (1, 1)/sqrt 2; class 1 is not in the minibatch and stays
    head.update(torch.tensor([[0.0, 2.0], [0.0, 5.0]]), torch.tensor([0, 0]), momentum=0.5)
    torch.testing.assert_close(head.prototypes[0], torch.tensor([2 ** -0.5, 2 ** -0.5]))
    torch.testing.assert_close(head.prototypes[1], torch.tensor([0.0, 1.0]))
    assert head.seen.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="expected"):
        head(torch.zeros(1, 3))


def test_with_a_prototype_head_in_the_model_any_metric_sees_class_scores(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    torch.manual_seed(0)
    head = PrototypeClassifier(16, bench.num_classes, seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), head)
    before = head.prototypes.clone()
    probe = blobs.Probe()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01),
                        plugins=[CoPE(mem_size=40, seed=0), probe, clkernel.load("metric", "default")],
                        train_mb_size=16, train_epochs=3, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert head.seen.all() and not torch.allclose(head.prototypes, before)
    torch.testing.assert_close(head.prototypes.norm(dim=1), torch.ones(bench.num_classes))
    assert results["acc_stream/eval/test"] > 0.9  # well-separated blobs, told apart by the nearest prototype
    assert all(set(t) == {"cope"} for t in probe.loss_terms)  # the loss is the PPP loss alone


def test_own_head_composes_with_replay_and_the_default_metrics(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    model = blobs.make_model(num_classes=12)  # 12-unit embeddings
    plugin = CoPE(mem_size=30, num_classes=bench.num_classes, seed=0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01),
                        plugins=[clkernel.load("plugin", "replay", mem_size=30, seed=0), plugin,
                                 clkernel.load("metric", "default")],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0 and math.isfinite(results["loss_stream/eval/test"])
    assert plugin.head.prototypes.shape == (bench.num_classes, 12) and plugin.head.seen.all()
    state = plugin.state_dict()
    fresh = CoPE(mem_size=30, num_classes=bench.num_classes, seed=1)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.head.prototypes, plugin.head.prototypes)


def test_a_model_without_head_needs_num_classes(blobs):
    bench = blobs.make_benchmark(num_exps=2)
    model = blobs.make_model(num_classes=8)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01), plugins=[CoPE(seed=0)], device="cpu")
    with pytest.raises(clkernel.PluginError, match="give num_classes"):
        strategy.train(bench.train_stream[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"mem_size": 0}, "cope: mem_size must be a positive integer"),
    ({"alpha": 1.5}, "cope: alpha must be"),
    ({"temperature": 0}, "cope: temperature must be a positive number"),
    ({"num_classes": 0}, "cope: num_classes must be a positive integer"),
    ({"batch_size_mem": 0}, "cope: batch_size_mem must be a positive integer"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CoPE(**kwargs)


def test_registered_name_builds_cope():
    plugin = clkernel.load("plugin", "cope", mem_size=100, alpha=0.9, num_classes=10)
    assert (type(plugin), plugin.mem_size, plugin.alpha, plugin.num_classes) == (CoPE, 100, 0.9, 10)


def _final_accuracy(method, seed):
    bench = clkernel.load("benchmark", "split-digits", seed=seed)
    torch.manual_seed(seed)
    outputs = 32 if method == "cope" else 10  # CoPE: 32-unit embeddings, classified by nearest prototype
    model = clkernel.load("model", "simple-mlp", num_classes=outputs, input_size=64, hidden_size=128, drop_rate=0.0)
    plugins = [CoPE(mem_size=200, num_classes=10, seed=seed)] if method == "cope" else []
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01),
                        plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=32, train_epochs=3,
                        device="cpu", generator=torch.Generator().manual_seed(seed))
    return clkernel.run(strategy, bench)["acc_stream/eval/test"]


def test_cope_beats_naive_on_split_digits():
    # measured (README): naive 0.20, CoPE (200 samples) 0.93 with seed 0
    naive = _final_accuracy("naive", 0)
    cope = _final_accuracy("cope", 0)
    assert naive < 0.3
    assert cope > naive + 0.4, (naive, cope)


def test_a_head_in_the_model_is_found_again_after_resuming_inside_an_experience(blobs):
    # a checkpoint taken inside an experience: before_training_exp does not fire again, the head is found lazily
    from clkernel.testing import check_training_plugin

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 16), PrototypeClassifier(16, 10, seed=0))

    results = check_training_plugin(lambda: CoPE(mem_size=50, seed=0), model=model, resume_inside=True)
    assert [r.status for r in results] == ["skipped", "passed", "passed", "passed"]


def test_refused_in_a_distributed_run():
    from clkernel.dispatch import CompositionError, compose

    with pytest.raises(CompositionError, match="plugin 'cope' cannot run on several processes"):
        compose([CoPE(mem_size=10, num_classes=4, seed=0)], distributed=True)
