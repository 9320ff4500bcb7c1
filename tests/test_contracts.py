"""The kernel-0.2 contracts that every plugin package relies on: metric names, validators, model helpers, the run
events, the one orchestrator, rank-0 events, and a library that does not configure logging."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import clkernel
from clkernel import MetricName, Strategy, hookimpl, metric_name, parse_metric_name
from clkernel.names import GRANULARITIES
from clkernel.validate import non_negative_number, positive_int, unit_interval

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- metric names

def test_metric_names_follow_the_documented_scheme():
    assert metric_name("acc", "exp", "eval", "test", exp=2) == "acc_exp/eval/test/exp002"
    assert metric_name("class_acc", "stream", "eval", "test", cls=3) == "class_acc_stream/eval/test/class003"
    assert metric_name("acc", "exp", "eval", "test", exp=1, task=12, cls=1234) == \
        "acc_exp/eval/test/exp001/task012/class1234"
    parsed = parse_metric_name("top5_acc_exp_mean/eval/valid")
    assert parsed == MetricName("top5_acc", "exp_mean", "eval", "valid") and parsed.metric == "top5_acc_exp_mean"
    assert parse_metric_name("loss_running_epoch/train/train").granularity == "running_epoch"


@pytest.mark.parametrize("bad", ["acc", "acc/eval/test", "acc_exp/fit/test", "acc_exp/eval/test/exp2",
                                 "acc_exp/eval/test/class001/exp001", "acc_exp/eval/test/foo001", "_exp/eval/t"])
def test_names_outside_the_scheme_are_rejected_naming_the_part(bad):
    with pytest.raises(ValueError, match="metric name"):
        parse_metric_name(bad)


@pytest.mark.parametrize("kwargs", [dict(granularity="experience"), dict(phase="fit"), dict(stream="a/b"),
                                    dict(exp=-1), dict(quantity="")])
def test_building_a_bad_name_is_an_error(kwargs):
    args = dict(quantity="acc", granularity="exp", phase="eval", stream="test") | kwargs
    with pytest.raises(ValueError):
        metric_name(**args)


_part = st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="_-"), min_size=1,
                max_size=12) | st.sampled_from(["x_running", "top5_acc", "acc_exp", "a_exp"])
_number = st.none() | st.integers(0, 10**5)


@settings(derandomize=True, database=None, deadline=None, max_examples=200)
@given(_part, st.sampled_from(GRANULARITIES), st.sampled_from(["train", "eval"]), _part, _number, _number, _number)
def test_building_then_parsing_gives_the_parts_back(quantity, granularity, phase, stream, exp, task, cls):
    if any(f"{quantity}_{granularity}".endswith("_" + g) and len(f"{quantity}_{granularity}") > len(g) + 1
           and g != granularity and g.endswith(granularity) for g in GRANULARITIES):
        with pytest.raises(ValueError, match="ends like a granularity"):  # "x_running" + "epoch"
            metric_name(quantity, granularity, phase, stream, exp=exp, task=task, cls=cls)
        return
    name = metric_name(quantity, granularity, phase, stream, exp=exp, task=task, cls=cls)
    assert parse_metric_name(name) == MetricName(quantity, granularity, phase, stream, exp, task, cls)
    assert str(parse_metric_name(name)) == name


# ---------------------------------------------------------------------- validators and model helpers

def test_validators_return_the_value_or_name_owner_option_and_value():
    assert positive_int(3, "mem_size", "replay") == 3
    assert unit_interval(1, "decay", "ewc") == 1.0 and non_negative_number(0, "alpha") == 0.0
    for call, message in ((lambda: positive_int(0, "mem_size", "replay"), "replay: mem_size must be a positive "
                                                                         "integer, got 0"),
                          (lambda: positive_int(True, "k"), "k must be a positive integer, got True"),
                          (lambda: positive_int(2.0, "k"), "got 2.0"),
                          (lambda: non_negative_number(float("nan"), "alpha", "lwf"), "lwf: alpha must be"),
                          (lambda: unit_interval(1, "p", "x", include_one=False), r"in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            call()


def test_model_forward_routes_task_labels_only_to_models_that_take_them():
    class TaskAware(torch.nn.Module):
        takes_task_labels = True

        def forward(self, x, t):
            return x + t[:, None]

    x, t = torch.zeros(3, 2), torch.tensor([0, 1, 2])
    assert clkernel.model_forward(TaskAware(), x, t)[:, 0].tolist() == [0.0, 1.0, 2.0]
    plain = torch.nn.Identity()
    assert clkernel.model_forward(plain, x, t) is x


def test_adapt_model_grows_dynamic_modules_and_the_optimizer_keeps_momentum(make_benchmark):
    class GrowingHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 2)])

        def adaptation(self, experience):
            while len(self.heads) <= experience.index:
                self.heads.append(torch.nn.Linear(4, 2))

        def forward(self, x):
            return torch.cat([h(x) for h in self.heads], dim=1)

    bench = make_benchmark(n_exp=2)
    model = GrowingHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    old = model.heads[0].weight
    momentum = opt.state[old]["momentum_buffer"].clone()
    clkernel.adapt_model(model, bench.train_stream[1], optimizer=opt, device="cpu")
    assert len(model.heads) == 2
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    assert torch.equal(opt.state[old]["momentum_buffer"], momentum)


# ---------------------------------------------------------------------- run events and the orchestrator

class RunRecorder:
    """Records run events, asks for an initial evaluation, writes one file in after_run."""

    name = "run-recorder"

    def __init__(self, folder: Path, initial: bool = True) -> None:
        self.folder, self.initial, self.events = folder, initial, []

    @hookimpl
    def before_run(self, state):
        self.events.append("before_run")

    @hookimpl
    def needs_initial_eval(self, state):
        self.events.append("needs_initial_eval")
        return self.initial

    @hookimpl
    def after_training_exp(self, state):
        self.events.append(f"trained {state.experience.index}")

    @hookimpl
    def after_eval(self, state):
        self.events.append(f"eval {state.stream_name} after {state.experiences_trained}")

    @hookimpl
    def after_run(self, state):
        self.events.append("after_run")
        (self.folder / "out.txt").write_text("done")

    @hookimpl
    def output_files(self, state):
        return [self.folder / "out.txt"]


def _strategy(plugins, **kw) -> Strategy:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    return Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=plugins, train_mb_size=2,
                    device="cpu", **kw)


def test_run_trains_the_train_stream_evaluates_after_each_experience_and_closes(make_benchmark, tmp_path):
    recorder = RunRecorder(tmp_path)
    strategy = _strategy([recorder])
    results = clkernel.run(strategy, make_benchmark(n_exp=2))
    assert recorder.events == ["before_run", "needs_initial_eval", "eval test after 0", "trained 0",
                               "eval test after 1", "trained 1", "eval test after 2", "after_run"]
    assert strategy.close() == [tmp_path / "out.txt"] and (tmp_path / "out.txt").read_text() == "done"
    assert isinstance(results, dict)


def test_python_train_with_eval_streams_does_what_run_does(make_benchmark, tmp_path):
    bench = make_benchmark(n_exp=2)
    recorder = RunRecorder(tmp_path)
    with _strategy([recorder]) as strategy:
        for exp in bench.train_stream:
            strategy.train(exp, eval_streams=[bench.test_stream])
        assert strategy.state.eval_streams == (bench.test_stream,)
    assert recorder.events == ["before_run", "needs_initial_eval", "eval test after 0", "trained 0",
                               "eval test after 1", "trained 1", "eval test after 2", "after_run"]


def test_no_initial_eval_unless_a_plugin_asks(make_benchmark, tmp_path):
    recorder = RunRecorder(tmp_path, initial=False)
    clkernel.run(_strategy([recorder]), make_benchmark(n_exp=1))
    assert "eval test after 0" not in recorder.events


def test_after_run_fires_when_training_fails_and_the_error_names_the_plugin(make_benchmark, tmp_path):
    class Boom:
        name = "boom"

        @hookimpl
        def before_training_exp(self, state):
            raise RuntimeError("kaboom")

    recorder = RunRecorder(tmp_path)
    with pytest.raises(clkernel.PluginError, match="'boom' failed in event 'before_training_exp'"):
        clkernel.run(_strategy([recorder, Boom()]), make_benchmark(n_exp=1))
    assert recorder.events[-1] == "after_run" and (tmp_path / "out.txt").exists()


def test_run_names_an_unknown_stream(make_benchmark):
    with pytest.raises(KeyError, match="no stream 'valid'; streams: train, test"):
        clkernel.run(_strategy([]), make_benchmark(n_exp=1), eval_streams=("valid",))


# ---------------------------------------------------------------------- rank 0 and logging

RANKS_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch, torch.distributed as dist
    import clkernel
    from clkernel import Benchmark, CLDataset, Experience, Stream, Strategy, hookimpl

    dist.init_process_group("gloo")
    seen = {"log_metrics": 0, "after_run": 0, "output_files": 0, "after_training_iteration": 0}

    class Probe:
        @hookimpl
        def after_training_iteration(self, state):
            seen["after_training_iteration"] += 1
            state.log_metrics({"loss_mb/train/train": float(state.loss)})

        @hookimpl
        def log_metrics(self, state, values):
            seen["log_metrics"] += 1

        @hookimpl
        def after_run(self, state):
            seen["after_run"] += 1

        @hookimpl
        def output_files(self, state):
            seen["output_files"] += 1
            return ["x"]

    y = torch.arange(4).repeat_interleave(2)
    data = CLDataset.from_tensors(torch.randn(8, 3), y)
    bench = Benchmark({"train": Stream("train", [Experience(0, data)]), "test": Stream("test", [Experience(0, data)])})
    model = torch.nn.Linear(3, 4)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[Probe()], train_mb_size=2,
                        device="cpu")  # each rank trains on its 4 of the 8 samples: 2 minibatches
    clkernel.run(strategy, bench)
    files = [str(f) for f in strategy.close()]
    seen.update(rank=strategy.state.rank, world_size=strategy.state.world_size, files=files)
    with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(seen, f)
    dist.destroy_process_group()
''')


def test_log_metrics_and_output_files_fire_on_rank_zero_only_under_torchrun(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    result = clkernel.testing.torchrun(str(script), str(tmp_path), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (rank0["rank"], rank1["rank"], rank0["world_size"]) == (0, 1, 2)
    assert rank0["after_training_iteration"] == rank1["after_training_iteration"] == 2
    assert rank0["log_metrics"] == 2 and rank1["log_metrics"] == 0
    assert rank0["output_files"] == 1 and rank1["output_files"] == 0 and rank1["files"] == []
    assert rank0["after_run"] == rank1["after_run"] == 1


def test_the_library_configures_no_logging_a_script_prints_nothing(tmp_path):
    script = textwrap.dedent('''
        import torch, clkernel, structlog
        from clkernel import CLDataset, Experience, Strategy
        data = CLDataset.from_tensors(torch.randn(8, 3), torch.arange(4).repeat_interleave(2))
        model = torch.nn.Linear(3, 4)
        strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
        strategy.train(Experience(0, data)); strategy.eval(Experience(0, data)); strategy.close()
        assert not structlog.is_configured()
    ''')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_a_script_that_configures_logging_sees_the_kernels_events():
    script = textwrap.dedent('''
        import logging, torch
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        from clkernel import CLDataset, Experience, Strategy
        data = CLDataset.from_tensors(torch.randn(8, 3), torch.arange(4).repeat_interleave(2))
        model = torch.nn.Linear(3, 4)
        Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu").train(Experience(0, data))
    ''')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "clkernel" in result.stderr and "experience_start" in result.stderr


def test_names_that_would_not_read_back_or_are_not_names_are_refused():
    with pytest.raises(ValueError, match="ends like a granularity"):
        metric_name("my_running", "epoch", "eval", "test")
    with pytest.raises(ValueError, match="integer >= 0"):
        metric_name("acc", "exp", "eval", "test", exp=2.0)
    with pytest.raises(ValueError, match="must be a string"):
        parse_metric_name(["a"])
    assert metric_name("acc", "stream", "eval", "") == "acc_stream/eval/unnamed"


def test_a_closed_strategy_refuses_to_run_again_and_run_takes_one_stream_name(make_benchmark, tmp_path):
    bench = make_benchmark(n_exp=1)
    recorder = RunRecorder(tmp_path, initial=False)
    strategy = _strategy([recorder])
    clkernel.run(strategy, bench, eval_streams="test")
    assert "eval test after 1" in recorder.events
    with pytest.raises(RuntimeError, match="the strategy is closed"):
        strategy.train(bench.train_stream)
    with pytest.raises(RuntimeError, match="the strategy is closed"):
        clkernel.run(strategy, bench)
