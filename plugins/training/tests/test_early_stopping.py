"""early-stopping: it stops at the epoch its rule names and restores the best weights, on scripted values and on
split-digits' validation stream (with replay and EWC), and fails early when the monitored metric cannot come."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import clkernel
from clkernel import PluginError
from clkernel.cli import main
from clkernel_training import EarlyStopping


class Scripted:
    """Logs the next value of a script as ``name`` each time stream ``valid`` is evaluated (a metric plugin)."""

    name = "scripted"

    def __init__(self, name: str, values: list[float]) -> None:
        self.metric, self.values = name, list(values)

    @clkernel.hookimpl
    def after_eval(self, state: Any) -> None:
        if state.stream_name == "valid":
            state.log_metrics({self.metric: self.values.pop(0)})


def rule(values: list[float], patience: int, min_delta: float, mode: str) -> tuple[int, int | None]:
    """(best index, index at which `patience` values in a row have not improved, or None): the rule as stated."""
    best, best_at, wait = None, 0, 0
    for i, v in enumerate(values):
        if best is None or (v < best - min_delta if mode == "min" else v > best + min_delta):
            best, best_at, wait = v, i, 0
        else:
            wait += 1
            if wait >= patience:
                return best_at, i
    return best_at, None


@pytest.mark.parametrize("metric, mode, min_delta, script", [
    ("acc_stream/eval/valid", "auto", 0.0, [0.50, 0.70, 0.65, 0.70, 0.90, 0.95]),
    ("loss_stream/eval/valid", "min", 0.02, [1.00, 0.95, 0.94, 0.935, 0.5, 0.4]),
], ids=["accuracy-max", "loss-min-delta"])
def test_stops_at_the_epoch_its_rule_names_and_restores_the_best_weights(digits, make_strategy, recorder, metric,
                                                                         mode, min_delta, script):
    # experience 0: the script stops it; experience 1: every value improves, all 6 epochs run
    improving = [0.9 - 0.1 * i for i in range(6)] if "loss" in metric else [0.1 * i for i in range(6)]
    plugin = EarlyStopping(monitor=metric, mode=mode, patience=2, min_delta=min_delta)
    # listed first: it reads the value after the metric plugin logs it all the same
    strategy = make_strategy([plugin, Scripted(metric, script[:4] + [0.0] + improving), recorder], epochs=6,
                             eval_every=1)
    strategy.train(digits.train_stream, eval_streams=[digits.streams["valid"]])
    assert rule(script, 2, min_delta, "max" if "acc" in metric else "min") == (1, 3)
    assert recorder.epochs == {0: 4, 1: 6}  # epochs 0..3 of experience 0, then all of experience 1
    assert plugin.stopped == {0: 3} and plugin.best_epochs == {0: 1, 1: 4}  # epoch 5, the last, is not measured
    for key, value in recorder.final[0].items():  # experience 0 ends with the weights of epoch 1
        assert torch.equal(value, recorder.params[0, 1][key]), key
    assert not torch.equal(recorder.params[0, 3]["1.weight"], recorder.params[0, 1]["1.weight"])
    for key, value in recorder.final[1].items():  # not stopped: the last epoch's weights are kept
        assert torch.equal(value, recorder.params[1, 5][key]), key


def test_without_restoring_the_last_epochs_weights_are_kept(digits, make_strategy, recorder):
    plugin = EarlyStopping(monitor="acc_stream/eval/valid", patience=1, restore_best_weights=False)
    strategy = make_strategy([plugin, Scripted("acc_stream/eval/valid", [0.5, 0.4, 0.0]), recorder], epochs=3,
                             eval_every=1)
    strategy.train(digits.train_stream[0], eval_streams=[digits.streams["valid"]])
    assert plugin.stopped == {0: 1} and recorder.epochs == {0: 2}
    assert all(torch.equal(v, recorder.params[0, 1][k]) for k, v in recorder.final[0].items())


def test_on_split_digits_validation_loss_with_replay_and_ewc(digits, make_strategy, recorder):
    """The default monitor, the current experience's validation loss, measured by the default metrics; the stop
    epochs and the restored weights follow the rule applied to the logged values."""
    plugin = EarlyStopping(patience=1, min_delta=0.02)
    plugins = [clkernel.load("plugin", "replay", mem_size=100, seed=0), clkernel.load("plugin", "ewc", ewc_lambda=1.0),
               plugin, clkernel.load("metric", "default"), recorder]
    strategy = make_strategy(plugins, epochs=5, eval_every=1, lr=0.1)
    results = strategy.train(digits.train_stream, eval_streams=[digits.streams["valid"], digits.test_stream])
    assert results["acc_stream/eval/test"] > 0.6
    for exp in (0, 1):
        seen = [v for e, _, inside, k, v in recorder.log if e == exp and inside and k == f"loss_exp/eval/valid/exp{exp:03d}"]
        best, stop = rule(seen, 1, 0.02, "min")
        assert recorder.epochs[exp] == (stop + 1 if stop is not None else 5)
        assert plugin.stopped.get(exp) == stop and plugin.best_epochs[exp] == best
        final = recorder.params[exp, best] if stop is not None else recorder.params[exp, 4]
        assert all(torch.equal(v, final[k]) for k, v in recorder.final[exp].items())
    assert plugin.stopped  # not vacuous: the rule stopped at least one experience


def test_a_stream_that_is_not_evaluated_fails_when_training_starts(digits, make_strategy):
    with pytest.raises(PluginError, match=r"early-stopping: monitor 'loss_exp/eval/valid' reads stream 'valid', "
                                          r"which train\(\) does not evaluate \(eval streams: test\)"):
        make_strategy([EarlyStopping()], epochs=2).train(digits.train_stream[0], eval_streams=[digits.test_stream])


def test_a_metric_that_no_plugin_logs_fails_at_the_first_evaluation(digits, make_strategy):
    plugin = EarlyStopping(monitor="acc_stream/eval/valid")
    with pytest.raises(PluginError, match=r"monitor 'acc_stream/eval/valid' was not logged when stream 'valid' was "
                                          r"evaluated; logged: loss_exp/eval/valid/exp000, .*"):
        make_strategy([plugin, clkernel.load("metric", "loss")], epochs=2, eval_every=1).train(
            digits.train_stream[0], eval_streams=[digits.streams["valid"]])


def test_no_evaluation_between_epochs_fails_after_the_first_experience(digits, make_strategy):
    with pytest.raises(PluginError, match=r"monitor 'loss_exp/eval/valid/exp000' was never logged between the "
                                          r"epochs of experience 0, so early stopping cannot act: .*eval_every=K"):
        make_strategy([EarlyStopping(), clkernel.load("metric", "loss")], epochs=2).train(
            digits.train_stream[0], eval_streams=[digits.streams["valid"]])


@pytest.mark.parametrize("kwargs, message", [
    ({"patience": 0}, "early-stopping: patience must be a positive integer, got 0"),
    ({"min_delta": -1}, "early-stopping: min_delta must be a non-negative number, got -1"),
    ({"mode": "up"}, "early-stopping: mode must be one of auto, min, max, got 'up'"),
    ({"monitor": "acc_exp/eval/valid/task001"}, "per-task and per-class values cannot be monitored"),
    ({"restore_best_weights": "yes"}, "restore_best_weights must be true or false"),
])
def test_bad_options_are_refused_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


def test_the_command_line_refuses_a_run_where_the_metric_cannot_come_before_creating_anything(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--benchmark", "split-digits:valid_size=0.1", "--plugin", "early-stopping:patience=2",
                 "--epochs", "3", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and len(err) == 1
    assert err[0] == ("clkernel run: error: early-stopping: monitor 'loss_exp/eval/valid' needs --eval-streams "
                      "valid,test (got --eval-streams test), with a benchmark that has stream 'valid' (e.g. "
                      "--benchmark split-digits:valid_size=0.1); --eval-every K with 1 <= K < --epochs, to "
                      "evaluate between epochs (got --eval-every 0)")
