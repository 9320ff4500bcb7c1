"""The loop fires the documented events in the documented order, calls plugins in list order, sums loss terms."""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel import CompositionError, Naive, PluginError, Strategy, hookimpl
from clkernel.hookspecs import EVENTS


class Recorder:
    """Implements every event and records (plugin, event) for each call."""

    def __init__(self, log: list, name: str = "recorder") -> None:
        self.log, self.name = log, name


def _recording_method(event: str):
    if event == "log_metrics":
        def method(self, state, values):
            self.log.append((self.name, event))
    elif event == "loss_terms":
        def method(self, state):
            self.log.append((self.name, event))
    else:
        def method(self, state):
            self.log.append((self.name, event))
    method.__name__ = event
    return hookimpl(method)


for _event in EVENTS:
    setattr(Recorder, _event, _recording_method(_event))


def expected_training(n_exp: int, n_epochs: int, n_iter: int, first: bool = True) -> list[str]:
    """The events of one train() call; the first call of a strategy also starts the run."""
    iteration = ["before_training_iteration", "before_forward", "after_forward", "loss_terms", "before_backward",
                 "after_backward", "before_update", "after_update", "after_training_iteration"]
    seq = ["before_run", "before_training", "needs_initial_eval"] if first else ["before_training"]
    for _ in range(n_exp):
        seq += ["before_training_exp", "before_train_dataset_adaptation", "after_train_dataset_adaptation"]
        for _ in range(n_epochs):
            seq += ["before_training_epoch", *iteration * n_iter, "after_training_epoch"]
        seq += ["after_training_exp"]
    return seq + ["after_training"]


def expected_eval(n_exp: int, n_iter: int) -> list[str]:
    iteration = ["before_eval_iteration", "before_eval_forward", "after_eval_forward", "after_eval_iteration"]
    seq = ["before_eval"]
    for _ in range(n_exp):
        seq += ["before_eval_exp", "before_eval_dataset_adaptation", "after_eval_dataset_adaptation",
                *iteration * n_iter, "after_eval_exp"]
    return seq + ["after_eval"]


def make_strategy(plugins, **kw) -> Strategy:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    defaults = dict(train_mb_size=2, train_epochs=2, eval_mb_size=2, device="cpu")
    defaults.update(kw)
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins, **defaults)


def test_event_sequence_matches_documented_order(make_benchmark):
    bench = make_benchmark(n_exp=2, per_class=3)  # 6 samples per experience, minibatch 2 -> 3 iterations
    log: list = []
    strategy = make_strategy([Recorder(log)], eval_every=-1)
    strategy.train(bench.train_stream)
    assert [e for _, e in log] == expected_training(2, 2, 3)
    log.clear()
    strategy.eval(bench.test_stream)
    assert [e for _, e in log] == expected_eval(2, 3)
    log.clear()
    strategy.train(bench.train_stream[:1])
    assert [e for _, e in log] == expected_training(1, 2, 3, first=False)
    log.clear()
    strategy.close()
    strategy.close()  # idempotent
    assert [e for _, e in log] == ["after_run", "output_files"]


def test_event_sequence_is_the_same_under_pluggy_tracing(make_benchmark):
    bench = make_benchmark(n_exp=2, per_class=3)
    log: list = []
    strategy = make_strategy([Recorder(log)], trace=True)
    traced: list = []
    strategy.plugin_manager.add_hookcall_monitoring(lambda name, impls, kw: traced.append(name),
                                                    lambda outcome, name, impls, kw: None)
    strategy.train(bench.train_stream)
    expected = expected_training(2, 2, 3)
    assert [e for _, e in log][:len(expected)] == expected
    collected = ("loss_terms", "needs_initial_eval")  # collected-result events are called directly
    assert traced == [e for e in expected if e not in collected]


def test_without_trace_monitoring_sees_nothing_and_the_loop_is_precompiled(make_benchmark):
    log: list = []
    strategy = make_strategy([Recorder(log)])
    traced: list = []
    strategy.plugin_manager.add_hookcall_monitoring(lambda name, impls, kw: traced.append(name),
                                                    lambda outcome, name, impls, kw: None)
    strategy.train(make_benchmark(n_exp=1).train_stream)
    assert traced == [] and "before_forward" in [e for _, e in log]


def test_eval_inside_train_follows_eval_every(make_benchmark):
    bench = make_benchmark(n_exp=2, per_class=3)
    log: list = []
    strategy = make_strategy([Recorder(log)], eval_every=1)
    strategy.train(bench.train_stream[:1], eval_streams=[bench.test_stream[:1]])
    events = [e for _, e in log]
    # every 1 epoch: after epoch 1 (not after the last epoch, that one is the end-of-experience eval)
    first_epoch_end = events.index("after_training_epoch")
    assert events[first_epoch_end + 1] == "before_eval"
    assert events[events.index("after_training_exp") + 1] == "before_eval"
    assert events.count("before_eval") == 2
    assert events[-1] == "after_training"
    assert strategy.state.is_training is True and strategy.state.model.training


def test_plugins_are_called_in_list_order(make_benchmark):
    bench = make_benchmark(n_exp=1)
    log: list = []
    plugins = [Recorder(log, "c"), Recorder(log, "a"), Recorder(log, "b")]
    make_strategy(plugins).train(bench.train_stream)
    for event in ("before_training", "before_forward", "after_training_exp"):
        assert [p for p, e in log if e == event][:3] == ["c", "a", "b"]


def test_loss_terms_of_two_plugins_are_summed_into_the_backpropagated_loss(make_benchmark):
    class Term:
        def __init__(self, name: str, scale: float) -> None:
            self.name, self.scale, self.seen = name, scale, []

        @hookimpl
        def loss_terms(self, state):
            term = self.scale * state.model.weight.square().sum()
            self.seen.append(term.detach().clone())
            return term

    class Check:
        name = "check"

        @hookimpl
        def before_backward(self, state):
            base = state.criterion(state.mb_output, state.mb_y)
            extra = sum(state.loss_terms.values())
            assert set(state.loss_terms) == {"l2a", "l2b"}
            torch.testing.assert_close(state.loss, base + extra)
            # the gradient of the total loss includes both terms
            grads = torch.autograd.grad(state.loss, state.model.weight, retain_graph=True)[0]
            base_grad = torch.autograd.grad(base, state.model.weight, retain_graph=True)[0]
            torch.testing.assert_close(grads - base_grad, 2 * (0.1 + 0.3) * state.model.weight)
            self.checked = True

    a, b, check = Term("l2a", 0.1), Term("l2b", 0.3), Check()
    make_strategy([a, b, check]).train(make_benchmark(n_exp=1).train_stream)
    assert check.checked and len(a.seen) == len(b.seen) == 6


def test_unknown_event_fails_at_compose_time_naming_plugin_and_event():
    class Typo:
        name = "typo-plugin"

        @hookimpl
        def before_trainig_exp(self, state):
            pass

    with pytest.raises(CompositionError, match=r"'typo-plugin'.*'before_trainig_exp'.*before_training_exp"):
        make_strategy([Typo()])


def test_plugin_with_wrong_arguments_or_no_events_is_rejected():
    class WrongArgs:
        @hookimpl
        def before_training(self, strategy):
            pass

    class NoEvents:
        def before_training(self, state):
            pass

    with pytest.raises(CompositionError, match="WrongArgs"):
        make_strategy([WrongArgs()])
    with pytest.raises(CompositionError, match="NoEvents.*hookimpl"):
        make_strategy([NoEvents()])


@pytest.mark.parametrize("event", ["before_forward", "after_training_exp", "loss_terms", "after_eval_forward"])
def test_exception_in_plugin_names_plugin_and_event(make_benchmark, event):
    class Boom:
        name = "boom"

    def fail(self, state):
        raise KeyError("bad")

    fail.__name__ = event
    setattr(Boom, event, hookimpl(fail))
    strategy = make_strategy([Boom()])
    bench = make_benchmark(n_exp=1)
    with pytest.raises(PluginError, match=f"plugin 'boom' failed in event '{event}': KeyError") as info:
        strategy.train(bench.train_stream)
        strategy.eval(bench.test_stream)
    assert isinstance(info.value.__cause__, KeyError) and info.value.plugin == "boom"


def test_train_and_eval_return_logged_metrics_and_reach_loggers(make_benchmark):
    class Counter:
        name = "counter"

        def __init__(self):
            self.n = 0

        @hookimpl
        def after_training_iteration(self, state):
            self.n += 1
            state.log_metrics({"iterations": self.n})

        @hookimpl
        def before_eval(self, state):
            assert state.stream_name == "test"

        @hookimpl
        def after_eval_exp(self, state):
            state.log_metrics({f"seen/{state.stream_name}/{state.experience.index}": len(state.dataset)})

    class Sink:
        def __init__(self):
            self.values = []

        @hookimpl
        def log_metrics(self, state, values):
            self.values.append(dict(values))

    sink = Sink()
    strategy = make_strategy([Counter(), sink], train_epochs=1)
    bench = make_benchmark(n_exp=2)
    assert strategy.train(bench.train_stream) == {"iterations": 6}
    assert strategy.eval(bench.test_stream) == {"seen/test/0": 6, "seen/test/1": 6}
    assert sink.values[-1] == {"seen/test/1": 6} and len(sink.values) == 8


def test_stop_training_ends_the_epochs(make_benchmark):
    class StopAfterFirstEpoch:
        @hookimpl
        def after_training_epoch(self, state):
            state.stop_training = True

    strategy = make_strategy([StopAfterFirstEpoch()], train_epochs=5)
    strategy.train(make_benchmark(n_exp=1).train_stream)
    assert strategy.state.iteration == 3


def test_strategy_rejects_bad_sizes():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="train_mb_size"):
        Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        Strategy("model", torch.optim.SGD(model.parameters(), lr=0.1))


def test_public_names_are_exported():
    for name in ("hookimpl", "CLDataset", "Experience", "Stream", "Benchmark", "TrainState", "Strategy", "Naive",
                 "load", "available"):
        assert hasattr(clkernel, name)


def test_composition_mistakes_are_one_line_errors_naming_the_plugin():
    class WithDefault:
        name = "with-default"

        @hookimpl
        def after_training_exp(self, state=None):
            pass

    class Plugin:
        name = "p"

        @hookimpl
        def after_training_exp(self, state):
            pass

    class WrongArgs:
        name = "wrong-args"

        @hookimpl
        def after_training_exp(self, strategy):
            pass

    one = Plugin()
    for plugins, message in (([WithDefault()], "'with-default': argument 'state' of 'after_training_exp' has a "
                                               "default value"),
                             ([Plugin], r"plugin 'p' is a class: pass an instance, Plugin\(...\)"),
                             ([one, one], "plugin 'p' is listed twice"),
                             ([WrongArgs()], r"plugin 'wrong-args': after_training_exp\(\) takes 'strategy', which "
                                             r"the event does not pass; its arguments are \(state\)$")):
        with pytest.raises(CompositionError, match=message) as info:
            make_strategy(plugins)
        assert "\n" not in str(info.value)


def test_instances_of_one_plugin_are_named_in_list_order(make_benchmark):
    class Term:
        name = "k"

        def __init__(self, value):
            self.value = value

        @hookimpl
        def loss_terms(self, state):
            return torch.tensor(self.value)

    class Spy:
        @hookimpl
        def before_backward(self, state):
            self.terms = {k: float(v) for k, v in state.loss_terms.items()}

    spy = Spy()
    make_strategy([Term(1.0), Term(2.0), Term(3.0), spy]).train(make_benchmark(n_exp=1).train_stream)
    assert spy.terms == {"k": 1.0, "k#2": 2.0, "k#3": 3.0}
