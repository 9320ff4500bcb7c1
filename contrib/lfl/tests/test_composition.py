"""LFL composed with replay and the default metrics, in Python and in-process through clkernel's own ``main``."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clkernel
from clkernel import Strategy
from clkernel.testing import cli_in_process
from clkernel_lfl import LFL

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


def test_lfl_with_replay_and_default_metrics():
    benchmark = clkernel.load("benchmark", "split-digits", n_experiences=3, seed=0)
    torch.manual_seed(0)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0)
    lfl, terms = LFL(lambda_e=1.0), Terms()
    replay = clkernel.load("plugin", "replay", mem_size=60, batch_size_mem=16, seed=0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[replay, lfl, terms,
                        clkernel.load("metric", "default")], train_mb_size=32, device="cpu",
                        generator=torch.Generator().manual_seed(0))
    results = clkernel.run(strategy, benchmark, eval_streams=("test",))
    assert all(names == set() for e, names, _ in terms.seen if e == 0)
    assert all(names == {"lfl"} for e, names, _ in terms.seen if e > 0)
    assert any(n == 32 + 16 for e, _, n in terms.seen if e > 0)  # replay's samples joined the minibatches
    assert lfl.experiences == 3 and lfl.prev_model is not None
    assert all(not p.requires_grad for p in model.classifier.parameters())  # frozen since the second experience
    assert 0.0 <= results["acc_stream/eval/test"] <= 1.0
    assert all(math.isfinite(v) for v in results.values() if isinstance(v, float))


def test_cli_run_with_replay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with cli_in_process() as main:
        code = main("--log-format", "json", "run",
                    "--benchmark", "split-digits", "--model", "simple-mlp:hidden_size=32",
                    "--plugin", "replay:mem_size=100", "--plugin", "lfl:lambda_e=0.01",
                    "--epochs", "1", "--logger", "jsonl", "--device", "cpu", "--output", str(out))
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["value"] for r in records if r["name"] == "acc_stream/eval/test"]
    assert len(accuracy) == 5 and 0.0 < accuracy[-1] <= 1.0  # evaluated after each of the 5 experiences
