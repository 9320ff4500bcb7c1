"""The documentation site builds with ``mkdocs build --strict``, and the strict build fails on what it must.

The whole site is built once (about 20 s): every page, the API reference from the docstrings, every link and
anchor checked. A second, tiny site (one page, one API page over a module written here) shows that a broken link,
a broken anchor, a public name without a docstring and a docstring's reference (``:func:`name```) to nothing each
fail the build, named in its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the site's packages are not installed (the test extra: pip install -e .[test])")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (the test extra)")
pytest.importorskip("material", reason="mkdocs-material is not installed (the test extra)")

ROOT = Path(__file__).resolve().parents[1]


def mkdocs(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = mkdocs("--site-dir", str(out), cwd=ROOT)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or [proc.stderr[-4000:]])
    return out


def test_every_page_is_built(site: Path) -> None:
    for page in ["index.html", "tutorial/index.html", "hooks/index.html", "checkpoint/index.html",
                 "distributed/index.html", "plugins/replay/index.html", "contrib/der/index.html"]:
        assert (site / page).is_file(), page


def test_api_pages_hold_the_public_names(site: Path) -> None:
    kernel = (site / "api" / "clkernel" / "index.html").read_text()
    assert 'id="clkernel.loop.Strategy"' in kernel and 'id="clkernel.loop.run"' in kernel
    assert 'id="clkernel.data.CLDataset"' in (site / "api" / "clkernel.data" / "index.html").read_text()
    distributed = (site / "api" / "clkernel.distributed" / "index.html").read_text()
    assert 'id="clkernel.distributed.all_reduce_sum"' in distributed
    replay = (site / "api" / "clkernel_replay" / "index.html").read_text()
    assert 'id="clkernel_replay.buffers.ReservoirSamplingBuffer"' in replay


def test_links_between_the_repository_and_docs_work_on_the_site(site: Path) -> None:
    # README.md links docs/tutorial.md; docs/tutorial.md links ../README.md; a package README links ../../README.md
    assert 'href="tutorial/"' in (site / "index.html").read_text()
    assert 'href="../"' in (site / "tutorial" / "index.html").read_text()
    assert 'href="../.."' in (site / "plugins" / "replay" / "index.html").read_text()


def test_the_strict_build_fails_on_broken_links_and_undocumented_names(tmp_path: Path) -> None:
    (tmp_path / "docs" / "api").mkdir(parents=True)
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[gone](missing.md), [anchor](#no-such-heading)\n")
    (tmp_path / "docs" / "api" / "sitecheck.md").write_text("# sitecheck\n\n::: sitecheck\n")
    (tmp_path / "sitecheck.py").write_text(textwrap.dedent('''
        """A module with one documented and one undocumented public function."""
        __all__ = ["documented", "undocumented"]

        def documented() -> None:
            """Does nothing, unlike :func:`no_such_function`; returns no :class:`int`."""

        def undocumented() -> None:
            pass
    '''))
    (tmp_path / "mkdocs.yml").write_text(textwrap.dedent(f"""
        site_name: check
        hooks: [{ROOT / "docs" / "mkdocs_hooks.py"}]
        validation: {{anchors: warn, unrecognized_links: warn}}
        plugins:
          - mkdocstrings:
              handlers:
                python:
                  paths: [{tmp_path}]
                  options:
                    show_root_heading: true
                    docstring_style: sphinx
                    extensions: ["{ROOT / "docs" / "griffe_extensions.py"}:SphinxRoles"]
        nav: [index.md, api/sitecheck.md]
    """))
    proc = mkdocs("--site-dir", str(tmp_path / "site"), cwd=tmp_path, pythonpath=tmp_path)
    assert proc.returncode != 0
    assert "'missing.md'" in proc.stderr
    assert "'#no-such-heading'" in proc.stderr
    assert "sitecheck.undocumented has no entry" in proc.stderr and "sitecheck.documented " not in proc.stderr
    assert "cross-reference target 'no_such_function'" in proc.stderr  # roles are cross-references
    assert "target 'int'" not in proc.stderr  # built-in names are shown as code
