"""All six plugins together with replay, EWC and the default metrics on split-digits' train / valid / test
streams, and their state through a checkpoint: a run resumed from it ends bit for bit where the uninterrupted
run ends."""

from __future__ import annotations

import io
from typing import Any

import torch

import clkernel
from clkernel import Strategy
from clkernel_training import AMP, EMA, EarlyStopping, GradAccumulation, GradClip, LRScheduler


def build(make_mlp: Any, seed: int = 0) -> tuple[Strategy, list[Any]]:
    torch.manual_seed(seed)
    model = make_mlp(seed)
    plugins = [
        LRScheduler("ReduceLROnPlateau", monitor="loss_exp/eval/valid", patience=0, factor=0.5),
        EarlyStopping(monitor="acc_exp/eval/valid", patience=1),
        GradClip(max_norm=2.0),
        AMP(dtype="float16", init_scale=1024.0, growth_interval=4),
        GradAccumulation(steps=2),
        EMA(decay=0.9),
        clkernel.load("plugin", "replay", mem_size=60, seed=seed),
        clkernel.load("plugin", "ewc", ewc_lambda=1.0),
        clkernel.load("metric", "default"),
    ]
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), plugins=plugins,
                        train_mb_size=32, eval_mb_size=512, train_epochs=3, eval_every=1, device="cpu",
                        generator=torch.Generator().manual_seed(seed))
    return strategy, plugins


def checkpoint(strategy: Strategy, plugins: list[Any]) -> dict[str, Any]:
    s = strategy.state
    state = {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
             "plugins": [p.state_dict() if hasattr(p, "state_dict") else None for p in plugins],
             "generator": strategy.generator.get_state(), "rng": torch.get_rng_state(),
             "loop": {"iteration": s.iteration, "experiences_trained": s.experiences_trained}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # tensors and plain containers only


def test_everything_composes_and_resumes_bit_for_bit_from_a_checkpoint(digits, make_mlp):
    streams = [digits.streams["valid"], digits.test_stream]
    with torch.random.fork_rng(devices=[]):
        strategy, plugins = build(make_mlp)
        first = strategy.train(digits.train_stream[0], eval_streams=streams)
        saved = checkpoint(strategy, plugins)
        results = strategy.train(digits.train_stream[1], eval_streams=streams)
        strategy.close()
        expected_model, expected_plugins = strategy.state.model.state_dict(), [
            p.state_dict() if hasattr(p, "state_dict") else None for p in plugins]
    assert float(first["acc_exp/eval/test/exp000"]) > 0.85 and float(results["acc_stream/eval/test"]) > 0.5
    assert "lr_epoch/train/train" in results and plugins[3].scaler.get_scale() != 1024.0
    assert set(plugins[1].best_epochs) == {0, 1} and plugins[5].updates > 0  # early stopping measured, EMA ran

    with torch.random.fork_rng(devices=[]):
        resumed, fresh = build(make_mlp, seed=0)
        resumed.state.model.load_state_dict(saved["model"])
        resumed.state.optimizer.load_state_dict(saved["optimizer"])
        for plugin, state in zip(fresh, saved["plugins"]):
            if state is not None:
                plugin.load_state_dict(state)
        resumed.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        resumed.state.iteration = saved["loop"]["iteration"]
        resumed.state.experiences_trained = saved["loop"]["experiences_trained"]
        again = resumed.train(digits.train_stream[1], eval_streams=streams)
        resumed.close()
    for key, value in expected_model.items():
        assert torch.equal(resumed.state.model.state_dict()[key], value), key
    for plugin, expected in zip(fresh, expected_plugins):
        if expected is not None:
            assert repr(plugin.state_dict()) == repr(expected), plugin.name
    accuracies = [k for k in results if k.startswith(("acc_exp/eval/test", "acc_stream/eval/test"))]
    assert accuracies and all(float(again[k]) == float(results[k]) for k in accuracies)
