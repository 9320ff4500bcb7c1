"""The GEM plugin in the loop: memories, the projected update, composition with replay and metrics, the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream, Strategy
from clkernel.testing import cli_in_process
from clkernel_gem import GEM


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


def make_model(dim: int = 6, classes: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, classes))


def brute_force_projection(g: np.ndarray, G: np.ndarray) -> np.ndarray:
    """argmin ||z - g|| s.t. G z >= 0 by enumerating the tight constraints (see test_projection.py)."""
    import itertools

    best, best_dist = g, np.inf
    for k in range(len(G) + 1):
        for subset in itertools.combinations(range(len(G)), k):
            z = g.copy()
            if subset:
                A = G[list(subset)]
                z = g - A.T @ np.linalg.lstsq(A @ A.T, A @ g, rcond=None)[0]
            feasible = (G @ z >= -1e-7 * max(1.0, np.abs(G).max() * np.abs(z).max())).all()
            if feasible and np.linalg.norm(z - g) < best_dist:
                best, best_dist = z, np.linalg.norm(z - g)
    return best


class GradientProbe:
    """Records, each iteration, the raw gradient (after_backward), the memories' gradients computed here with
    plain backward passes, and the gradient the optimizer gets (before_update, after GEM's)."""

    name = "gradient-probe"

    def __init__(self, gem: GEM) -> None:
        self.gem = gem
        self.records: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._raw: np.ndarray | None = None
        self._mem: np.ndarray | None = None

    @staticmethod
    def _flat(model: torch.nn.Module) -> np.ndarray:
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy().copy()

    @clkernel.hookimpl
    def after_backward(self, state):
        self._raw = self._flat(state.model)
        if not self.gem.memory:
            self._mem = None
            return
        saved = [p.grad.clone() for p in state.model.parameters()]
        rows = []
        for dataset in self.gem.memory.values():
            x, y, _ = dataset.eval().get_batch(torch.arange(len(dataset)))
            state.model.zero_grad()
            torch.nn.functional.cross_entropy(state.model(x), y).backward()
            rows.append(self._flat(state.model))
        for p, s in zip(state.model.parameters(), saved):
            p.grad = s
        self._mem = np.stack(rows)

    @clkernel.hookimpl
    def before_update(self, state):
        if self._mem is not None:
            self.records.append((state.experience.index, self._raw, self._mem, self._flat(state.model)))


def train(plugins, bench=None, epochs=1, mb=16):
    bench = bench or make_benchmark()
    model = make_model()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins, train_mb_size=mb,
                        train_epochs=epochs, device="cpu", generator=torch.Generator().manual_seed(0))
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy, bench


def test_update_is_the_exact_projection_onto_every_memory_constraint():
    gem = GEM(patterns_per_experience=20, memory_strength=0.0, eps=0.0, seed=0)
    probe = GradientProbe(gem)
    train([gem, probe])
    assert {r[0] for r in probe.records} == {1, 2}  # constrained from the second experience on
    projected = 0
    for _, raw, G, used in probe.records:
        assert (G @ used >= -1e-5).all()  # no memory's loss increases to first order
        if (G @ raw < 0).any():
            projected += 1
            np.testing.assert_allclose(used, brute_force_projection(raw, G), atol=1e-5)
        else:
            np.testing.assert_array_equal(used, raw)  # untouched when nothing is violated
    assert projected >= 5 and projected == sum(1 for _, raw, G, _ in probe.records if (G @ raw < 0).any())


def test_margin_keeps_every_constraint_and_counts_projections():
    gem = GEM(patterns_per_experience=20, memory_strength=0.5, seed=0)
    probe = GradientProbe(gem)
    train([gem, probe])
    for _, raw, G, used in probe.records:
        assert (G @ used >= -1e-3).all()
    last = [r for r in probe.records if r[0] == 2]
    assert gem.projections == sum(1 for _, raw, G, _ in last if (G @ raw < 0).any()) > 0


def test_memories_hold_samples_of_their_own_experience():
    gem = GEM(patterns_per_experience=25, seed=0)
    _, bench = train([gem])
    assert list(gem.memory) == [0, 1, 2]
    for index, dataset in gem.memory.items():
        assert len(dataset) == 25
        assert set(dataset.targets.tolist()) <= {2 * index, 2 * index + 1}
        x, _, _ = dataset.get_batch(torch.arange(25))
        source, _, _ = bench.train_stream[index].dataset.get_batch(torch.arange(80))
        assert all((row == source).all(1).any() for row in x)  # every memory sample is one of the experience's
        assert len({tuple(r.tolist()) for r in x}) == 25  # drawn without replacement
    small = GEM(patterns_per_experience=500, seed=0)
    train([small])
    assert [len(d) for d in small.memory.values()] == [80, 80, 80]  # an experience smaller than the memory


def test_same_seed_same_memory_and_state_dict_round_trip():
    a, b = GEM(patterns_per_experience=10, seed=3), GEM(patterns_per_experience=10, seed=3)
    train([a])
    train([b])
    for (ka, da), (kb, db) in zip(a.memory.items(), b.memory.items()):
        assert ka == kb and torch.equal(da.targets, db.targets)
    fresh = GEM(patterns_per_experience=10)
    fresh.load_state_dict(a.state_dict())
    with pytest.raises(RuntimeError, match="restore"):
        fresh.memory
    assert str(fresh.state_dict()) == str(a.state_dict())


def test_composes_with_replay_and_default_metrics():
    replay = pytest.importorskip("clkernel_replay").Replay(mem_size=30, seed=0)
    metrics = clkernel.load("metric", "default")
    gem = GEM(patterns_per_experience=20, seed=0)
    bench = make_benchmark()
    model = make_model()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[replay, gem, metrics],
                        train_mb_size=16, device="cpu", generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, bench, eval_streams=("test",))
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0
    assert all(math.isfinite(v) for v in results.values() if isinstance(v, float))
    assert len(replay.buffer) == 30 and list(gem.memory) == [0, 1, 2] and gem.projections > 0


def test_bad_options_are_refused_naming_them():
    with pytest.raises(ValueError, match="patterns_per_experience"):
        GEM(patterns_per_experience=0)
    with pytest.raises(ValueError, match="memory_strength"):
        GEM(memory_strength=-0.5)
    with pytest.raises(ValueError, match="eps"):
        GEM(eps=-1.0)


def test_command_line_run_with_replay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with cli_in_process() as main:
        code = main("--log-format", "json", "run", "--benchmark", "split-digits", "--plugin", "replay:mem_size=100",
                    "--plugin", "gem:patterns_per_experience=32,memory_strength=0.5", "--epochs", "1",
                    "--logger", "report:plots=false", "--device", "cpu", "--output", str(out))
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    with cli_in_process() as main:
        code = main("--log-format", "json", "run", "--benchmark", "split-digits",
                    "--plugin", "gem:patterns_per_experience=0", "--device", "cpu", "--output", str(tmp_path / "bad"))
    err = capsys.readouterr().err
    assert code == 2 and "patterns_per_experience" in err
    assert not (tmp_path / "bad").exists()
