"""DER / DER++: the loss against hand-worked values, growing heads, composition, options, and the gain on split-digits."""

from __future__ import annotations

import math
import types

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, Strategy
from clkernel_der import DER, DERpp, LogitBuffer, logit_matching_loss
from clkernel_replay import ReservoirSamplingBuffer


def test_logit_matching_loss_by_hand():
    out = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    stored = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # squared differences [[1, 0], [1, 4]]: mean 6 / 4
    assert float(logit_matching_loss(out, stored)) == pytest.approx(1.5)
    # the first row was stored with one unit (the head grew since): 1 + 1 + 4 over 3 stored units
    padded = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert float(logit_matching_loss(out, padded, torch.tensor([1, 2]))) == pytest.approx(2.0)
    # outputs wider than the stored logits: the new units are not compared
    wide = torch.cat([out, torch.full((2, 3), 50.0)], 1)
    assert float(logit_matching_loss(wide, stored)) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="fewer output units"):
        logit_matching_loss(out[:, :1], stored)


def _identity_model() -> torch.nn.Linear:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    return model


def _state(model, exp):
    return types.SimpleNamespace(model=model, device=torch.device("cpu"), experience=exp, train_mb_size=2,
                                 eval_mb_size=8)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_der_term_on_a_two_sample_buffer_by_hand(beta):
    # the buffer holds x1 = (1, 0) with label 0 and x2 = (0, 1) with label 1; the identity model stored logits
    # z = x. The model then doubles its weights: outputs 2x.
    #   MSE term: mean over 2 samples x 2 units of (2x - x)^2 = (1 + 0 + 0 + 1) / 4 = 0.5, times alpha = 0.5
    #   CE term (DER++): each sample's outputs are (2, 0) for its own class first: log(1 + e^-2), times beta
    model = _identity_model()
    exp0 = Experience(0, CLDataset.from_tensors(torch.eye(2), torch.tensor([0, 1])))
    plugin = DER(mem_size=2, alpha=0.5, beta=beta, batch_size_mem=2, seed=0)
    plugin.after_training_exp(_state(model, exp0))
    torch.testing.assert_close(plugin.memory.logits, torch.eye(2))
    with torch.no_grad():
        model.weight.mul_(2)
    exp1 = Experience(1, CLDataset.from_tensors(torch.ones(3, 2), torch.tensor([0, 0, 1])))
    state = _state(model, exp1)
    plugin.before_training_exp(state)
    expected = 0.5 * 0.5 + beta * math.log(1 + math.exp(-2))
    assert float(plugin.loss_terms(state).detach()) == pytest.approx(expected, rel=1e-6)


def test_no_term_before_the_buffer_holds_samples():
    plugin = DERpp(mem_size=4, seed=0)
    exp0 = Experience(0, CLDataset.from_tensors(torch.eye(2), torch.tensor([0, 1])))
    state = _state(_identity_model(), exp0)
    plugin.before_training_exp(state)
    assert plugin.loss_terms(state) is None


def test_logits_follow_their_samples_and_keep_their_width_when_the_head_grows():
    # experience 0 is stored with a 2-unit head, experience 1 with a 4-unit head; old samples keep the logits
    # (and width) they were stored with, even though the model changed
    torch.manual_seed(0)
    buf = LogitBuffer(ReservoirSamplingBuffer(6, seed=0))
    x0, x1 = torch.randn(5, 3), torch.randn(5, 3)
    small, big = torch.nn.Linear(3, 2), torch.nn.Linear(3, 4)
    buf.update(Experience(0, CLDataset.from_tensors(x0, torch.tensor([0, 1, 0, 1, 0]), sample_id=torch.arange(5))),
               small)
    assert len(buf) == 5 and buf.logits.shape == (5, 2)
    before = {int(i): row.clone() for i, row in zip(buf.buffer.sample_id, buf.logits)}
    buf.update(Experience(1, CLDataset.from_tensors(x1, torch.tensor([2, 3, 2, 3, 2]),
                                                    sample_id=torch.arange(5, 10))), big)
    assert len(buf) == 6 and buf.logits.shape == (6, 4)
    with torch.no_grad():
        for sid, row, width in zip(buf.buffer.sample_id.tolist(), buf.logits, buf.width.tolist()):
            if sid < 5:  # stored at experience 0 with the small head
                assert width == 2
                torch.testing.assert_close(row[:2], before[sid])
                assert row[2:].abs().sum() == 0
            else:
                assert width == 4
                torch.testing.assert_close(row, big(x1[sid - 5]))


def test_der_trains_with_a_growing_head(blobs):
    # an incremental classifier grows from 2 to 4 units: rows stored after experience 0 hold 2 units, and the
    # term compares only those on the 4-unit outputs of experience 1
    from clkernel_models import IncrementalClassifier

    bench = blobs.make_benchmark(num_exps=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), IncrementalClassifier(16, 0, masking=False))
    plugin, probe = DER(mem_size=40, alpha=1.0, seed=0), blobs.Probe()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[plugin, probe],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    strategy.train(bench.train_stream[0])
    assert plugin.memory.logits.shape == (40, 2)
    strategy.train(bench.train_stream[1])
    assert plugin.memory.logits.shape == (40, 4)
    assert set(plugin.memory.width.tolist()) == {2, 4}
    strategy.train(bench.train_stream[2])
    terms = [t["der"] for t in probe.loss_terms if "der" in t]
    assert terms and all(math.isfinite(v) for v in terms)


def test_composes_with_replay_and_the_default_metrics(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    model = blobs.make_model(num_classes=bench.num_classes)
    probe = blobs.Probe()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[clkernel.load("plugin", "replay", mem_size=30, seed=0), DERpp(mem_size=30, seed=0),
                                 probe, clkernel.load("metric", "default")],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench)
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0
    per_exp = len(probe.loss_terms) // 3
    assert all("derpp" not in t for t in probe.loss_terms[:per_exp])
    assert all(t["derpp"] > 0 and math.isfinite(t["derpp"]) for t in probe.loss_terms[per_exp:])


@pytest.mark.parametrize("kwargs, match", [
    ({"mem_size": 0}, "der: mem_size must be a positive integer"),
    ({"alpha": -1}, "der: alpha must be a non-negative number"),
    ({"beta": -0.5}, "der: beta must be a non-negative number"),
    ({"batch_size_mem": 0}, "der: batch_size_mem must be a positive integer"),
    ({"storage_policy": "fifo"}, "der: storage_policy 'fifo' is unknown"),
    ({"mem_size": 10, "storage_policy": ReservoirSamplingBuffer(20)}, "mem_size=10 but storage_policy.max_size=20"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DER(**kwargs)


def test_registered_names_build_der_and_derpp():
    der, derpp = clkernel.load("plugin", "der", alpha=0.3), clkernel.load("plugin", "derpp")
    assert (type(der), der.alpha, der.beta) == (DER, 0.3, 0.0)
    assert (type(derpp), derpp.alpha, derpp.beta, derpp.name) == (DERpp, 0.1, 0.5, "derpp")


def _final_accuracy(plugins, seed):
    bench = clkernel.load("benchmark", "split-digits", seed=seed)
    torch.manual_seed(seed)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        plugins=[*plugins, clkernel.load("metric", "accuracy")], train_mb_size=32, train_epochs=3,
                        device="cpu", generator=torch.Generator().manual_seed(seed))
    return clkernel.run(strategy, bench)["acc_stream/eval/test"]


def test_derpp_beats_naive_on_split_digits():
    # measured (README): naive 0.20, DER++ (200 samples, alpha 0.5) 0.89 with seed 0
    naive = _final_accuracy([], 0)
    derpp = _final_accuracy([DERpp(mem_size=200, alpha=0.5, seed=0)], 0)
    assert naive < 0.3
    assert derpp > naive + 0.4, (naive, derpp)


@pytest.mark.parametrize("cls", [DER, DERpp])
def test_a_model_taking_task_labels_is_refused_in_a_distributed_run(monkeypatch, cls):
    # The replayed samples of old tasks would run through old heads outside the loop's DDP forward pass.
    import clkernel.distributed as dist

    class TwoHeads(torch.nn.Module):
        takes_task_labels = True

    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match=r"der(pp)?: with a model that takes task labels .* run it in one process"):
        cls(mem_size=4, seed=0).before_training_exp(types.SimpleNamespace(model=TwoHeads()))
