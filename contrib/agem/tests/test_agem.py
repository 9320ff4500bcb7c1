"""The A-GEM plugin in the loop: memories, the reference sample, the projected update, composition, the command."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream, Strategy
from clkernel.testing import cli_in_process
from clkernel_agem import AGEM

MB = 16


def make_benchmark(num_exps: int = 3, per_class: int = 40, dim: int = 6, seed: int = 0) -> Benchmark:
    """Class-incremental Gaussian blobs: experience e holds classes 2e and 2e+1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(2 * num_exps, dim, generator=g) * 2

    def data(n: int) -> CLDataset:
        y = torch.arange(2 * num_exps).repeat_interleave(n)
        return CLDataset.from_tensors(centres[y] + torch.randn(len(y), dim, generator=g), y)

    train, test = data(per_class), data(per_class // 2)
    streams = {name: Stream(name, [Experience(e, ds.class_subset([2 * e, 2 * e + 1])) for e in range(num_exps)])
               for name, ds in (("train", train), ("test", test))}
    return Benchmark(streams, name="blobs")


class RecordingMLP(torch.nn.Module):
    """A small MLP that records every input batch that is not a training minibatch (A-GEM's memory samples)."""

    def __init__(self, dim: int = 6, classes: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, classes))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and len(x) != MB:
            self.seen.append(x.detach().clone())
        return self.net(x)


class GradientProbe:
    """Records, each iteration, the raw gradient (after_backward), the gradient of the loss on the whole memory
    computed here with a plain backward pass, and the gradient the optimizer gets (before_update, after A-GEM's)."""

    name = "gradient-probe"

    def __init__(self, agem: AGEM) -> None:
        self.agem = agem
        self.records: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        self._raw: torch.Tensor | None = None
        self._ref: torch.Tensor | None = None

    @staticmethod
    def _flat(model: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().clone()

    @clkernel.hookimpl
    def after_backward(self, state):
        self._raw, self._ref = self._flat(state.model), None
        if self.agem.memory:
            saved = [p.grad.clone() for p in state.model.parameters()]
            parts = list(self.agem.memory.values())
            data = parts[0].concat(*parts[1:]).eval()
            x, y, _ = data.get_batch(torch.arange(len(data)))
            state.model.zero_grad()
            torch.nn.functional.cross_entropy(state.model.net(x), y).backward()
            self._ref = self._flat(state.model)
            for p, s in zip(state.model.parameters(), saved):
                p.grad = s

    @clkernel.hookimpl
    def before_update(self, state):
        self.records.append((self._raw, self._ref, self._flat(state.model)))


def train(plugins, model=None, bench=None):
    bench = bench or make_benchmark()
    model = model or RecordingMLP()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins, train_mb_size=MB,
                        device="cpu", generator=torch.Generator().manual_seed(0))
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy, bench, model


def test_update_follows_the_single_constraint_formula():
    # sample_size above the memory size: the reference gradient is the whole memory's, recomputed by the probe
    agem = AGEM(patterns_per_experience=20, sample_size=1000, seed=0)
    probe = GradientProbe(agem)
    train([agem, probe])
    constrained = [r for r in probe.records if r[1] is not None]
    assert len(constrained) == 2 * 5  # experiences 1 and 2, 80 samples in minibatches of 16
    projected = 0
    for raw, ref, used in constrained:
        dot = float(raw @ ref)
        if dot < 0:
            projected += 1
            expected = raw - dot / float(ref @ ref) * ref  # the paper's update rule, written out
            torch.testing.assert_close(used, expected, atol=1e-6, rtol=1e-5)
            assert float(used @ ref) > -1e-6
        else:
            assert torch.equal(used, raw)  # untouched when nothing is violated
    assert projected > 0
    assert all(torch.equal(used, raw) for raw, ref, used in probe.records if ref is None)  # first experience


def test_reference_gradient_uses_sample_size_distinct_memory_samples():
    agem = AGEM(patterns_per_experience=30, sample_size=12, seed=0)
    _, _, model = train([agem])
    assert len(model.seen) == 2 * 5  # one reference batch per iteration from the second experience on
    assert {len(x) for x in model.seen} == {12}
    memory_rows = {tuple(r.tolist()) for d in agem.memory.values() for r in d.get_batch(torch.arange(len(d)))[0]}
    first_exp = {tuple(r.tolist()) for d in list(agem.memory.values())[:1]
                 for r in d.get_batch(torch.arange(len(d)))[0]}
    for i, x in enumerate(model.seen):
        rows = [tuple(r.tolist()) for r in x]
        assert len(set(rows)) == 12  # without replacement
        assert set(rows) <= memory_rows
        if i < 5:  # during experience 1 only experience 0's memory exists
            assert set(rows) <= first_exp
    assert len({tuple(x[0].tolist()) for x in model.seen}) > 1  # a new random sample each iteration


def test_memories_are_class_balanced_samples_of_their_experience():
    agem = AGEM(patterns_per_experience=20, seed=0)
    train([agem])
    assert list(agem.memory) == [0, 1, 2]
    for index, dataset in agem.memory.items():
        assert sorted(dataset.targets.tolist()) == [2 * index] * 10 + [2 * index + 1] * 10


def test_state_dict_round_trip_and_same_seed_same_run():
    a, b = AGEM(patterns_per_experience=10, sample_size=8, seed=3), AGEM(patterns_per_experience=10, sample_size=8,
                                                                         seed=3)
    _, _, ma = train([a])
    _, _, mb = train([b])
    assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))
    fresh = AGEM(patterns_per_experience=10)
    fresh.load_state_dict(a.state_dict())
    with pytest.raises(RuntimeError, match="restore"):
        fresh.memory
    assert str(fresh.state_dict()) == str(a.state_dict())


def test_composes_with_replay_and_default_metrics():
    replay = pytest.importorskip("clkernel_replay").Replay(mem_size=30, seed=0)
    agem = AGEM(patterns_per_experience=20, sample_size=16, seed=0)
    bench, model = make_benchmark(), RecordingMLP()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1),
                        plugins=[replay, agem, clkernel.load("metric", "default")], train_mb_size=MB, device="cpu",
                        generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench, eval_streams=("test",))
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0
    assert all(math.isfinite(v) for v in results.values() if isinstance(v, float))
    assert len(replay.buffer) == 30 and list(agem.memory) == [0, 1, 2]


def test_bad_options_are_refused_naming_them():
    with pytest.raises(ValueError, match="patterns_per_experience"):
        AGEM(patterns_per_experience=0)
    with pytest.raises(ValueError, match="sample_size"):
        AGEM(sample_size=-3)


def test_command_line_run_with_replay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with cli_in_process() as main:
        code = main("--log-format", "json", "run", "--benchmark", "split-digits", "--plugin", "replay:mem_size=100",
                    "--plugin", "agem:patterns_per_experience=40,sample_size=32", "--epochs", "1",
                    "--logger", "report:plots=false", "--device", "cpu", "--output", str(out))
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert json.loads((out / "results.json").read_text())["status"] == "completed"
    with cli_in_process() as main:
        code = main("--log-format", "json", "run", "--benchmark", "split-digits", "--plugin", "agem:sample_size=0",
                    "--device", "cpu", "--output", str(tmp_path / "bad"))
    err = capsys.readouterr().err
    assert code == 2 and "sample_size" in err
    assert not (tmp_path / "bad").exists()
