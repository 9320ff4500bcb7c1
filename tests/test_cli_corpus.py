"""Every user mistake in ``clkernel run``: exit code 2, one line naming the culprit, nothing created (issue 11).

A corpus of bad command lines and config files, generated from the installed components' signatures (wrong
types, unknown, doubled and misspelt option keys, empty and misspelt names, as flags and as ``--config`` TOML)
plus the run-level mistakes (numbers out of range or of the wrong kind, bad devices, paths and config files).
Each case runs ``clkernel.cli.main`` in this process (no subprocess per case, so the corpus stays fast) in an
empty folder holding one sentinel file, and must: return 2; print exactly one line on stderr, starting with
``clkernel run: error:`` and holding the expected option, key or value; print no traceback; create nothing
(neither ``--output`` nor ``runs/``); leave the sentinel's bytes alone. The training loop is replaced by one that
fails loudly, and network connections are refused, so a case the checks miss fails fast instead of training or
downloading.
"""

from __future__ import annotations

import inspect
import math
import os
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clkernel.config import (
    INT_LIMITS,
    UsageError,
    check_device,
    check_output,
    resolve_run_config,
)
from clkernel.discovery import registry

BASE = ["--benchmark", "split-digits", "--epochs", "1", "--metric", "accuracy", "--logger", "jsonl"]
BASE_TOML = {"benchmark": '"split-digits"', "epochs": "1", "metrics": '["accuracy"]', "loggers": '["jsonl"]'}
SENTINEL = b"sentinel \x00\xff bytes\n"
#: Options that ``clkernel run`` fills from the run, or that take objects: no text of a wrong type for them.
SKIP_OPTIONS = {"run_dir", "config", "train_transform", "eval_transform", "benchmark", "device"}

#: Reasons for cases that need another part of issue 11 (see the report of tests/test_cli_corpus.py).
NEEDS_FACTORY = ("needs the component's factory to refuse the value (a range or choice check) AND clkernel run to "
                 "build the components before it creates the run folder")
NEEDS_ARGPARSE = ("needs clkernel run's argument parser to report a bad flag value in one line (a parser whose "
                  "error() prints 'clkernel run: error: ...' without the usage line, or numeric flags read as text "
                  "and checked by clkernel.config.resolve_run_config)")


@dataclass
class Case:
    """One bad invocation: flags after ``run``, an optional config file, and what the error line must hold."""

    id: str
    args: list[str]
    expect: list[str]  # each must appear in the error line
    config: str | bytes | None = None  # text of c.toml (the flag --config c.toml is added), or raw bytes
    base: bool = True  # add BASE flags (or BASE_TOML keys, for a config case) before the case's
    output: bool = True  # add --output out
    xfail: str | None = None
    marks: list[Any] = field(default_factory=list)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if math.isnan(value) else repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    return str(value)


def config_case(id: str, keys: dict[str, Any], expect: list[str], raw: bool = False, **kw: Any) -> Case:
    """A config-file case: BASE_TOML keys, overridden by ``keys`` (TOML literals if ``raw``, else values)."""
    lines = dict(BASE_TOML)
    for key in keys:
        for alias in {key, key.replace("-", "_"), key + "s", key.rstrip("s")}:
            lines.pop(alias, None)
    for key, value in keys.items():
        lines[key] = value if raw else _toml_value(value)
    return Case(id, [], expect, config="".join(f"{k} = {v}\n" for k, v in lines.items()), base=False, **kw)


# ---------------------------------------------------------------------- generated from the registry

def _target(param: inspect.Parameter) -> type | None:
    target = param.annotation
    if target is param.empty:
        return type(param.default) if param.default not in (param.empty, None) else None
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(target) if t is not type(None)]
        if len(options) != 1:
            return None
        target = options[0]
    target = typing.get_origin(target) or target
    return target if target in (int, float, bool, str, list, tuple) else None


def _misspell(name: str) -> str:
    """A near miss: two neighbouring letters swapped (or a letter dropped)."""
    letters = [i for i in range(len(name) - 1) if name[i].isalpha() and name[i + 1].isalpha()
               and name[i] != name[i + 1]]
    if letters:
        i = letters[len(letters) // 2]
        return name[:i] + name[i + 1] + name[i] + name[i + 2:]
    return name[:-1]


#: Wrong values by the option's type: (label, text in NAME:key=text, value in a TOML table, text in the line).
#: The first of each type is also tried in a config-file table (all of them for plugins, the smallest kind).
WRONG = {
    int: [("str", "abc", "abc", "abc"), ("float", "2.5", 2.5, "2.5"), ("float-whole", "2.0", 2.0, "2.0"),
          ("bool", "true", True, "True")],
    float: [("str", "abc", "abc", "abc"), ("nan", "nan", float("nan"), "nan"), ("inf", "inf", float("inf"), "inf"),
            ("bool", "false", False, "False")],
    bool: [("str", "maybe", "maybe", "maybe"), ("int", "2", 2, "2")],
    str: [("int-in-toml", None, 5, "5"), ("list-in-toml", None, ["a"], "['a']")],
    list: [("str", "abc", "abc", "abc"), ("int", "3", 3, "3")],
    tuple: [("str", "abc", "abc", "abc")],
}
#: Semantically wrong values (a range or a choice), which only the factory knows; only split-digits among the
#: benchmarks (the others would download data if the factory ran).
SEMANTIC = {int: [("negative", "-1"), ("zero", "0")], float: [("negative", "-1.0")], str: [("bogus", "no-such")]}
#: Values that are fine for these options (gss's batch_threshold is a cosine-similarity gate: negative is meaningful).
SEMANTIC_OK = {("int", "zero"): {"seed", "hidden_layers", "max_shift"}, ("float", "negative"): {"batch_threshold"}}
#: Models that need a benchmark with task labels (they refuse split-digits without them, before their options).
TASK_AWARE_MODELS = {"pnn", "mt-simple-mlp", "mt-simple-cnn"}
TASK_BENCHMARK = ["--benchmark", "split-digits:return_task_id=True"]
#: CNNs refuse split-digits' 8x8 images before looking at their options (a refusal the corpus checks elsewhere).
NEEDS_LARGER_IMAGES = {"mt-simple-cnn", "simple-cnn"}
SEMANTIC_SKIP = {"seed", "num_classes", "input_size", "in_channels", "in_features", "filename", "subdir", "stream",
                 "dataset_root", "decay_factor", "running_every",
                 # free text a tracker takes as it is (names, ids, addresses)
                 "project", "entity", "group", "run_id", "run_name", "experiment", "tracking_uri", "name"}


#: Good values of the options a component requires, given with every case of that component (so that a case holds
#: one mistake: its own). A component with a required option must be listed here (test below).
REQUIRED: dict[tuple[str, str], dict[str, Any]] = {("plugin", "lr-scheduler"): {"scheduler": "StepLR", "step_size": 1}}


def req(kind: str, name: str, but: str | None = None) -> str:
    """The required options of a component as ``key=value,`` text, leaving out ``but``."""
    return "".join(f"{k}={v}," for k, v in REQUIRED.get((kind, name), {}).items() if k != but)


def component_cases() -> list[Case]:
    cases: list[Case] = []
    seen: set[tuple[str, str, Any]] = set()
    reg = registry()
    for kind in ("benchmark", "model", "plugin", "metric", "logger"):
        table_key = kind if kind in ("benchmark", "model") else kind + "s"
        for name in reg.available(kind):
            comp = reg.get(kind, name)
            options = comp.options()
            prefix = f"{kind}-{name}"
            flag = f"--{kind}"
            # names: misspelt, other case, empty, with options but no name
            wrong = _misspell(name)
            if wrong not in reg.available(kind):
                cases.append(Case(f"{prefix}-misspelt-name", [flag, wrong], [wrong, name]))
                cases.append(config_case(f"{prefix}-misspelt-name-toml", {table_key: wrong if kind in (
                    "benchmark", "model") else [wrong]}, [wrong, name]))
            if name.upper() != name and kind in ("benchmark", "model"):
                cases.append(Case(f"{prefix}-upper-name", [flag, name.upper()], [name.upper()]))
            if options:
                key = next(iter(options))
                cases.append(Case(f"{prefix}-no-name", [flag, f":{key}=1"], [flag]))
                cases.append(config_case(f"{prefix}-table-without-name", {table_key: {key: 1}}, ["name"]))
                # option keys: unknown, misspelt, doubled, without '='
                cases.append(Case(f"{prefix}-unknown-key", [flag, f"{name}:{req(kind, name)}no_such_option=1"],
                                  ["no_such_option", name]))
                cases.append(config_case(f"{prefix}-unknown-key-toml", {table_key: {
                    "name": name, **REQUIRED.get((kind, name), {}), "no_such_option": 1}}, ["no_such_option"]))
                for key, param in options.items():
                    target = _target(param)
                    # an option name and type already met in this kind (epoch: bool in most metrics) gets one
                    # wrong-type case and one config-table case; the first time, every kind of mistake
                    first = (kind, key, target) not in seen
                    seen.add((kind, key, target))
                    if (kind != "benchmark" or name == "split-digits") and key not in SEMANTIC_SKIP \
                            and name not in NEEDS_LARGER_IMAGES:
                        for label, text in SEMANTIC.get(target, []):
                            if key in SEMANTIC_OK.get((target.__name__, label), ()):
                                continue
                            needs_tasks = kind == "model" and name in TASK_AWARE_MODELS
                            cases.append(Case(f"{prefix}-{key}-{label}",
                                              [*(TASK_BENCHMARK if needs_tasks else []), flag,
                                               f"{name}:{req(kind, name, key)}{key}={text}"],
                                              [key]))
                    if not first:
                        if key not in SKIP_OPTIONS and target in WRONG:
                            label, text, value, shown = WRONG[target][0]
                            if text is not None:
                                cases.append(Case(f"{prefix}-{key}-{label}",
                                                  [flag, f"{name}:{req(kind, name, key)}{key}={text}"],
                                                  [f"{key}=", text]))
                            cases.append(config_case(f"{prefix}-{key}-{label}-toml",
                                                     {table_key: {"name": name, **REQUIRED.get((kind, name), {}),
                                                                  key: value}}, [key]))
                        continue
                    good = {int: "1", float: "0.5", bool: "true", str: "x", list: "[1]", tuple: "(1,)"}.get(target)
                    if key not in SKIP_OPTIONS and good is not None:
                        cases.append(Case(f"{prefix}-{key}-twice",
                                          [flag, f"{name}:{req(kind, name, key)}{key}={good},{key}={good}"],
                                          [key, "twice"]))
                    spelt = _misspell(key)
                    if spelt not in options and spelt != key:
                        cases.append(Case(f"{prefix}-{key}-misspelt", [flag, f"{name}:{req(kind, name)}{spelt}=1"],
                                          [spelt, key]))
                    if key in SKIP_OPTIONS or target is None:
                        continue
                    for i, (label, text, value, shown) in enumerate(WRONG.get(target, [])):
                        if text is not None:
                            cases.append(Case(f"{prefix}-{key}-{label}",
                                              [flag, f"{name}:{req(kind, name, key)}{key}={text}"],
                                              [f"{key}=", text if "[" not in text else shown]))
                        if kind == "plugin" or i == 0:
                            cases.append(config_case(f"{prefix}-{key}-{label}-toml",
                                                     {table_key: {"name": name, **REQUIRED.get((kind, name), {}),
                                                                  key: value}}, [key]))
            else:
                cases.append(Case(f"{prefix}-takes-no-option", [flag, f"{name}:x=1"], ["'x'", name]))
    return cases


# ---------------------------------------------------------------------- run-level mistakes

def run_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    # numbers given as flags: values argparse's int/float take, and the range/finiteness checks refuse
    for key, values in {"epochs": ["0", "-1", "1000001", "99999999999999999999999999"],
                        "mb-size": ["0", "-5", str(2**20 + 1)], "eval-mb-size": ["0", str(2**40)],
                        "seed": ["-1", str(2**63), str(2**64)],
                        "lr": ["0", "nan", "inf"], "momentum": ["-1", "nan", "inf", "-0.5"]}.items():
        for value in values:
            add(Case(f"flag-{key}={value[:12]}", [f"--{key}", value], [f"--{key}", value if len(value) < 20
                                                                         else value[:10]]))
    add(Case("flag-lr=-inf", ["--lr=-inf"], ["--lr", "-inf"]))
    add(Case("flag-lr=-0.1", ["--lr=-0.1"], ["--lr", "-0.1"]))
    # values argparse's int/float refuse before clkernel sees them: one line only if the parser says so
    for key, value in [("epochs", "2.0"), ("epochs", "inf"), ("epochs", "x"), ("mb-size", "1e9"),
                       ("seed", "1.5"), ("lr", "fast"), ("momentum", ""), ("epochs", ""), ("lr", "-inf")]:
        add(Case(f"flag-{key}-argparse={value or 'empty'}", [f"--{key}", value], [f"--{key}"]))
    add(Case("flag-optimizer-unknown", ["--optimizer", "rmsprop"], ["--optimizer", "rmsprop"]))
    add(Case("flag-on-nonfinite-unknown", ["--on-nonfinite", "ignore"], ["--on-nonfinite"]))
    add(Case("flag-unknown", ["--epochz", "1"], ["--epochz"]))
    add(Case("flag-missing-value", ["--lr"], ["--lr"]))
    # combinations
    add(Case("adam-with-momentum", ["--optimizer", "adam", "--momentum", "0.5"], ["--momentum", "adam"]))
    add(config_case("adam-with-momentum-toml", {"optimizer": "adam", "momentum": 0.5}, ["momentum", "adam"]))
    add(config_case("adam-toml-momentum-flag", {"optimizer": "adam"}, ["--momentum", "adam"]))
    cases[-1].args = ["--momentum", "0.5"]
    # names
    for kind in ("benchmark", "model", "plugin", "metric", "logger"):
        add(Case(f"flag-{kind}-empty", [f"--{kind}", ""], [f"--{kind}"]))
        add(Case(f"flag-{kind}-blank", [f"--{kind}", "  "], [f"--{kind}"]))
    add(config_case("toml-plugin-list-with-empty", {"plugins": ["replay", ""]}, ["plugins"]))
    add(config_case("toml-model-int", {"model": 5}, ["model", "5"]))
    add(config_case("toml-metrics-int", {"metrics": [5]}, ["metrics", "5"]))
    add(config_case("toml-plugins-empty-list", {"plugins": []}, ["plugins"]))
    # devices
    for value in ["gpu", "foo", "meta", "cuda:-1", "", "cuda:x", "cuda:0:1", "cpu:0", "tpu"]:
        add(Case(f"device-{value or 'empty'}", ["--device", value], ["--device"]))
    cuda = _cuda_count()
    if cuda == 0:
        add(Case("device-cuda-missing", ["--device", "cuda"], ["--device", "no CUDA device"]))
    add(Case("device-cuda-index-too-big", ["--device", f"cuda:{max(cuda, 1) + 6}"], ["--device", f"cuda:{cuda + 6}"]
             if cuda else ["--device", "no CUDA device"]))
    if not _mps():
        add(Case("device-mps-missing", ["--device", "mps"], ["--device", "mps"]))
    add(config_case("toml-device-int", {"device": 0}, ["device", "0"]))
    add(config_case("toml-device-list", {"device": ["cpu"]}, ["device"]))
    add(config_case("toml-device-gpu", {"device": "gpu"}, ["device", "gpu"]))
    # output
    add(Case("output-empty", ["--output", ""], ["--output"], output=False))
    add(Case("output-is-a-file", ["--output", "sentinel.bin"], ["--output", "sentinel.bin"], output=False))
    add(Case("output-under-a-file", ["--output", "sentinel.bin/run"], ["--output", "sentinel.bin"], output=False))
    add(Case("output-name-too-long", ["--output", "x" * 300], ["--output", "300"], output=False))
    add(Case("output-nested-name-too-long", ["--output", f"a/{'y' * 256}/b"], ["--output", "256"], output=False))
    add(config_case("toml-output-int", {"output": 5}, ["output", "5"], output=False))
    add(config_case("toml-output-empty", {"output": ""}, ["output"], output=False))
    add(config_case("toml-output-file", {"output": "sentinel.bin"}, ["output", "sentinel.bin"], output=False))
    if os.geteuid() != 0:
        add(Case("output-parent-not-writable", ["--output", "locked/run"], ["--output", "locked"], output=False))
    # data root
    add(Case("data-root-missing", ["--data-root", "no-such-folder"], ["--data-root", "no-such-folder"]))
    add(Case("data-root-is-a-file", ["--data-root", "sentinel.bin"], ["--data-root", "sentinel.bin"]))
    add(Case("data-root-empty", ["--data-root", ""], ["--data-root"]))
    add(config_case("toml-data-root-int", {"data-root": 5}, ["data-root", "5"]))
    # config values of the wrong TOML type, or out of range
    for key, value, shown in [("epochs", 2.0, "2.0"), ("epochs", float("inf"), "inf"), ("epochs", float("nan"), "nan"),
                              ("epochs", 0, "0"), ("epochs", 10**7, "10000000"), ("epochs", "1", "'1'"),
                              ("epochs", True, "True"), ("epochs", [1], "[1]"), ("mb-size", 1e9, "1000000000.0"),
                              ("mb_size", 0, "0"), ("eval-mb-size", -3, "-3"), ("seed", -1, "-1"),
                              ("seed", 2**63, str(2**63)), ("seed", 1.5, "1.5"), ("lr", [0.1], "[0.1]"),
                              ("lr", "0.1", "'0.1'"), ("lr", True, "True"), ("lr", 0, "0"), ("lr", float("nan"), "nan"),
                              ("momentum", -1, "-1"), ("momentum", float("inf"), "inf"), ("momentum", "high", "high"),
                              ("optimizer", 1, "1"), ("optimizer", "rmsprop", "rmsprop"), ("optimizer", "", "''"),
                              ("on-nonfinite", True, "True"), ("on-nonfinite", "ignore", "ignore")]:
        add(config_case(f"toml-{key}={_toml_value(value)}", {key: value}, [key, shown]))
    add(config_case("toml-epochs-huge", {"epochs": "99999999999999999999999999"}, ["epochs", "9999999999"], raw=True))
    # config files
    add(Case("config-binary", ["--config", "c.toml"], ["--config", "TOML"],
             config=b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"))
    add(Case("config-latin1", ["--config", "c.toml"], ["--config", "TOML"], config="epochs = 1 # caf\xe9\n"
                                                                                  .encode("latin-1")))
    add(Case("config-invalid-toml", ["--config", "c.toml"], ["--config", "TOML"], config="epochs = = 1\n"))
    add(Case("config-missing", ["--config", "missing.toml"], ["--config", "missing.toml"]))
    add(Case("config-folder", ["--config", "."], ["--config"]))
    add(Case("config-empty-path", ["--config", ""], ["--config"]))
    add(Case("config-duplicate-key", ["--config", "c.toml"], ["--config", "TOML"],
             config="epochs = 1\nepochs = 2\n"))
    for key, close in [("epoch", "epochs"), ("learning_rate", None), ("mb_sise", "mb_size"), ("plugin_list", None),
                       ("config", None), ("Epochs", "epochs")]:
        add(config_case(f"toml-unknown-key-{key}", {key: 1}, [key] + ([close] if close else [])))
    add(config_case("toml-alias-twice", {"plugin": '"replay"', "plugins": '["ewc"]'}, ["plugin"], raw=True))
    add(config_case("toml-dash-and-underscore", {"mb-size": "4", "mb_size": "8"}, ["mb"], raw=True))
    return cases


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


CASES = [*component_cases(), *run_cases()]


def _params() -> list[Any]:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else [])
            for c in CASES]


def test_the_corpus_is_large_and_mostly_expected_to_pass() -> None:
    assert len(CASES) >= 300
    assert sum(c.xfail is None for c in CASES) >= 0.8 * len(CASES)


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder with one sentinel file; the training loop and the network refuse to start."""
    import clkernel.loop

    def no_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the run started: the mistake was not caught before the work")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(clkernel.loop, "run", no_run)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("CLKERNEL_DATA", str(tmp_path / "data-cache"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "sentinel.bin").write_bytes(SENTINEL)
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("case", _params())
def test_a_mistake_exits_2_with_one_line_and_creates_nothing(case: Case, sandbox: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from clkernel.cli import main

    args = [*(BASE if case.base else []), *case.args]
    if case.config is not None:
        path = sandbox / "c.toml"
        path.write_bytes(case.config if isinstance(case.config, bytes) else case.config.encode())
        if "--config" not in case.args:
            args += ["--config", "c.toml"]
    if case.output:
        args += ["--output", "out"]
    if case.id == "output-parent-not-writable":
        (sandbox / "locked").mkdir(mode=0o500)
    before = {p.name: p.read_bytes() if p.is_file() else None for p in sandbox.iterdir()}
    capsys.readouterr()
    try:
        code = main(["--log-format", "json", "run", *args])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip("\n").splitlines()
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    line = lines[0]
    assert line.startswith("clkernel run: error: "), line
    for token in case.expect:
        assert token in line, f"{token!r} not in {line!r}"
    after = {p.name: p.read_bytes() if p.is_file() else None for p in sandbox.iterdir()}
    assert after == before, f"created or changed: {sorted(set(after) ^ set(before))}"
    assert not (sandbox / "out").exists() and not (sandbox / "runs").exists()


# ---------------------------------------------------------------------- the module's own API

def test_resolve_run_config_keeps_good_values_and_normalises() -> None:
    import argparse

    args = argparse.Namespace(config=None, benchmark="split-digits:n_experiences=2", model=None, plugin=["replay"],
                              metric=[], logger=[], optimizer=None, lr="0.5", momentum=None, epochs="3",
                              mb_size=None, eval_mb_size=None, seed=None, device="CPU", output=None, data_root=None,
                              on_nonfinite=None)
    config = resolve_run_config(args)
    assert config["epochs"] == 3 and config["lr"] == 0.5 and config["device"] == "cpu"
    assert config["plugin"] == ["replay"] and config["metric"] == [] and config["seed"] == 0
    assert INT_LIMITS["mb_size"] == (1, 2**20)


def test_large_but_finite_lr_and_momentum_are_allowed(tmp_path: Path) -> None:
    """A diverging run is not a usage error: the loop stops at the first non-finite loss."""
    import argparse

    args = argparse.Namespace(config=None, lr=1e30, momentum=1.5, output=str(tmp_path / "new" / "run"))
    config = resolve_run_config(args)
    assert config["lr"] == 1e30 and config["momentum"] == 1.5
    assert not (tmp_path / "new").exists()


def test_check_output_creates_nothing_and_accepts_an_existing_folder(tmp_path: Path) -> None:
    assert check_output(str(tmp_path)) == tmp_path
    assert check_output(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="is a file"):
        check_output(Path(__file__) / "run")


def test_check_device_is_case_insensitive_for_cpu_only() -> None:
    assert check_device("cpu") == check_device("CPU") == "cpu"
    with pytest.raises(UsageError, match="--device 'gpu'"):
        check_device("gpu")


def test_the_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, clkernel.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_component_with_a_required_option_has_its_good_values_in_required():
    reg = registry()
    needing = {(kind, name) for kind in ("benchmark", "model", "plugin", "metric", "logger")
               for name in reg.available(kind)
               if any(p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                      for p in reg.get(kind, name).options().values())}
    assert needing <= set(REQUIRED), f"add good values to REQUIRED for {sorted(needing - set(REQUIRED))}"
