"""EWC: importances, penalty, plugin behaviour, options."""

from __future__ import annotations

import pytest
import torch

from clkernel import Strategy
from clkernel_ewc import EWC, compute_importances, ewc_penalty, quadratic_penalty


def trained(blobs, plugins, num_exps=3, epochs=2, seed=0):
    bench = blobs.make_benchmark(num_exps=num_exps)
    model = blobs.make_model(num_classes=bench.num_classes, seed=seed)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=plugins, train_mb_size=16,
                        train_epochs=epochs, device="cpu", generator=torch.Generator().manual_seed(seed))
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy, bench


def test_importances_are_the_mean_of_squared_minibatch_gradients(blobs):
    data = blobs.make_blobs(num_classes=4, per_class=25)  # 100 samples: minibatches of 32, 32, 32, 4
    model = blobs.make_model()
    model.train()
    imp = compute_importances(model, data, batch_size=32)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for start in range(0, 100, 32):
        x, y, _ = data.get_batch(torch.arange(start, min(start + 32, 100)))
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad ** 2 / 4
    for n in expected:
        torch.testing.assert_close(imp[n], expected[n])


def test_penalty_is_zero_at_the_anchor_and_positive_after_a_step_away(blobs):
    data = blobs.make_blobs()
    model = blobs.make_model()
    ewc = EWC(ewc_lambda=2.0)
    assert ewc.penalty(model) is None  # nothing to protect yet
    imp = compute_importances(model, data, batch_size=16)
    ewc.consolidate(model, imp)
    at_anchor = ewc.penalty(model)
    assert abs(float(at_anchor.detach())) < 1e-8
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert float(ewc_penalty(model, imp, anchor).detach()) == 0.0
    x, y, _ = data.get_batch(torch.arange(32))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    moved = ewc.penalty(model)
    assert float(moved.detach()) > 1e-6
    moved.backward()  # and it has a gradient


def test_separate_mode_equals_the_direct_sum_over_experiences(blobs):
    ewc = EWC(ewc_lambda=0.7, keep_importance_data=True)
    strategy, _ = trained(blobs, [ewc])
    model = strategy.state.model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    exps = sorted(ewc.importances)
    assert exps == [0, 1, 2]
    direct = ewc_penalty(model, [ewc.importances[e] for e in exps], [ewc.saved_params[e] for e in exps],
                        ewc_lambda=0.7)
    torch.testing.assert_close(ewc.penalty(model), direct, rtol=1e-4, atol=1e-7)
    # and the same gradient, also scaled (a loss scale, an accumulation divisor) and beside the criterion's
    x, y, _ = blobs.make_blobs().get_batch(torch.arange(16))
    grads = []
    for penalty in (ewc.penalty, lambda: ewc_penalty(model, [ewc.importances[e] for e in exps],
                                                      [ewc.saved_params[e] for e in exps], ewc_lambda=0.7)):
        model.zero_grad(set_to_none=True)
        (torch.nn.functional.cross_entropy(model(x), y) + penalty() / 3).mul(8.0).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for folded, by_autograd in zip(*grads):
        torch.testing.assert_close(folded, by_autograd, rtol=1e-4, atol=1e-6)


def test_frozen_parameters_get_no_gradient_from_the_penalty():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    ewc = EWC()
    ewc.consolidate(model, {n: torch.ones_like(p) for n, p in model.named_parameters()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[0].requires_grad_(False)
    ewc.penalty(model).backward()
    assert model[0].weight.grad is None and model[0].bias.grad is None
    torch.testing.assert_close(model[1].weight.grad, torch.full((2, 2), 2.0))  # 2 * F * (theta - theta*)


def test_online_mode_decays_importances_and_anchors_at_the_last_parameters(blobs):
    ewc = EWC(ewc_lambda=1.0, mode="online", decay_factor=0.5, keep_importance_data=True)
    strategy, bench = trained(blobs, [ewc], num_exps=2)
    model = strategy.state.model
    f0, f1 = ewc.importances[0], ewc.importances[1]
    online = {n: 0.5 * f0[n] + f1[n] for n in f1}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.testing.assert_close(ewc.penalty(model), ewc_penalty(model, online, ewc.saved_params[1]), rtol=1e-4,
                               atol=1e-7)


def test_plugin_adds_the_penalty_from_the_second_experience(blobs):
    probe = blobs.Probe()
    trained(blobs, [EWC(ewc_lambda=1.0), probe], num_exps=2)
    first = probe.loss_terms[:len(probe.loss_terms) // 2]
    second = probe.loss_terms[len(probe.loss_terms) // 2:]
    assert all("ewc" not in terms for terms in first)
    assert all("ewc" in terms for terms in second)
    assert second[0]["ewc"] == pytest.approx(0.0, abs=1e-6) and max(t["ewc"] for t in second) > 0


def test_a_strong_penalty_reduces_forgetting(blobs):
    naive, bench = trained(blobs, [], num_exps=2, epochs=4)
    ewc, _ = trained(blobs, [EWC(ewc_lambda=1000.0)], num_exps=2, epochs=4)
    naive_acc = blobs.accuracy(naive.state.model, bench.test_stream)
    ewc_acc = blobs.accuracy(ewc.state.model, bench.test_stream)
    assert ewc_acc[1] >= 0.9  # still learns the new classes
    assert ewc_acc[0] >= naive_acc[0] + 0.25  # and forgets less of the old ones


def test_only_the_last_experience_data_is_kept_by_default(blobs):
    ewc = EWC()
    trained(blobs, [ewc], num_exps=3)
    assert list(ewc.importances) == [2] and list(ewc.saved_params) == [2]
    assert ewc.experiences == 3


def test_checkpoint_round_trip(blobs):
    ewc = EWC(ewc_lambda=0.3)
    strategy, _ = trained(blobs, [ewc], num_exps=2)
    model = strategy.state.model
    again = EWC(ewc_lambda=0.3)
    again.load_state_dict(ewc.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    torch.testing.assert_close(again.penalty(model), ewc.penalty(model))


def test_grown_parameters_keep_their_old_penalty_and_new_units_are_free():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ewc = EWC()
    ewc.consolidate(model, {"weight": torch.ones(2, 3), "bias": torch.ones(2)})
    old_w, old_b = model.weight.detach().clone(), model.bias.detach().clone()
    grown = torch.nn.Linear(3, 4)
    with torch.no_grad():
        grown.weight[:2] = old_w + 1.0
        grown.bias[:2] = old_b
    assert float(ewc.penalty(grown).detach()) == pytest.approx(6.0)  # 6 old weights moved by 1; the 2 new rows are free
    with pytest.raises(ValueError, match="changed shape from"):
        ewc.penalty(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kwargs, match", [
    ({"ewc_lambda": -1}, "ewc_lambda must be a non-negative number"),
    ({"mode": "offline"}, "mode must be one of"),
    ({"mode": "online"}, "mode=.online. needs decay_factor, a number in \\[0, 1\\]"),
    ({"mode": "online", "decay_factor": 2.0}, "decay_factor"),
    ({"decay_factor": 0.5}, "decay_factor applies to mode='online' only"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EWC(**kwargs)


def test_registration(blobs):
    from clkernel.discovery import Registry
    from clkernel_ewc import registration

    reg = Registry()
    reg.add_module(registration, "ewc")
    assert reg.available("plugin") == ["ewc"]
    ewc = reg.load("plugin", "ewc", ewc_lambda=0.4, mode="online", decay_factor=0.9)
    assert isinstance(ewc, EWC) and ewc.ewc_lambda == 0.4 and ewc.mode == "online"
    assert set(reg.get("plugin", "ewc").options()) == {"ewc_lambda", "mode", "decay_factor", "keep_importance_data"}


def test_quadratic_penalty_by_hand():
    theta = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    weights, anchors = [torch.tensor([3.0, 4.0]), torch.tensor([[0.5]])], [torch.zeros(2), torch.tensor([[1.0]])]
    value = quadratic_penalty(theta, weights, anchors)
    assert float(value.detach()) == pytest.approx(3 * 1 + 4 * 4 + 0.5 * 4)
    (10 * value).backward()
    assert theta[0].grad.tolist() == pytest.approx([60.0, 160.0]) and theta[1].grad.tolist() == [[20.0]]
    assert float(quadratic_penalty([], [], [])) == 0.0
    conv = torch.nn.Conv2d(2, 3, 2).to(memory_format=torch.channels_last)  # parameters not laid out in order
    weight = torch.rand(3, 2, 2, 2)
    value = quadratic_penalty([conv.weight], [weight], [torch.zeros(3, 2, 2, 2)])
    value.backward()
    torch.testing.assert_close(value.detach(), (weight * conv.weight.detach() ** 2).sum())
    torch.testing.assert_close(conv.weight.grad, 2 * weight * conv.weight.detach())
    with pytest.raises(ValueError, match="2 parameters, 1 weights and 2 anchors"):
        quadratic_penalty(theta, weights[:1], anchors)
