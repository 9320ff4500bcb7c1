"""The event spec keeps its promises: one docstring template, agreeing with SPEC, printed and rendered from one source.

`clkernel hooks` (plain text and JSON) and docs/hooks.md list every event and registration hook, in SPEC order,
with the same summaries; the kernel works with the lowest pluggy its pyproject allows as with the installed one.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import clkernel.hookspecs as hookspecs
from clkernel.cli import main
from clkernel.hookspecs import (
    EVENTS, REGISTRATION_FREQUENCY, REGISTRATION_HOOKS, SECTIONS, SPEC, RegistrationHooks, TrainingEvents, hook_doc,
    spec_arguments,
)

ROOT = Path(__file__).resolve().parents[1]
ADDED_IN_0_2 = {"before_run", "needs_initial_eval", "after_run", "output_files"}
HOOKS = [(TrainingEvents, name) for name in EVENTS] + [(RegistrationHooks, name) for name in REGISTRATION_HOOKS]
RST_MARKUP = re.compile(r"``|:[a-z]+:`|\.\. |:param ")


def _id(hook: tuple[type, str]) -> str:
    return hook[1]


# ---------------------------------------------------------------------- (a) the template


@pytest.mark.parametrize("hook", HOOKS, ids=_id)
def test_docstring_follows_the_template(hook):
    hooks, name = hook
    raw = inspect.getdoc(getattr(hooks, name))
    assert raw, f"{name} has no docstring"
    assert "\n" not in raw.split("\n\n")[0], f"{name}: the summary must be one line"
    doc = hook_doc(hooks, name)
    args = spec_arguments(hooks, name)
    assert doc.layout == (*(f":param {a}" for a in args), *SECTIONS, "versionadded"), (
        f"{name}: expected a summary, :param lines for {args}, then {', '.join(SECTIONS)} and .. versionadded::, "
        f"got {doc.layout}")
    assert all(doc.params[a] for a in args) and all(doc.sections[s] for s in SECTIONS), f"{name}: empty section"
    assert doc.version == ("0.2" if name in ADDED_IN_0_2 else "0.1"), name


@pytest.mark.parametrize("hook", HOOKS, ids=_id)
def test_may_set_says_what_or_nothing(hook):
    hooks, name = hook
    may_set = hook_doc(hooks, name).sections["May set"]
    assert may_set.startswith("Nothing to set") or "``state." in may_set, f"{name}: {may_set}"


def test_registration_hooks_are_exactly_the_hookspecs_of_registration_hooks():
    specs = [n for n, f in vars(RegistrationHooks).items() if callable(f) and not n.startswith("_")]
    assert specs == list(REGISTRATION_HOOKS)
    events = [n for n, f in vars(TrainingEvents).items() if callable(f) and not n.startswith("_")]
    assert events == list(EVENTS)


def test_module_pseudocode_fires_the_events_in_spec_order():
    doc = inspect.getdoc(hookspecs)
    loop = doc.split("::\n\n", 1)[1]
    loop = loop[:re.search(r"^\S", loop, re.M).start()]  # the literal block ends at the first unindented line
    firsts = {name: loop.find(f"{name}(") for name in EVENTS if name != "log_metrics"}
    assert all(pos >= 0 for pos in firsts.values()), [n for n, p in firsts.items() if p < 0]
    assert sorted(firsts, key=firsts.get) == [n for n in EVENTS if n != "log_metrics"]


# ---------------------------------------------------------------------- (b) Returns and Raises agree with SPEC


@pytest.mark.parametrize("hook", HOOKS, ids=_id)
def test_returns_agrees_with_spec(hook):
    hooks, name = hook
    returns = hook_doc(hooks, name).sections["Returns"]
    collected = hooks is TrainingEvents and SPEC[name].result is not None
    if collected:
        assert "ignored" not in returns.lower(), f"{name} is collected ({SPEC[name].result}): {returns}"
        assert "Collected:" in returns, f"{name}: say how the results are collected and combined: {returns}"
    else:
        assert returns == "Ignored.", f"{name}'s result is ignored: {returns}"


@pytest.mark.parametrize("name", EVENTS)
def test_raises_names_the_plugin_error(name):
    raises = hook_doc(TrainingEvents, name).sections["Raises"]
    assert "PluginError" in raises and "naming the plugin" in raises.replace("naming the logger", "naming the plugin")
    if SPEC[name].result is not None or name == "log_metrics":  # never dispatched through pluggy: always wrapped
        assert "always" in raises, raises
    else:
        assert "pluggy dispatch" in raises, raises


# ---------------------------------------------------------------------- (c) `clkernel hooks`


def _hooks_output(capsys, *args: str) -> str:
    assert main(["hooks", *args]) == 0
    return capsys.readouterr().out


def test_clkernel_hooks_prints_every_hook_in_order_as_plain_text(capsys):
    out = _hooks_output(capsys)
    names = re.findall(r"^  (\w+)\(", out, re.M)
    assert names == [*EVENTS, *REGISTRATION_HOOKS]
    assert not RST_MARKUP.search(out), RST_MARKUP.search(out)
    for name in EVENTS:
        facts = re.search(rf"^  {name}\(.*\)  \[(.*)\]$", out, re.M)[1]
        assert facts.startswith(SPEC[name].frequency + ";") and facts.endswith(SPEC[name].result or "ignored")


def test_clkernel_hooks_json_lists_every_hook_in_order_as_plain_text(capsys):
    rows = json.loads(_hooks_output(capsys, "--json"))
    assert [r["name"] for r in rows] == [*EVENTS, *REGISTRATION_HOOKS]
    for r in rows:
        for key, value in r.items():
            assert not RST_MARKUP.search(json.dumps(value)), (r["name"], key, value)
        if r["name"] in SPEC:
            spec = SPEC[r["name"]]
            assert (r["frequency"], r["result"]) == (spec.frequency, spec.result or "ignored")
            assert r["ranks"] == ("rank 0" if spec.rank_zero else "every rank")
        else:
            assert (r["frequency"], r["result"]) == (REGISTRATION_FREQUENCY, "ignored")
    plain = _hooks_output(capsys)
    assert all(f"      {r['summary']}\n" in plain for r in rows)


# ---------------------------------------------------------------------- (d) docs/hooks.md


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r'^<a id="(\w+)"></a>$', text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_hooks_md_shows_every_event_with_spec_facts_and_the_cli_summary(capsys):
    md = (ROOT / "docs" / "hooks.md").read_text()
    sections = _sections(md)
    assert list(sections) == [*EVENTS, *REGISTRATION_HOOKS]
    rows = {r["name"]: r for r in json.loads(_hooks_output(capsys, "--json"))}
    for name, section in sections.items():
        row = rows[name]
        assert f"- **Fires:** {row['frequency']}\n" in section, name
        assert f"- **Ranks:** {row['ranks']}\n" in section, name
        assert f"- **Result:** {row['result']}\n" in section, name
        assert f"\n{row['summary']}\n" in section, f"{name}: the summary `clkernel hooks` prints is not in hooks.md"
        assert "``" not in section and ":func:" not in section and ".. versionadded" not in section, name


# ---------------------------------------------------------------------- (e) the pluggy range

SCRIPT = r'''
import json, sys
import pluggy, torch
from clkernel import CLDataset, Experience, Strategy, hookimpl
from clkernel.hookspecs import SPEC

ITERATION = ["before_training_iteration", "before_forward", "after_forward", "loss_terms", "before_backward",
             "after_backward", "before_update", "after_update", "after_training_iteration"]
log = []


class Iterations:
    name = "iterations"

    @hookimpl
    def before_training_exp(self, state):
        log.append("before_training_exp")

    @hookimpl
    def loss_terms(self, state):
        log.append("loss_terms")
        return 0.5 * state.mb_output.pow(2).mean()

    @hookimpl
    def after_training_exp(self, state):
        log.append("after_training_exp")


def _recorder(event):
    def method(self, state):
        log.append(event)
    method.__name__ = event
    return hookimpl(method)


for _event in ITERATION:
    if _event != "loss_terms":
        setattr(Iterations, _event, _recorder(_event))


class Wrapper:
    name = "wrapper"

    @hookimpl(wrapper=True)
    def before_training_exp(self, state):
        log.append("wrapper:enter")
        result = yield
        log.append("wrapper:exit")
        return result

    @hookimpl(hookwrapper=True)
    def after_training_exp(self, state):
        log.append("hookwrapper:enter")
        yield
        log.append("hookwrapper:exit")


def train(trace):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[Iterations(), Wrapper()],
                        train_mb_size=2, device="cpu", trace=trace)
    seen = []
    strategy.plugin_manager.add_hookcall_monitoring(lambda name, impls, kwargs: seen.append(name),
                                                    lambda outcome, name, impls, kwargs: None)
    experience = Experience(0, CLDataset.from_tensors(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])))
    log.clear()
    with strategy:
        strategy.train(experience)
    assert set(strategy.state.loss_terms) == {"iterations"}, strategy.state.loss_terms
    return list(log), seen


expected = ["wrapper:enter", "before_training_exp", "wrapper:exit", *ITERATION * 2,
            "hookwrapper:enter", "after_training_exp", "hookwrapper:exit"]
fired, seen = train(trace=False)
assert fired == expected, fired
assert seen == ["before_training_exp", "after_training_exp"], seen  # the wrapped events go through pluggy
fired, seen = train(trace=True)
assert fired == expected, fired
dispatched = [e for e in expected if e in SPEC and SPEC[e].result is None]  # collected events are called directly
assert [name for name in seen if SPEC[name].result is None] == dispatched, seen
print(json.dumps({"pluggy": pluggy.__version__, "file": pluggy.__file__}))
'''


def _lowest_pluggy() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"pluggy\b", d))
    assert re.fullmatch(r"pluggy>=1\.3,<2", spec.replace(" ", "")), f"pluggy's range changed: {spec}; update this test"
    return re.search(r">=([\d.]+)", spec)[1] + ".0"


def _start(script: Path, pythonpath: list[str]) -> subprocess.Popen:
    path = [*pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])]  # the given folders first
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=script.parent, env={**os.environ, "PYTHONPATH": os.pathsep.join(path)})


@pytest.fixture(scope="module")
def compose_runs(tmp_path_factory):
    """The script running under the installed pluggy and under the lowest allowed one (installed with pip into a
    folder put first on PYTHONPATH), both at once: importing torch takes most of their time.

    Yields ``{"installed": process, "lowest": process or the reason it could not run}`` and the lowest version.
    """
    folder = tmp_path_factory.mktemp("pluggy-range")
    script = folder / "compose.py"
    script.write_text(SCRIPT)
    runs: dict[str, subprocess.Popen | str] = {"installed": _start(script, [])}
    version, target = _lowest_pluggy(), folder / "lowest"
    try:
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--quiet",
             "--timeout", "15", "--retries", "1", "--target", str(target), f"pluggy=={version}"],
            capture_output=True, text=True, timeout=120)
        reason = (pip.stderr.strip().splitlines() or ["no output"])[-1] if pip.returncode else None
    except subprocess.TimeoutExpired:
        reason = "no answer within 120 s"
    runs["lowest"] = (f"pip could not install pluggy=={version} from the package registry: {reason}" if reason
                      else _start(script, [str(target)]))
    yield runs, version, target
    for process in runs.values():
        if isinstance(process, subprocess.Popen) and process.poll() is None:
            process.kill()
            process.communicate()


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def test_strategy_composes_with_the_lowest_allowed_pluggy(compose_runs):
    runs, version, target = compose_runs
    if isinstance(runs["lowest"], str):
        pytest.skip(runs["lowest"])
    info = _result(runs["lowest"])
    assert info["pluggy"] == version
    assert Path(info["file"]).resolve().is_relative_to(target.resolve())


def test_strategy_composes_with_the_installed_pluggy(compose_runs):
    runs, _, _ = compose_runs
    assert _result(runs["installed"])["pluggy"] == importlib.metadata.version("pluggy")
