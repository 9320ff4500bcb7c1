"""lr-scheduler: the learning rate per epoch (or per optimizer update) is the torch scheduler's own sequence,
ReduceLROnPlateau steps on the named metric, and bad options are refused naming the option."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as torch_schedulers

import clkernel
from clkernel import PluginError
from clkernel.cli import main
from clkernel.discovery import parse_options
from clkernel_training import GradAccumulation, LRScheduler


def torch_sequence(make, steps, *, lr=0.1, values=None, restart_every=None):
    """The learning rate before each of ``steps`` scheduler steps, from a plain torch optimizer and scheduler."""
    out = []
    for i in range(steps):
        if i == 0 or (restart_every and i % restart_every == 0):
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
            sched = make(opt)
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(*([] if values is None else [values[i]]))
    return out


@pytest.mark.parametrize("reset", [False, True], ids=["continued", "reset-per-experience"])
def test_learning_rate_per_epoch_is_the_torch_schedulers_own_sequence(digits, make_strategy, recorder, reset):
    plugin = LRScheduler("CosineAnnealingLR", T_max=4, eta_min=0.001, reset_per_experience=reset)
    make_strategy([plugin, recorder], epochs=3, lr=0.1).train(digits.train_stream)
    expected = torch_sequence(lambda o: torch_schedulers.CosineAnnealingLR(o, T_max=4, eta_min=0.001), 6,
                              restart_every=3 if reset else None)
    assert recorder.epoch_lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert recorder.values["lr_epoch/train/train"] == pytest.approx(expected, rel=1e-12, abs=0)  # logged
    assert expected[1] < expected[0] and (expected[3] == expected[0]) == reset  # not vacuous


def test_per_iteration_steps_once_per_optimizer_update_with_gradient_accumulation(digits, make_strategy, recorder):
    iterations = math.ceil(len(digits.train_stream[0].dataset) / 32)
    groups = [min(3, iterations - s) for s in range(0, iterations, 3)]  # the epoch's last group may be shorter
    updates = 2 * len(groups)
    plugin = LRScheduler("OneCycleLR", max_lr=0.2, total_steps=updates, step_every="iteration")
    make_strategy([GradAccumulation(3), plugin, recorder], epochs=2).train(digits.train_stream[0])
    per_update = torch_sequence(lambda o: torch_schedulers.OneCycleLR(o, max_lr=0.2, total_steps=updates), updates)
    expected = [lr for i, lr in enumerate(per_update) for _ in range(groups[i % len(groups)])]
    assert recorder.values["lr_mb/train/train"] == pytest.approx(expected, rel=1e-12, abs=0)
    assert plugin.scheduler.last_epoch == updates


def test_reduce_on_plateau_steps_on_the_training_metric_it_names(digits, make_strategy, recorder):
    # listed before the metrics: it reads the epoch's loss after they log it all the same
    plugin = LRScheduler("ReduceLROnPlateau", monitor="loss_epoch/train/train", patience=0, factor=0.5,
                         threshold=0.3)
    make_strategy([plugin, clkernel.load("metric", "loss"), recorder], epochs=3, lr=0.1).train(digits.train_stream)
    losses = recorder.values["loss_epoch/train/train"]
    expected = torch_sequence(lambda o: torch_schedulers.ReduceLROnPlateau(o, patience=0, factor=0.5,
                                                                             threshold=0.3), 6, values=losses)
    assert recorder.epoch_lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert 1 < len(set(expected)) < 6


def test_reduce_on_plateau_on_the_current_experiences_validation_accuracy(digits, make_strategy, recorder):
    plugin = LRScheduler("ReduceLROnPlateau", monitor="acc_exp/eval/valid", patience=0, factor=0.5,
                         threshold=0.02)
    strategy = make_strategy([plugin, clkernel.load("metric", "accuracy"), recorder], epochs=3, lr=0.1,
                             eval_every=1)
    strategy.train(digits.train_stream, eval_streams=[digits.streams["valid"]])
    assert plugin.scheduler.mode == "max"  # accuracy: mode inferred
    # each experience evaluates after epochs 0 and 1 (eval_every) and after its last epoch: 3 values each;
    # experience 1's own values are the last 3 of exp001's (it was evaluated during experience 0 too)
    seen = (recorder.values["acc_exp/eval/valid/exp000"][:3] + recorder.values["acc_exp/eval/valid/exp001"][3:])
    expected = torch_sequence(lambda o: torch_schedulers.ReduceLROnPlateau(o, mode="max", patience=0, factor=0.5,
                                                                             threshold=0.02), 6, values=seen)
    assert recorder.epoch_lrs == pytest.approx(expected, rel=1e-12, abs=0)


def test_a_monitored_stream_that_is_not_evaluated_fails_when_training_starts(digits, make_strategy):
    plugin = LRScheduler("ReduceLROnPlateau", monitor="loss_exp/eval/valid")
    with pytest.raises(PluginError, match=r"monitor 'loss_exp/eval/valid' reads stream 'valid', which train\(\) "
                                          r"does not evaluate \(eval streams: test\)") as error:
        make_strategy([plugin]).train(digits.train_stream[0], eval_streams=[digits.test_stream])
    assert error.value.event == "before_training"


def test_a_monitored_metric_that_no_plugin_logs_fails_at_the_first_epochs_end(digits, make_strategy):
    plugin = LRScheduler("ReduceLROnPlateau", monitor="loss_epoch/train/train")
    with pytest.raises(PluginError, match=r"monitor 'loss_epoch/train/train' was not logged at the end of epoch 0; "
                                          r"logged: acc_epoch/train/train, lr_epoch/train/train; did you mean "):
        make_strategy([plugin, clkernel.load("metric", "accuracy")]).train(digits.train_stream[0])


@pytest.mark.parametrize("args, kwargs, message", [
    (("CosineAnealingLR",), {}, ("lr-scheduler: unknown scheduler 'CosineAnealingLR'; did you mean "
                                "'CosineAnnealingLR'?")),
    (("CosineAnnealingLR",), {"T_max": 10, "T_mx": 3}, ("lr-scheduler: CosineAnnealingLR has no option 'T_mx'; its "
                                                       "options: T_max, eta_min, last_epoch (and lr-scheduler's own: "
                                                       "scheduler, step_every, reset_per_experience, monitor, "
                                                       "log_every); did you mean 'T_max'?")),
    (("StepLR",), {}, "lr-scheduler: StepLR needs option step_size"),
    (("StepLR",), {"step_size": 2.5}, "lr-scheduler: StepLR: option step_size=2.5 must be int"),
    (("StepLR",), {"step_size": 1, "step_every": "epochs"}, "step_every must be 'epoch' or 'iteration'"),
    (("StepLR",), {"step_size": 1, "log_every": "always"}, "log_every must be one of epoch, iteration, never"),
    (("StepLR",), {"step_size": 1, "monitor": "loss_epoch/train/train"}, "monitor applies to ReduceLROnPlateau"),
    (("ReduceLROnPlateau",), {}, "ReduceLROnPlateau steps on a metric: give monitor=METRIC"),
    (("ReduceLROnPlateau",), {"monitor": "val_loss"}, "monitor 'val_loss' is not a clkernel metric name"),
    (("ReduceLROnPlateau",), {"monitor": "loss_mb/train/train"}, "granularity must be 'epoch'"),
    (("ReduceLROnPlateau",), {"monitor": "loss_epoch/train/train", "step_every": "iteration"},
     "ReduceLROnPlateau steps once per epoch"),
    (("SequentialLR",), {}, "SequentialLR is built over other schedulers: from Python, pass a function"),
])
def test_bad_options_are_refused_naming_the_option(args, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        LRScheduler(*args, **kwargs)


def test_a_function_builds_compositions_such_as_sequential_lr(digits, make_strategy, recorder):
    def warmup_then_decay(opt):
        return torch_schedulers.SequentialLR(opt, [torch_schedulers.LinearLR(opt, start_factor=0.5, total_iters=2),
                                                   torch_schedulers.ExponentialLR(opt, gamma=0.5)], milestones=[2])

    make_strategy([LRScheduler(warmup_then_decay), recorder], epochs=4, lr=0.1).train(digits.train_stream[0])
    assert recorder.epoch_lrs == pytest.approx(torch_sequence(warmup_then_decay, 4), rel=1e-12, abs=0)


def test_command_line_options_are_typed_and_a_bad_key_exits_2_naming_it(tmp_path, capsys):
    name, options = parse_options("plugin", "lr-scheduler:scheduler=CosineAnnealingLR,T_max=10,eta_min=0.001,"
                                            "reset_per_experience=true")
    assert (name, options) == ("lr-scheduler", {"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 0.001,
                                                "reset_per_experience": True})
    out = tmp_path / "run"
    code = main(["run", "--plugin", "lr-scheduler:scheduler=CosineAnnealingLR,T_mx=10", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err[-1].startswith("clkernel run: error: lr-scheduler: CosineAnnealingLR has no option 'T_mx'")
