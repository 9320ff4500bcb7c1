"""Build the kernel and every plugin package (``plugins/*``, ``contrib/*``) into one folder, as they are published.

Each package is built with `build <https://build.pypa.io>`_ (``python -m build``): a source distribution first,
then the wheel from that source distribution, so the wheel holds exactly what the published sdist holds and never
a stale file from an earlier ``build/`` folder. The folder then serves as a local package index::

    python scripts/build_wheels.py --out wheels
    python3 -m venv env && env/bin/pip install --find-links wheels clkernel-replay clkernel-benchmarks

Options: ``--out DIR`` (default ``dist``), ``--only DIST ...`` (distribution names, e.g. ``clkernel
clkernel-replay``; default: every package), ``--no-isolation`` (build with this interpreter's setuptools instead of
a fresh build environment per package: faster, offline, needs the packages' build requirements installed here),
``--jobs N`` (packages built at once; default: the number of CPUs), ``--check`` (run ``twine check --strict`` on
what was built). Earlier builds of the same distributions in ``--out`` are removed first, so the folder holds one
version of each.

Exit codes: 0 built; 1 a build or ``twine check`` failed (its output is shown, the package named); 2 bad usage (an
unknown distribution name, ``build`` or ``twine`` not installed), one line, nothing built.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

from attrs import frozen

__all__ = ["ROOT", "Package", "build", "find_packages", "main"]

ROOT = Path(__file__).resolve().parents[1]


@frozen
class Package:
    """One distribution of the repository: its name and version (from its ``pyproject.toml``) and its folder."""

    name: str
    version: str
    path: Path

    @property
    def file_name(self) -> str:
        """The name as wheel and sdist file names spell it (``clkernel_replay``)."""
        return re.sub(r"[-_.]+", "_", self.name).lower()


def find_packages(root: Path = ROOT) -> list[Package]:
    """The kernel (``root``) and every folder of ``root/plugins`` and ``root/contrib`` holding a ``pyproject.toml``."""
    paths = [root, *sorted(p.parent for p in root.glob("plugins/*/pyproject.toml")),
             *sorted(p.parent for p in root.glob("contrib/*/pyproject.toml"))]
    packages = []
    for path in paths:
        project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
        packages.append(Package(project["name"], project["version"], path))
    return packages


def select(packages: list[Package], names: list[str] | None) -> list[Package]:
    """The packages named in ``names`` (all when ``None``); ``ValueError`` naming an unknown name."""
    if names is None:
        return packages
    by_name = {p.name: p for p in packages}
    for name in names:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(by_name)}"
            raise ValueError(f"--only: no package named {name!r} under {ROOT}{hint}")
    return [by_name[name] for name in dict.fromkeys(names)]


def build(package: Package, out: Path, *, isolation: bool = True) -> list[Path]:
    """Build ``package``'s sdist and wheel into ``out``; return the two files.

    The build goes to a temporary folder first: only when it succeeds are earlier builds of the package (any
    version) in ``out`` replaced, so that ``out`` holds one version of each package and a failed build loses none.

    :raises RuntimeError: when the build fails (with its output) or does not give one wheel and one sdist.
    """
    with tempfile.TemporaryDirectory(prefix=f".{package.file_name}-", dir=out) as tmp:
        command = [sys.executable, "-m", "build", *([] if isolation else ["--no-isolation"]), "--outdir", tmp,
                   str(package.path)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building {package.name} ({package.path}) failed:\n{proc.stdout[-4000:]}"
                               f"{proc.stderr[-4000:]}")
        prefix = f"{package.file_name}-{package.version}"
        built = sorted([*Path(tmp).glob(f"{prefix}-*.whl"), *Path(tmp).glob(f"{prefix}.tar.gz")])
        if len(built) != 2 or len(list(Path(tmp).iterdir())) != 2:
            raise RuntimeError(f"building {package.name} gave {sorted(p.name for p in Path(tmp).iterdir())}, "
                               f"expected one wheel and one sdist of version {package.version}")
        for old in [*out.glob(f"{package.file_name}-*.whl"), *out.glob(f"{package.file_name}-*.tar.gz")]:
            old.unlink()
        return [path.replace(out / path.name) for path in built]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse would add the usage)
        self.exit(2, f"build_wheels.py: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """The command: build, print one line per package, return the exit code (see the module docstring)."""
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--only", nargs="+", metavar="DIST", help="distribution names to build (default: all)")
    parser.add_argument("--no-isolation", action="store_true",
                        help="build with this interpreter's setuptools (no fresh build environment per package)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="packages built at once (default: the number of CPUs)")
    parser.add_argument("--check", action="store_true", help="run `twine check --strict` on what was built")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive integer, got {args.jobs}")
    try:
        packages = select(find_packages(), args.only)
    except ValueError as e:
        print(f"build_wheels.py: error: {e}", file=sys.stderr)
        return 2
    for module, what in (("build", "build"), *((("twine", "twine"),) if args.check else ())):
        if importlib.util.find_spec(module) is None:
            print(f"build_wheels.py: error: {what} is not installed here; run `{sys.executable} -m pip install "
                  f"{what}` (it is in the root package's test extra)", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each build is its own process
        futures = [pool.submit(build, package, args.out, isolation=not args.no_isolation) for package in packages]
        for package, future in zip(packages, futures):
            try:
                built = future.result()
            except RuntimeError as e:
                print(f"build_wheels.py: {e}", file=sys.stderr)
                pool.shutdown(cancel_futures=True)
                return 1
            files += built
            print(f"{package.name} {package.version}: {', '.join(p.name for p in built)}", flush=True)
    if args.check:
        proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"build_wheels.py: twine check failed:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
            return 1
        print(f"twine check: {len(files)} files passed")
    print(f"{len(packages)} packages in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
