"""`clkernel run` composes a run by names from installed plugins; exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PLUGIN = '''
import torch
import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream


def toy(n_experiences: int = 2, seed: int = 0, dataset_root: str | None = None):
    """Random 2x3 inputs, two classes per experience."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n_experiences).repeat_interleave(8)
    data = CLDataset.from_tensors(torch.randn(len(y), 2, 3, generator=g), y)
    exps = lambda: [Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(n_experiences)]
    if dataset_root == "missing":
        raise FileNotFoundError("no data in 'missing'; pass --data-root")
    return Benchmark({"train": Stream("train", exps()), "test": Stream("test", exps())}, name="toy")


def linear(num_classes: int, input_size: int):
    """Flatten, then one linear layer."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_size, num_classes))


class Count:
    name = "count"

    def __init__(self, run_dir=None):
        self.n, self.evals, self.run_dir = 0, 0, run_dir

    @clkernel.hookimpl
    def needs_initial_eval(self, state):
        return True

    @clkernel.hookimpl
    def after_training_iteration(self, state):
        self.n += 1
        state.log_metrics({"iterations": self.n})

    @clkernel.hookimpl
    def after_eval(self, state):
        self.evals += 1
        state.log_metrics({"evals": self.evals})


class Recorder:
    name = "recorder"

    def __init__(self, run_dir, config):
        self.path = run_dir / "values.jsonl"
        self.config = config
        self.file = self.path.open("w")

    @clkernel.hookimpl
    def log_metrics(self, state, values):
        self.file.write(json.dumps(values) + "\\n")

    @clkernel.hookimpl
    def after_run(self, state):
        self.file.close()
        (self.path.parent / "config.json").write_text(json.dumps(self.config, default=str))

    @clkernel.hookimpl
    def output_files(self, state):
        return [self.path]


class Explode:
    name = "explode"

    @clkernel.hookimpl
    def before_training_exp(self, state):
        raise RuntimeError("kaboom")


import json


@clkernel.hookimpl
def register_benchmarks(register):
    register("toy", toy, default=True)


@clkernel.hookimpl
def register_models(register):
    register("linear", linear, default=True)


@clkernel.hookimpl
def register_plugins(register):
    register("explode", Explode)


@clkernel.hookimpl
def register_metrics(register):
    register("count", Count, default=True)


@clkernel.hookimpl
def register_loggers(register):
    register("recorder", Recorder, default=True)
'''


@pytest.fixture
def site(install_dist):
    return install_dist("clk-toy", "clk_toy", PLUGIN, entry_point="toy")


@pytest.fixture
def run(run_cli):
    return run_cli


def test_run_with_defaults_trains_evaluates_and_logs(site, tmp_path, run):
    result = run(site, tmp_path, "--output", "out", "--mb-size", "4")
    assert result.returncode == 0, result.stderr
    values = [json.loads(line) for line in (tmp_path / "out" / "values.jsonl").read_text().splitlines()]
    # an initial evaluation (needs_initial_eval), then per experience: 4 iterations and an evaluation
    assert values[0] == {"evals": 1} and values[-1] == {"evals": 3}
    assert [v["iterations"] for v in values if "iterations" in v] == list(range(1, 9))
    assert "run finished; results in out" in result.stdout and "values.jsonl" in result.stdout
    # the events go to the run folder's events.jsonl; the console shows only warnings and errors
    lines = (tmp_path / "out" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events[0] == "run_start" and events[-1] == "run_end" and "experience_start" in events
    assert '"run_start"' not in result.stderr
    start = json.loads(lines[0])
    assert start["components"]["benchmark:toy"] == "clk-toy 1.0" and start["seed"] == 0


def test_config_file_and_flags_compose(site, tmp_path, run):
    (tmp_path / "run.toml").write_text('benchmark = "toy:n_experiences=3"\nepochs = 2\nmb-size = 8\n'
                                       'output = "from-config"\nloggers = [{name = "recorder"}]\n')
    result = run(site, tmp_path, "--config", "run.toml", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "from-config" / "config.json").read_text())
    assert config["epochs"] == 1 and config["mb_size"] == 8 and config["benchmark"] == "toy:n_experiences=3"
    values = (tmp_path / "from-config" / "values.jsonl").read_text().splitlines()
    assert sum('"iterations"' in v for v in values) == 6  # 3 experiences x 16 samples / 8


@pytest.mark.parametrize("args, message", [
    (["--model", "linaer"], "unknown model 'linaer'; installed models: linear"),
    (["--benchmark", "toy:n_experiences=two"], "n_experiences='two'"),
    (["--benchmark", "toy:colour=red"], "has no option 'colour'; its options: n_experiences, seed, dataset_root"),
    (["--epochs", "0"], "--epochs must be an integer from 1"),
    (["--data-root", "missing"], "benchmark 'toy': no data in 'missing'; pass --data-root"),
])
def test_usage_errors_exit_2_naming_the_culprit(site, tmp_path, args, message, run):
    (tmp_path / "missing").mkdir()  # it exists (--data-root must), but the toy benchmark finds no data in it
    result = run(site, tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing is created before every check passed


def test_bad_config_key_is_a_usage_error(site, tmp_path, run):
    (tmp_path / "run.toml").write_text("epoch = 3\n")
    result = run(site, tmp_path, "--config", "run.toml")
    assert result.returncode == 2 and "unknown key 'epoch'" in result.stderr


def test_training_failure_exits_1_with_one_line_and_the_traceback_in_the_run_folder(site, tmp_path, run):
    result = run(site, tmp_path, "--plugin", "explode", "--output", "out")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    error = json.loads(result.stderr)
    assert error["event"] == "run_failed" and "Traceback" not in result.stderr
    assert "plugin 'explode' failed in event 'before_training_exp'" in error["error"]
    assert error["traceback_in"] == "out/events.jsonl"
    logged = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    failed = [e for e in logged if e["event"] == "run_failed"][0]
    assert "kaboom" in failed["exception"] and "Traceback" in failed["exception"]


@pytest.mark.parametrize("args", [["--help"], ["hooks"], ["hooks", "--json"], ["plugins"], ["plugins", "--json"],
                                  ["show", "plugin", "replay"], ["show", "metric", "default"],
                                  ["show", "logger", "report"], ["show", "model", "simple-mlp"],
                                  ["show", "benchmark", "split-digits"]])
def test_listing_commands_do_not_import_torch(args):
    """`clkernel --help / hooks / plugins / show` start fast: neither the kernel nor a registration module
    imports torch (tests/bench/bench_startup.py measures the time)."""
    code = ("import sys, runpy; sys.argv = ['clkernel', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('clkernel.cli', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
            "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "NO-TORCH", [
        line for line in result.stderr.splitlines() if "torch" in line][:5]


def test_version_help_defaults_and_log_format_after_the_subcommand(capsys):
    from clkernel.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"clkernel {clkernel_version()}"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    assert "learning rate (default: 0.01)" in help_text and "SGD momentum (default: 0.9)" in help_text
    assert main(["hooks", "--log-format", "json"]) == 0 and "before_run(state)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_an_empty_component_name_is_a_usage_error(site, tmp_path, run):
    result = run(site, tmp_path, "--model", "")
    assert result.returncode == 2 and "empty model name" in result.stderr


def clkernel_version() -> str:
    import clkernel

    return clkernel.__version__
