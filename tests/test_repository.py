"""The repository keeps its promises: README set-up = CI, every package installed and loading, docs current."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import re
import subprocess
import sys
import tokenize
import tomllib
import types
from pathlib import Path

import pytest

import clkernel
from clkernel.discovery import Registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in [*ROOT.glob("plugins/*/pyproject.toml"), *ROOT.glob("contrib/*/pyproject.toml")])


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.strip().splitlines()]


def test_readme_has_two_commands_and_ci_runs_exactly_them():
    commands = readme_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f"README command not in .ci/run: {command}"


def test_every_package_is_installed_by_the_setup_command():
    listed = {line.split(None, 1)[1].strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
              if line.startswith("-e ")}
    missing = [str(p.relative_to(ROOT)) for p in PACKAGES if str(p.relative_to(ROOT)) not in listed]
    assert not missing, f"add to requirements-dev.txt: {missing}"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_every_package_is_a_plugin_distribution_that_loads(package):
    meta = tomllib.loads((package / "pyproject.toml").read_text())
    entry_points = meta["project"]["entry-points"]["clkernel.plugins"]
    assert (package / "README.md").is_file() and (package / "tests").is_dir()
    assert not any("==" in dep for dep in meta["project"].get("dependencies", [])), "pin ranges, not versions"
    sources = {s.entry_point: s for s in Registry.from_entry_points().sources
               if s.distribution == meta["project"]["name"]}
    for name in entry_points:
        assert name in sources, f"{name} of {meta['project']['name']} is not installed: run the README set-up"
        assert sources[name].status == "ok", sources[name].error
        assert sources[name].components and not sources[name].clashes


def test_hook_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_hooks", ROOT / "docs" / "gen_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "hooks.md").read_text() == module.render(), "run docs/gen_hooks.py"


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a module, class or function docstring."""
    text = path.read_text()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in skip:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstrings)
    return len(lines)


def test_code_lines_count_code_only(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text('def f():\n    """Doc\n    more doc."""\n\n    # comment\n    return (1 +\n            2)\n')
    assert code_lines(path) == 3


def test_kernel_stays_small_and_free_of_torchvision():
    """Under 3,000 lines of code in the runtime modules (all but the testing kit; 2,200 before checkpoints and
    2,700 before distributed runs, both kernel API: docs/design.md says why). Docstrings, comments and blank lines are not counted: the event
    spec's documentation (every event in the full template) is most of hookspecs.py and is documentation, not
    code."""
    runtime = [p for p in (ROOT / "clkernel").glob("*.py") if p.name != "testing.py"]  # the kit is for tests
    lines = sum(code_lines(p) for p in runtime)
    assert lines < 3000, f"the kernel's runtime modules have {lines} lines of code"
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not any("torchvision" in dep for dep in meta["project"]["dependencies"])
    code = "import sys, clkernel; clkernel.Strategy; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert clkernel.__version__ == meta["project"]["version"]


def test_main_job_runs_on_the_embedded_default_benchmark(tmp_path, monkeypatch, capsys):
    """`clkernel run` with no component named: split-digits, simple-mlp, default metrics, interactive + report (in
    this process: CI runs the README's command itself as a real one)."""
    from clkernel.testing import cli_in_process

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLKERNEL_DATA", raising=False)
    with cli_in_process() as main:
        code = main("--log-format", "json", "run", "--output", tmp_path / "run")
    result = types.SimpleNamespace(returncode=code, **dict(zip(("stdout", "stderr"), capsys.readouterr())))
    assert result.returncode == 0, result.stderr[-3000:]
    events = (tmp_path / "run" / "events.jsonl").read_text().splitlines()  # the console shows warnings only
    start = next(json.loads(line) for line in events if '"run_start"' in line)
    assert set(start["components"]) >= {"benchmark:split-digits", "model:simple-mlp", "metric:default",
                                        "logger:report"}
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= report["final_metrics"]["acc_stream/eval/test"] <= 1.0
    assert all((tmp_path / "run" / name).stat().st_size > 0 for name in
               ("accuracy_matrix_test.png", "accuracy_curves_test.png"))
    assert str(tmp_path / "run" / "results.json") in result.stdout


# --------------------------------------------------------------------------- versions between packages

def first_party_versions() -> dict[str, str]:
    """Canonical distribution name -> version, for the kernel and every package under plugins/ and contrib/."""
    from packaging.utils import canonicalize_name

    projects = [tomllib.loads((p / "pyproject.toml").read_text())["project"] for p in [ROOT, *PACKAGES]]
    return {canonicalize_name(p["name"]): p["version"] for p in projects}


def incoherent(requirements: list[str], versions: dict[str, str]) -> list[str]:
    """The requirements on a first-party distribution whose specifier does not admit that distribution's version."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    bad = []
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in versions and not req.specifier.contains(versions[name], prereleases=True):
            bad.append(f"{text!r} does not admit {name} {versions[name]}")
    return bad


def test_incoherent_finds_a_requirement_that_excludes_the_current_version():
    versions = {"clkernel": "0.2.0", "clkernel-metrics": "0.2.0"}
    assert incoherent(["clkernel>=0.2,<0.3", "clkernel_metrics>=0.1", "torch>=2.1,<3"], versions) == []
    assert incoherent(["clkernel-metrics>=0.1,<0.2", "clkernel>=0.3"], versions) == [
        "'clkernel-metrics>=0.1,<0.2' does not admit clkernel-metrics 0.2.0", "'clkernel>=0.3' does not admit clkernel 0.2.0"]


@pytest.mark.parametrize("package", [ROOT, *PACKAGES], ids=lambda p: "kernel" if p == ROOT else p.name)
def test_requirements_between_packages_admit_their_versions(package):
    """Every requirement on the kernel or another first-party package (dependencies and every extra) admits the
    version that package's pyproject declares, so that the packages install together from one wheel folder."""
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    requirements = [*project.get("dependencies", []),
                    *(r for extra in project.get("optional-dependencies", {}).values() for r in extra)]
    bad = incoherent(requirements, first_party_versions())
    assert not bad, f"{project['name']}: " + "; ".join(bad)


def test_plugin_template_requirements_admit_the_current_versions():
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with copier, in the test extra")
    questions = yaml.safe_load((ROOT / "templates" / "plugin" / "copier.yml").read_text())
    from packaging.requirements import Requirement

    requirements = [questions["kernel_requirement"]["default"], *questions["test_requirements"]["default"]]
    versions = first_party_versions()
    assert {Requirement(r).name for r in requirements} <= set(versions), requirements  # all first party
    bad = incoherent(requirements, versions)
    assert not bad, "templates/plugin/copier.yml: " + "; ".join(bad)
