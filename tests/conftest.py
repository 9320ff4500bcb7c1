"""Shared fixtures for the kernel's tests: small seeded data and a way to install plugin distributions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Callable, Iterator

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
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Any]]:
    """``run_cli(site, cwd, *args)``: ``clkernel --log-format json run *args`` in ``cwd``, with the plugin
    distribution installed in ``site`` (by ``install_dist``) as the only one enabled, so its defaults are the run's
    defaults; returns its ``returncode``, ``stdout`` and ``stderr``.

    It runs in this process (:func:`clkernel.testing.cli_in_process`: no interpreter start, no torch import): the
    site goes first on ``sys.path``, the other entry points are disabled with ``CLKERNEL_DISABLE_PLUGINS``, and the
    registry is rebuilt from the entry points; afterwards the site's modules are forgotten and the registry with
    them, so the next test's site of the same module name is imported afresh."""
    from clkernel.discovery import reset_registry
    from clkernel.testing import cli_in_process

    sites: list[Path] = []

    def run(site: Path, cwd: Path, *args: str, entry_point: str = "toy") -> Any:
        others = {ep.name for ep in importlib_metadata.entry_points(group="clkernel.plugins")} - {entry_point}
        if site not in sites:
            sites.append(site)
            monkeypatch.syspath_prepend(str(site))
        monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", ",".join(sorted(others)))
        monkeypatch.chdir(cwd)
        reset_registry()
        capsys.readouterr()
        with cli_in_process() as main:
            code = main("--log-format", "json", "run", *args)
        out, err = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)

    try:
        yield run
    finally:
        for name, module in list(sys.modules.items()):
            where = getattr(module, "__file__", None)
            if where and any(Path(where).is_relative_to(site) for site in sites):
                del sys.modules[name]
        reset_registry()


@pytest.fixture
def cli_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., int]]:
    """``cli_main(*argv)``: ``clkernel *argv`` run by ``clkernel.cli.main`` in this process, in ``tmp_path``; returns
    the exit code (:func:`clkernel.testing.cli_in_process`, which puts back what ``main`` changes)."""
    from clkernel.testing import cli_in_process

    monkeypatch.chdir(tmp_path)
    with cli_in_process() as main:
        yield main
