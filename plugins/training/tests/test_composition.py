"""All six plugins together with replay, EWC and the default metrics on split-digits' train / valid / test
streams, checkpointed by the kernel (``clkernel.Checkpointer``): a run resumed from a checkpoint taken in the
middle of an epoch (inside an accumulation group, with the scheduler, early stopping, the scaler and the average
half-way) ends bit for bit where the uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import clkernel
from clkernel import Checkpointer, Strategy, read_checkpoint
from clkernel_training import AMP, EMA, EarlyStopping, GradAccumulation, GradClip, LRScheduler

STREAMS = ("valid", "test")


def build(checkpoint: Checkpointer | None = None) -> tuple[Strategy, list[Any]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    plugins = [
        LRScheduler("ReduceLROnPlateau", monitor="loss_exp/eval/valid", patience=0, factor=0.5),
        EarlyStopping(monitor="acc_exp/eval/valid", patience=1),
        GradClip(max_norm=2.0),
        AMP(dtype="float16", init_scale=1024.0, growth_interval=4),
        GradAccumulation(steps=2),
        EMA(decay=0.9),
        clkernel.load("plugin", "replay", mem_size=60, seed=0),
        clkernel.load("plugin", "ewc", ewc_lambda=1.0),
        clkernel.load("metric", "default"),
    ]
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), plugins=plugins,
                        train_mb_size=32, eval_mb_size=512, train_epochs=3, eval_every=1, device="cpu",
                        generator=torch.Generator().manual_seed(0), checkpoint=checkpoint)
    return strategy, plugins


def states(plugins: list[Any]) -> list[str]:
    return [repr(p.state_dict()) for p in plugins[:6] if hasattr(p, "state_dict")]


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory) -> tuple[dict[str, Any], list[str], dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    strategy, plugins = build(Checkpointer(folder, every=7, keep=1000))
    results = clkernel.run(strategy, digits, eval_streams=STREAMS)
    return strategy.state.model.state_dict(), states(plugins), results, folder


def test_everything_composes(uninterrupted, digits):
    _, _, results, folder = uninterrupted
    assert float(results["acc_stream/eval/test"]) > 0.5  # replay keeps experience 0, experience 1 is learnt
    assert min(float(results[f"acc_exp/eval/test/exp00{e}"]) for e in (0, 1)) > 0.3
    assert "lr_epoch/train/train" in results
    assert len(list(folder.glob("checkpoint-*.pt"))) > 6


@pytest.mark.parametrize("where", ["experience 0, mid-epoch", "experience 1, mid-epoch"])
def test_a_run_resumed_from_a_mid_epoch_checkpoint_ends_bit_for_bit_as_the_uninterrupted_one(
        uninterrupted, digits, where):
    model, plugin_states, results, folder = uninterrupted
    candidates = []
    for path in sorted(folder.glob("checkpoint-*.pt")):
        position = read_checkpoint(path)[1]["position"]
        if position["stage"] == "train" and position["iteration"] % 2 == 1 and position["epoch"] == 1:
            candidates.append((position["experience"], path))  # inside an accumulation group, mid-experience
    path = next(p for e, p in candidates if e == int(where.split()[1].rstrip(",")))
    strategy, plugins = build()
    again = clkernel.run(strategy, digits, eval_streams=STREAMS, resume_from=path)
    for key, value in model.items():
        assert torch.equal(strategy.state.model.state_dict()[key], value), key
    assert states(plugins) == plugin_states
    accuracies = [k for k in results if k.startswith(("acc_exp/eval/test", "acc_stream/eval/test"))]
    assert accuracies and all(float(again[k]) == float(results[k]) for k in accuracies)
