"""SI composed with replay and the default metrics, in Python and in-process through clkernel's own ``main``."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clkernel
from clkernel import Strategy
from clkernel.testing import cli_in_process
from clkernel_si import SynapticIntelligence

pytest.importorskip("clkernel_replay", reason="clkernel-replay is not installed")
pytest.importorskip("clkernel_metrics", reason="clkernel-metrics is not installed")
pytest.importorskip("clkernel_benchmarks", reason="clkernel-benchmarks is not installed")


class Terms:
    name = "terms"

    def __init__(self) -> None:
        self.seen: list[tuple[int, set[str], int]] = []

    @clkernel.hookimpl
    def before_backward(self, state):
        self.seen.append((state.experience.index, set(state.loss_terms), len(state.mb_y)))


def test_si_with_replay_and_default_metrics():
    benchmark = clkernel.load("benchmark", "split-digits", n_experiences=3, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    si, terms = SynapticIntelligence(si_lambda=1.0), Terms()
    replay = clkernel.load("plugin", "replay", mem_size=60, batch_size_mem=16, seed=0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[replay, si, terms,
                        clkernel.load("metric", "default")], train_mb_size=32, device="cpu",
                        generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, benchmark, eval_streams=("test",))
    assert all(names == set() for e, names, _ in terms.seen if e == 0)
    assert all(names == {"si"} for e, names, _ in terms.seen if e > 0)
    assert any(n == 32 + 16 for e, _, n in terms.seen if e > 0)  # replay's samples joined the minibatches
    assert si.experiences == 3 and set(si.importances) == {n for n, _ in model.named_parameters()}
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0
    assert all(math.isfinite(v) for v in results.values() if isinstance(v, float))


def test_cli_run_with_replay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with cli_in_process() as main:
        code = main("--log-format", "json", "run",
                    "--benchmark", "split-digits", "--model", "simple-mlp:hidden_size=32",
                    "--plugin", "replay:mem_size=100", "--plugin", "si:si_lambda=0.5,eps=0.01",
                    "--epochs", "1", "--logger", "jsonl", "--device", "cpu", "--output", str(out))
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["value"] for r in records if r["name"] == "acc_stream/eval/test"]
    assert len(accuracy) == 5 and 0.0 < accuracy[-1] <= 1.0  # evaluated after each of the 5 experiences
