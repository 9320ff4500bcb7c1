"""Packages talk to each other through public names only, say what they export, and are cheap to import.

A name starting with one underscore is private to the module that defines it. This test walks the syntax tree of
every Python file of the kernel (``clkernel/``), of each plugin package (``plugins/*/clkernel_*/``,
``contrib/*/clkernel_*/``) and of the tests and benchmark scripts next to them, and fails on:

(a) an import of a private name from another module (``from clkernel_replay.selection import _seed``), or of or
    through a private module of another package (``import clkernel._impl``; a package may import its own
    private submodules);
(b) an access ``x._name`` where ``x`` is not ``self``, ``cls``, ``type(self)`` or ``super()`` and no code of the
    same file defines ``_name`` (``self.storage_policy._pending`` in a module that does not define
    ``_pending``). A module may use the private names of its own objects, whatever the variable holding them.

Dunder names (``__init__``, ``__all__``) are not private. :data:`ALLOWED_ATTRIBUTES` lists the private names of
other libraries that may be used anyway, each with its reason.

Every public module (a file whose name does not start with ``_``, ``__init__.py`` included) of the kernel and
of the plugin packages must define ``__all__``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Private attribute names that any file may use, with the reason. Only documented, stable API of the standard
#: library or of a dependency that happens to be spelt with an underscore belongs here.
ALLOWED_ATTRIBUTES: dict[str, str] = {
    "_replace": "collections.namedtuple's documented API (underscored so as not to clash with field names)",
    "_asdict": "collections.namedtuple's documented API",
    "_fields": "collections.namedtuple's documented API",
    "_make": "collections.namedtuple's documented API",
}

SKIP_PARTS = {".venv", "venv", "build", "dist", "__pycache__", ".git"}


def package_dirs() -> list[Path]:
    """The kernel and every plugin package: folders with an ``__init__.py``, each an import root's package."""
    dirs = [ROOT / "clkernel", *ROOT.glob("plugins/*/clkernel_*"), *ROOT.glob("contrib/*/clkernel_*")]
    return sorted(d for d in dirs if (d / "__init__.py").is_file())


def _python_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return [p for p in root.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(ROOT).parts)]


def scanned_files() -> list[Path]:
    """The packages' files, and the tests and bench scripts of the kernel and of every plugin."""
    roots = [*package_dirs(), ROOT / "tests", ROOT / "conftest.py",
             *ROOT.glob("plugins/*/tests"), *ROOT.glob("plugins/*/bench"),
             *ROOT.glob("contrib/*/tests"), *ROOT.glob("contrib/*/bench")]
    return sorted({p for root in roots if root.exists() for p in _python_files(root)})


def module_name(path: Path) -> str:
    """``clkernel_replay.buffers`` for a package file; the path relative to the repository for a script."""
    for pkg in package_dirs():
        if path.is_relative_to(pkg):
            parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return str(path.relative_to(ROOT))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_names(tree: ast.AST) -> set[str]:
    """Names the file defines: functions, classes, assigned names and attributes, parameters, module buffers."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("register_buffer", "register_parameter", "register_module") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)  # torch.nn.Module attributes created by name
    return names


def _is_owner(node: ast.expr) -> bool:
    """``self``, ``cls``, ``type(self)`` or ``super()``: an object reaching its own private members."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "super":
            return True
        return (node.func.id == "type" and len(node.args) == 1 and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "self")
    return False


def _absolute(module: str | None, level: int, own: str, is_package: bool) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in module ``own``."""
    if not level:
        return module or ""
    base = own.split(".") if is_package else own.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def check_source(text: str, own: str, *, is_package: bool = False, where: str = "<source>") -> list[str]:
    """The private-name violations of one file's source, as ``where:line: message``.

    :param own: the file's module name (``clkernel_replay.buffers``), to tell its own names from others'.
    """
    tree = ast.parse(text, filename=where)
    defined = _defined_names(tree)
    top = own.split(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(is_private(p) for p in alias.name.split(".")) and alias.name.split(".")[0] != top:
                    found.append(f"{where}:{node.lineno}: imports private module {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node.module, node.level, own, is_package)
            if any(is_private(p) for p in source.split(".")) and source.split(".")[0] != top:
                found.append(f"{where}:{node.lineno}: imports from private module {source}")
            for alias in node.names:
                if is_private(alias.name) and source != own:
                    found.append(f"{where}:{node.lineno}: imports private name {alias.name} from {source}")
        elif (isinstance(node, ast.Attribute) and is_private(node.attr) and not _is_owner(node.value)
              and node.attr not in defined and node.attr not in ALLOWED_ATTRIBUTES):
            found.append(f"{where}:{node.lineno}: uses {ast.unparse(node)}, private to another module")
    return found


FILES = scanned_files()


def test_the_scan_covers_the_kernel_the_plugins_and_their_tests():
    names = {str(p.relative_to(ROOT)) for p in FILES}
    assert {"clkernel/loop.py", "plugins/replay/clkernel_replay/replay.py", "plugins/replay/tests/test_replay.py",
            "tests/test_public_api.py", "conftest.py"} <= names
    assert not any(".venv" in n or "egg-info" in n for n in names)


def test_the_rules_on_examples():
    text = ("from clkernel_replay.selection import _seed\n"
            "from clkernel_replay.selection import resolve_seed\n"
            "from .helpers import _own\n"
            "import clkernel._impl\n"
            "import clkernel_replay._impl\n"
            "class A:\n"
            "    def __init__(self, other):\n"
            "        self._mine = 1\n"
            "        super().__init__()\n"
            "    def f(self, other, p):\n"
            "        return (self._mine, other._mine, self.policy._pending, type(self)._x, super()._y,\n"
            "                p._asdict(), other.__class__, cls_._z)\n")
    found = [line.split(": ", 1)[1] for line in check_source(text, "clkernel_replay.buffers")]
    assert found == ["imports private name _seed from clkernel_replay.selection",
                     "imports private name _own from clkernel_replay.helpers",
                     "imports private module clkernel._impl",
                     "uses self.policy._pending, private to another module",
                     "uses cls_._z, private to another module"], found
    assert check_source("from clkernel_replay.buffers import _x\n", "clkernel_replay.buffers") == []
    assert check_source("from . import _x\n", "clkernel_replay", is_package=True) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_a_module(path):
    found = check_source(path.read_text(), module_name(path), is_package=path.name == "__init__.py",
                         where=str(path.relative_to(ROOT)))
    assert not found, ("private names used across modules (make them public: documented and in __all__):\n"
                       + "\n".join(found))


PUBLIC_MODULES = sorted(p for d in package_dirs() for p in _python_files(d)
                        if p.name == "__init__.py" or not p.name.startswith("_"))


def defines_all(tree: ast.Module) -> bool:
    """Whether a module's top level assigns ``__all__`` (alone, or in a tuple assignment)."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


@pytest.mark.parametrize("path", PUBLIC_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_public_module_defines_all(path):
    ok = defines_all(ast.parse(path.read_text()))
    assert ok, f"{path.relative_to(ROOT)} defines no __all__"


def test_importing_a_package_or_its_entry_point_does_not_import_torch():
    """``clkernel plugins`` imports every entry point's module: none may pull torch in (nor its package)."""
    code = ("import importlib, json, sys\n"
            "import importlib_metadata\n"
            "found = {}\n"
            "for ep in importlib_metadata.entry_points(group='clkernel.plugins'):\n"
            "    importlib.import_module(ep.value.split(':')[0])\n"
            "    found[ep.value] = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))[:3]\n"
            "print(json.dumps(found))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    found = json.loads(out.stdout)
    assert found, "no entry point found: run the README set-up"
    first = next((value for value, mods in found.items() if mods), None)
    assert first is None, f"importing {first} imports torch: {found[first]}"
