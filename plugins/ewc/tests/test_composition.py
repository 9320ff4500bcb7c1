"""Replay, EWC and LwF composed in one run: it trains, and each plugin contributes."""

from __future__ import annotations

import pytest
import torch

from clkernel import Strategy
from clkernel_ewc import EWC

replay_pkg = pytest.importorskip("clkernel_replay", reason="clkernel-replay (plugins/replay) is not installed")
lwf_pkg = pytest.importorskip("clkernel_lwf", reason="clkernel-lwf (plugins/lwf) is not installed")


def test_replay_ewc_and_lwf_compose_and_each_contributes(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    model = blobs.make_model(num_classes=bench.num_classes)
    probe = blobs.Probe()
    replay = replay_pkg.Replay(mem_size=30, batch_size_mem=8, seed=0)
    ewc, lwf = EWC(ewc_lambda=0.5), lwf_pkg.LwF(alpha=1.0)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[replay, ewc, lwf, probe],
                        train_mb_size=16, train_epochs=2, device="cpu", generator=torch.Generator().manual_seed(0))
    for exp in bench.train_stream:
        strategy.train(exp)
    per_exp = [[t for (e, _), t in zip(probe.mb_sizes, probe.loss_terms) if e == k] for k in range(3)]
    assert all(t == {} for t in per_exp[0])  # nothing to protect during the first experience
    for terms in per_exp[1:]:
        assert all(set(t) == {"ewc", "lwf"} for t in terms)  # state.loss_terms: one entry per plugin name
        assert max(t["ewc"] for t in terms) > 0 and max(t["lwf"] for t in terms) > 0
    # replay's contribution is in the minibatch: 8 buffer samples of old classes in every later minibatch
    for e, y in probe.mbs:
        if e > 0:
            assert set(y[-8:].tolist()) <= set(range(2 * e))
    assert {n for e, n in probe.mb_sizes if e > 0} == {24, 120 % 16 + 8}
    assert len(replay.buffer) == 30 and ewc.experiences == 3 and lwf.lwf.experiences == 3
    assert min(blobs.accuracy(model, bench.test_stream)) > 0.5  # replay keeps every experience alive
