"""Shared fixtures for the kernel's tests: small seeded data and a way to install plugin distributions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import importlib_metadata
import pytest
import torch

from clkernel import Benchmark, CLDataset, Experience, Stream


@pytest.fixture
def make_benchmark() -> Callable[..., Benchmark]:
    """A class-incremental benchmark of random 4-feature inputs: ``n_exp`` experiences of 2 classes each."""

    def make(n_exp: int = 2, per_class: int = 3, features: int = 4, seed: int = 0) -> Benchmark:
        g = torch.Generator().manual_seed(seed)
        n_classes = 2 * n_exp
        y = torch.arange(n_classes).repeat_interleave(per_class)
        x = torch.randn(len(y), features, generator=g) + y[:, None].float()
        data = CLDataset.from_tensors(x, y)
        train = [Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(n_exp)]
        test = [Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(n_exp)]
        return Benchmark({"train": Stream("train", train), "test": Stream("test", test)}, name="toy")

    return make


@pytest.fixture
def install_dist(tmp_path: Path) -> Callable[..., Path]:
    """Write a plugin distribution (module + dist-info with an entry point) into a folder for sys.path.

    This is what ``pip install`` leaves behind, so ``importlib.metadata`` finds the entry point for real.
    """
    site = tmp_path / "site"
    site.mkdir()

    def install(dist: str, module: str, source: str, entry_point: str | None = None, version: str = "1.0") -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[clkernel.plugins]\n{entry_point or module} = {module}\n")
        return site

    return install


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(site, cwd, *args)``: ``clkernel --log-format json run *args`` in a subprocess, in ``cwd``, with the
    plugin distribution installed in ``site`` (by ``install_dist``) as the only one enabled, so its defaults are
    the run's defaults."""

    def run(site: Path, cwd: Path, *args: str, entry_point: str = "toy") -> subprocess.CompletedProcess:
        others = {ep.name for ep in importlib_metadata.entry_points(group="clkernel.plugins")} - {entry_point}
        env = {**os.environ, "PYTHONPATH": str(site), "CLKERNEL_DISABLE_PLUGINS": ",".join(sorted(others))}
        return subprocess.run([sys.executable, "-m", "clkernel.cli", "--log-format", "json", "run", *args],
                              capture_output=True, text=True, env=env, cwd=cwd, timeout=120)

    return run


@pytest.fixture
def cli_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., int]]:
    """``cli_main(*argv)``: ``clkernel *argv`` run by ``clkernel.cli.main`` in this process, in ``tmp_path``; returns
    the exit code (:func:`clkernel.testing.cli_in_process`, which puts back what ``main`` changes)."""
    from clkernel.testing import cli_in_process

    monkeypatch.chdir(tmp_path)
    with cli_in_process() as main:
        yield main
