"""Griffe extension (mkdocs.yml): an attrs class gets the ``__init__`` that attrs writes for it.

Griffe reads the source, where an ``@define`` / ``@frozen`` class has no ``__init__``; without one the
``:param x:`` fields of its docstring match no parameter and each is a warning (an error under ``--strict``).
The signature is built as attrs builds it: the annotated class attributes in order (``ClassVar`` ones and
``field(init=False)`` left out), with their defaults, keyword-only after ``kw_only=True``; the fields of attrs
base classes come first.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe

__all__ = ["AttrsInit"]

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
