"""Griffe extensions (mkdocs.yml) that let the API reference read this repository's docstrings as written.

* :class:`AttrsInit`: an attrs class gets the ``__init__`` that attrs writes for it. Griffe reads the source, where
  an ``@define`` / ``@frozen`` class has no ``__init__``; without one the ``:param x:`` fields of its docstring
  match no parameter and each is a warning (an error under ``--strict``). The signature is built as attrs builds
  it: the annotated class attributes in order (``ClassVar`` ones and ``field(init=False)`` left out), with their
  defaults, keyword-only after ``kw_only=True``; the fields of attrs base classes come first.
* :class:`SphinxRoles`: the docstrings' reStructuredText roles (``:class:`CLDataset```, ``:meth:`~Strategy.train```)
  become cross-references to the documented object (``[CLDataset][clkernel.data.CLDataset]``), resolved as Python
  would from the docstring's scope, then through the package's lazily imported names; events link to the hook
  reference. A target in this repository that is on no API page is a warning of mkdocs-autorefs, so the strict
  build fails on it; a target outside (``torch.Tensor``) is shown as code.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
import sys
from typing import Any

import griffe

__all__ = ["AttrsInit", "SphinxRoles"]

_DECORATORS = {"define", "frozen", "mutable", "attrs.define", "attrs.frozen", "attrs.mutable", "attr.s",
               "attr.attrs", "attr.define", "attr.frozen", "attr.mutable"}


def _is_attrs(cls: griffe.Class) -> bool:
    return any(str(d.value).split("(", 1)[0] in _DECORATORS for d in cls.decorators)


def _kw_only(cls: griffe.Class) -> bool:
    return any("kw_only=True" in str(d.value) for d in cls.decorators)


class AttrsInit(griffe.Extension):
    """Add ``__init__`` to each attrs class, its parameters the class's fields."""

    def on_class_members(self, *, node: ast.AST | griffe.ObjectNode, cls: griffe.Class, agent: Any,
                         **kwargs: Any) -> None:
        if "__init__" in cls.members or not _is_attrs(cls):
            return
        kind = griffe.ParameterKind.keyword_only if _kw_only(cls) else griffe.ParameterKind.positional_or_keyword
        parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
        for base in cls.resolved_bases:
            init = base.members.get("__init__") if isinstance(base, griffe.Class) else None
            if init is not None and _is_attrs(base):
                parameters += [p for p in init.parameters if p.name != "self"]
        body = node.body if isinstance(node, ast.ClassDef) else []
        fields = [s.target.id for s in body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        for attribute in (cls.members[f] for f in fields if isinstance(cls.members.get(f), griffe.Attribute)):
            if str(attribute.annotation).startswith(("ClassVar", "typing.ClassVar")):
                continue
            value = str(attribute.value) if attribute.value is not None else None
            if value and "init=False" in value:
                continue
            default = value
            if value and value.startswith(("field(", "attrs.field(", "attr.ib(")):
                default = "..." if ("default=" in value or "factory=" in value) else None
            name = attribute.name.lstrip("_")  # attrs strips leading underscores from parameter names
            parameters.append(griffe.Parameter(name, annotation=attribute.annotation, kind=kind, default=default))
        cls.set_member("__init__", griffe.Function("__init__", parameters=griffe.Parameters(*parameters),
                                                   parent=cls, lineno=cls.lineno, endlineno=cls.lineno))


_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)`")
#: Top-level packages whose objects have API pages; references to anything else are shown as code.
_OURS = re.compile(r"^clkernel(_\w+)?$")


def _events() -> set[str]:
    from clkernel.hookspecs import EVENTS, REGISTRATION_HOOKS

    return {*EVENTS, *REGISTRATION_HOOKS}


def _canonical(path: str) -> str | None:
    """Where the object that ``path`` names (``clkernel.Strategy.train``) is defined
    (``clkernel.loop.Strategy.train``), found by importing; None when it cannot be found."""
    parts = path.split(".")
    if not (_OURS.match(parts[0]) or parts[0] in sys.modules):
        return None
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        where = obj.__name__
        for name in parts[i:]:
            parent = obj
            try:
                obj = inspect.getattr_static(obj, name) if inspect.isclass(obj) else getattr(obj, name)
            except AttributeError:
                return None
            if hasattr(parent, "__path__") and not (inspect.ismodule(obj) or inspect.isclass(obj)
                                                    or inspect.isfunction(obj)):  # data a package exports
                where = next((f"{m.__name__}.{name}" for m in list(sys.modules.values())
                              if getattr(m, "__name__", "").startswith(f"{parent.__name__}.")
                              and vars(m).get(name) is obj and name in getattr(m, "__all__", ())),
                             f"{where}.{name}")
            elif inspect.ismodule(obj):
                where = obj.__name__
            elif (inspect.isclass(obj) or inspect.isfunction(obj)) and "<" not in obj.__qualname__:
                where = f"{obj.__module__}.{obj.__qualname__}"
            elif inspect.isclass(parent):  # a property or attribute: where the class that defines it is
                owner = next((k for k in parent.__mro__ if name in vars(k)), parent)
                where = f"{owner.__module__}.{owner.__qualname__}.{name}"
            else:
                where = f"{where}.{name}"
            obj = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
        return where
    return None


def _scope_path(obj: griffe.Object, target: str) -> str | None:
    """``target`` resolved as Python would from ``obj``'s scope, then among its package's exported names."""
    first, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            found = scope.resolve(first)
            return f"{found}.{rest}" if rest else found
        except (griffe.NameResolutionError, AttributeError, KeyError):
            if isinstance(scope, griffe.Class) and _canonical(f"{scope.path}.{first}"):  # an inherited member
                return f"{scope.path}.{target}"
            scope = scope.parent
    package = obj.path.split(".", 1)[0]
    for candidate in (f"{package}.{target}", target):
        if _canonical(candidate):
            return candidate
    return None


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring of a loaded package as cross-references (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        events = _events()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            stack += [m for m in obj.members.values() if not m.is_alias]
            if obj.docstring is not None:
                obj.docstring.value = _ROLE.sub(lambda m: self._reference(obj, m, events), obj.docstring.value)

    @staticmethod
    def _reference(obj: griffe.Object, m: re.Match[str], events: set[str]) -> str:
        short, target = m.groups()
        shown = f"`{target.rsplit('.', 1)[-1] if short else target}`"
        if target.split(".", 1)[0] in vars(builtins):
            return shown
        path = _scope_path(obj, target)
        event = target.rsplit(".", 1)[-1]
        if event in events and (path is None or path.endswith(f".{event}")):
            # the event, or a plugin's implementation of it: an anchor of the hook reference (docs/mkdocs_hooks.py)
            return f"[{shown}][{event}]"
        canonical = _canonical(path) if path else None
        if canonical is None:
            if _OURS.match(target.split(".", 1)[0]) or path is None:
                return f"[{shown}][{target}]"  # unresolvable: mkdocs-autorefs reports it
            return shown
        return f"[{shown}][{canonical}]" if _OURS.match(canonical.split(".", 1)[0]) else shown
