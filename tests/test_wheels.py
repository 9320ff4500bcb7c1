"""Install only what you need, from wheels: the README's commands, run as written in a fresh virtual environment.

``scripts/build_wheels.py`` builds the kernel and four packages into one folder; a new virtual environment (no
system site packages, nothing of this ``.venv``) gets ``clkernel-replay``, ``clkernel-benchmarks`` and
``clkernel-models`` with pip's ``--find-links`` on that folder, which brings the kernel from it too; torch and the
other third-party requirements come from the usual index. Every first-party distribution must come from the
folder (pip's log says where each came from), ``clkernel plugins`` must list exactly those three, and ``clkernel
run`` must train replay on ``split-digits`` from them.

Speed, and only speed, through pip's own configuration variables (the README's commands run as written): no
byte-compiling at install time (``PIP_COMPILE=0``; Python compiles what it imports), and, where pip's find-links
folders hold a CPU build of torch for this interpreter (this machine keeps one on disk), a constraint that picks
it instead of the multi-gigabyte CUDA build the index serves. Measured on the 2-core machine shared with other
jobs (load 5 to 12): torch's CUDA build with its dependencies into a fresh environment 127 s (199 s without
byte-compiling, under a heavier load), the CPU build alone 103 s with byte-compiling and 26 s without.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
BUILT = ["clkernel", "clkernel-replay", "clkernel-benchmarks", "clkernel-models", "clkernel-metrics"]
INSTALLED = {"clkernel", "clkernel-replay", "clkernel-benchmarks", "clkernel-models"}
LISTED = {"clkernel-replay", "clkernel-benchmarks", "clkernel-models"}  # the kernel registers nothing itself


def readme_wheel_commands() -> list[str]:
    """The commands of the README's ```text block that builds wheels (``$ `` lines), in order."""
    blocks = re.findall(r"```text\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    block = next((b for b in blocks if "scripts/build_wheels.py" in b), None)
    assert block is not None, "README.md: no ```text block with the scripts/build_wheels.py commands"
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def pip_setting(name: str) -> list[str]:
    """The values pip's configuration (files and ``PIP_*`` variables) gives the list option ``name``."""
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    values = [v for line in config.splitlines() if re.match(rf"[^=]*\.{name}=", line)
              for v in line.split("=", 1)[1].strip("'\"").split()]
    return list(dict.fromkeys([*values, *os.environ.get(f"PIP_{name.upper().replace('-', '_')}", "").split()]))


def local_cpu_torch() -> str | None:
    """``torch==VERSION`` for a CPU build of torch in one of pip's find-links folders that fits this interpreter."""
    supported = set(sys_tags())
    for folder in map(Path, pip_setting("find-links")):
        for wheel in sorted(folder.glob("torch-*+cpu-*.whl")) if folder.is_dir() else []:
            _, version, _, tags = parse_wheel_filename(wheel.name)
            if tags & supported:
                return f"torch=={version}"
    return None


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    # this .venv's bin first on PATH would turn `python3 -m venv` into a venv of the .venv's interpreter: the same
    # base Python, but keep the README's commands to what a fresh shell has
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    # PIP_COMPILE=0, not PIP_NO_COMPILE=1: pip reads a boolean variable as the option's value, and the value of
    # --no-compile is "compile", so PIP_NO_COMPILE=1 would switch compiling on
    env.update(PIP_COMPILE="0", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    pin = local_cpu_torch()
    if pin:  # keep the constraints pip is configured with, add ours
        (tmp / "constraints.txt").write_text(pin + "\n")
        env["PIP_CONSTRAINT"] = " ".join([*pip_setting("constraint"), str(tmp / "constraints.txt")])
    return env


def _sh(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"$ {command}\nexited with {proc.returncode}:\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc


def test_readme_commands_install_only_what_is_named_from_the_wheels(tmp_path: Path) -> None:
    build, *commands = readme_wheel_commands()
    assert shlex.split(build)[1:] == ["scripts/build_wheels.py", "--out", "wheels"], build
    assert [c.split()[0] for c in commands] == ["python3", "env/bin/pip", "env/bin/clkernel", "env/bin/clkernel"]
    install, plugins, run = commands[1:]
    assert set(shlex.split(install)[-3:]) == LISTED and "--find-links wheels" in install, install
    env = _env(tmp_path)

    # build: as the README says, but only the packages this test needs, with this interpreter's setuptools
    _sh(shlex.join([sys.executable, str(ROOT / "scripts" / "build_wheels.py"), "--out", str(tmp_path / "wheels"),
                    "--no-isolation", "--only", *BUILT]), cwd=tmp_path, env=env)
    wheels = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in (tmp_path / "wheels").glob("*.whl")}
    assert set(wheels) == set(BUILT)

    _sh(commands[0], cwd=tmp_path, env=env)  # python3 -m venv env
    cfg = (tmp_path / "env" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg, cfg

    log = _sh(install, cwd=tmp_path, env=env).stdout
    for name in INSTALLED:  # each first-party distribution came from the wheels folder, none from an index
        assert f"Processing {wheels[name]}" in log or f"Processing ./wheels/{wheels[name].name}" in log, \
            f"{name} was not installed from {wheels[name]}:\n{log[-4000:]}"
    assert not re.search(r"Downloading clkernel", log, re.I), log[-4000:]
    python = tmp_path / "env" / "bin" / "python"
    code = ("import json, importlib.metadata as m; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() "
            "if d.metadata['Name'].startswith('clkernel')}))")
    versions = json.loads(_sh(shlex.join([str(python), "-c", code]), cwd=tmp_path, env=env).stdout)
    assert versions == {n: parse_wheel_filename(wheels[n].name)[1].public for n in INSTALLED}

    _sh(plugins, cwd=tmp_path, env=env)  # the table, as the README shows it
    listed = json.loads(_sh(plugins + " --json", cwd=tmp_path, env=env).stdout)
    assert {p["distribution"] for p in listed} == LISTED, listed
    assert all(p["status"] == "ok" and p["components"] and not p["clashes"] for p in listed), listed

    proc = _sh(run, cwd=tmp_path, env=env)
    final = next(line for line in proc.stdout.splitlines() if line.startswith("final results: "))
    accuracy = json.loads(final.split(": ", 1)[1])["accuracy/test"]
    assert 0.0 < accuracy <= 1.0  # no clkernel-metrics installed: the run computes the final accuracy itself
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and f"results in {runs[0].relative_to(tmp_path)}" in proc.stdout
    events = [json.loads(line) for line in (runs[0] / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "run_start")
    assert set(start["components"]) == {"benchmark:split-digits", "model:simple-mlp", "plugin:replay"}
    assert [e["event"] for e in events].count("experience_end") == 5 and events[-1]["event"] == "run_end"


@pytest.mark.parametrize("argv, message", [(["--only", "clkernel-replai"], "did you mean clkernel-replay?"),
                                           (["--only"], "expected at least one argument")],
                         ids=["unknown-package", "no-package"])
def test_build_script_refuses_bad_usage_with_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_wheels.py"), "--out", str(tmp_path / "w"),
                           *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "w").exists()


def test_a_failed_build_names_the_package_and_keeps_the_earlier_wheel(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_wheels", ROOT / "scripts" / "build_wheels.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = tmp_path / "broken"
    (source / "clkernel_broken").mkdir(parents=True)
    (source / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                                           'build-backend = "setuptools.build_meta"\n\n'
                                           '[project]\nname = "clkernel-broken"\nversion = "0.2.0"\n'
                                           'dependencies = ["not a requirement"]\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "clkernel_broken-0.1.0-py3-none-any.whl").write_bytes(b"an earlier build")
    with pytest.raises(RuntimeError, match=r"building clkernel-broken \(.*broken\) failed"):
        script.build(script.Package("clkernel-broken", "0.2.0", source), out, isolation=False)
    assert [p.name for p in out.iterdir()] == ["clkernel_broken-0.1.0-py3-none-any.whl"]
