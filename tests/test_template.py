"""The plugin template (``templates/plugin``, rendered with copier) makes a package that installs, registers and
passes its own tests and the conformance kit as generated, and builds into a wheel and sdist that twine accepts.

The rendered package is installed (editable, ``--no-deps``) into its own virtual environment whose site folder
also reads this ``.venv``'s (a ``.pth`` line): the kernel and the first-party packages its tests need come from
there, and nothing is installed into or removed from ``.venv``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import copier
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "templates" / "plugin"
BIN = Path(sys.executable).parent
DATA = {"plugin_name": "my-method"}
EXPECTED_FILES = {".copier-answers.yml", ".gitignore", "README.md", "pyproject.toml", "clkernel_my_method/__init__.py",
                  "clkernel_my_method/my_method.py", "clkernel_my_method/registration.py", "tests/conftest.py",
                  "tests/test_conformance.py", "tests/test_my_method.py"}


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    return env


def _run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(command)} exited with {proc.returncode}:\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _files(folder: Path) -> dict[str, str]:
    """The package's files (not what installing, building or testing it adds: egg-info, caches, build folders)."""
    added = re.compile(r"(^|/)([^/]+\.egg-info|__pycache__|build|dist|\.pytest_cache)(/|$)")
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and not added.search(str(p.relative_to(folder)))}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    destination = tmp_path_factory.mktemp("template") / "clkernel-my-method"
    copier.run_copy(str(TEMPLATE), destination, data=DATA, defaults=True, quiet=True)
    return destination


@pytest.fixture(scope="module")
def venv(rendered: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the rendered package (editable), on top of this ``.venv``'s packages."""
    env = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=env.parent)
    site = Path(_run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env.parent).stdout.strip())
    (site / "_clkernel_dev.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e",
          str(rendered)], cwd=env.parent)
    return env


def test_renders_a_package_shaped_like_every_plugin_package(rendered: Path) -> None:
    assert set(_files(rendered)) == EXPECTED_FILES
    meta = tomllib.loads((rendered / "pyproject.toml").read_text())
    project = meta["project"]
    assert (project["name"], project["version"]) == ("clkernel-my-method", "0.1.0")
    assert meta["project"]["entry-points"] == {"clkernel.plugins": {"my-method": "clkernel_my_method.registration"}}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        assert "==" not in requirement, requirement
        if requirement.startswith("clkernel"):
            assert "<" in requirement, f"{requirement}: first-party requirements carry an upper bound"
    for path in (rendered / "clkernel_my_method").glob("*.py"):
        assert "__all__" in path.read_text(), path
    assert "check_training_plugin(name=\"my-method\"" in (rendered / "tests" / "test_conformance.py").read_text()
    assert not re.search(r"\{\{|\}\}|\{%", "".join(_files(rendered).values())), "unrendered Jinja left"


def test_installs_registers_and_passes_its_tests_and_the_conformance_kit(rendered: Path, venv: Path) -> None:
    python = str(venv / "bin" / "python")
    proc = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::UserWarning"], cwd=rendered)
    assert re.search(r"\b6 passed\b", proc.stdout) and "failed" not in proc.stdout and "skipped" not in proc.stdout, \
        proc.stdout[-2000:]
    listed = json.loads(_run([python, "-m", "clkernel.cli", "plugins", "--json"], cwd=rendered).stdout)
    ours = [p for p in listed if p["distribution"] == "clkernel-my-method"]
    assert ours == [{"entry_point": "my-method", "distribution": "clkernel-my-method", "version": "0.1.0",
                     "status": "ok", "error": None, "components": {"plugin": ["my-method"]}, "clashes": []}]
    shown = _run([python, "-m", "clkernel.cli", "show", "plugin", "my-method"], cwd=rendered).stdout
    assert "strength" in shown and "0.1" in shown
    code = ("import json, sys, clkernel_my_method, clkernel_my_method.registration; "
            "print(json.dumps([sorted(clkernel_my_method.__all__), 'torch' in sys.modules]))")
    exported, torch_imported = json.loads(_run([python, "-c", code], cwd=rendered).stdout)
    assert exported == ["MyMethod", "anchor_penalty"] and not torch_imported  # lazy package, torch-free entry point


def test_the_rendered_readme_python_example_runs(rendered: Path, venv: Path, tmp_path: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", (rendered / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0] + "\nassert 0.0 <= results['acc_stream/eval/test'] <= 1.0\n")
    _run([str(venv / "bin" / "python"), str(script)], cwd=tmp_path)


def test_builds_a_wheel_and_sdist_that_twine_accepts(rendered: Path, tmp_path: Path) -> None:
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(rendered)], cwd=tmp_path)
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == ["clkernel_my_method-0.1.0-py3-none-any.whl", "clkernel_my_method-0.1.0.tar.gz"]
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, tmp_path.iterdir())], cwd=tmp_path)


def test_the_documented_copier_command_renders_the_same_package(rendered: Path, tmp_path: Path) -> None:
    """docs/plugin-authors.md's render command, run with the template and destination moved to absolute paths."""
    doc = (ROOT / "docs" / "plugin-authors.md").read_text()
    line = next(line[2:] for line in doc.splitlines() if line.startswith("$ copier copy "))
    args = shlex.split(line)
    assert args[-2] == "templates/plugin", line
    args[-2:] = [str(TEMPLATE), str(tmp_path / args[-1])]
    _run([str(BIN / args[0]), *args[1:], "--defaults", "--quiet"], cwd=tmp_path)
    assert _files(tmp_path / args[-1]) == _files(rendered)


@pytest.mark.parametrize("data, culprit", [({"plugin_name": "My Method"}, "plugin_name"),
                                            ({"plugin_name": "ok", "class_name": "not-a-class"}, "class_name")],
                         ids=["plugin-name", "class-name"])
def test_bad_answers_are_refused_naming_the_question(data: dict[str, str], culprit: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=culprit):
        copier.run_copy(str(TEMPLATE), tmp_path / "out", data=data, defaults=True, quiet=True)
    assert not (tmp_path / "out").exists()
